"""TLS termination on HTTPS listeners: curl and openssl as clients, SNI, reloads, bad input."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from cryptography import x509

from sidecar.config.model import Limits
from sidecar.modes.edge import EdgeServer
from tests.support.echo import EchoServer
from tests.support.edge import start_edge
from tests.support.pki import Leaf, TestCA

needs = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None,
    reason="curl and openssl are needed (make test installs them)",
)

GATEWAY = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - name: a
    port: 443
    protocol: HTTPS
    hostname: a.example
    tls: {{certificateRefs: [{{group: weft.dev, kind: TLSCertificate, name: a}}]}}
  - name: b
    port: 443
    protocol: HTTPS
    hostname: "*.b.example"
    tls: {{certificateRefs: [{{kind: Secret, name: b}}]}}
---
apiVersion: weft.dev/v1alpha1
kind: TLSCertificate
metadata: {{name: a}}
spec: {{certFile: a.pem, keyFile: a-key.pem}}
---
apiVersion: v1
kind: Secret
metadata: {{name: b}}
type: kubernetes.io/tls
data: {{tls.crt: {crt}, tls.key: {key}}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: echo}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{{address: 127.0.0.1, port: {echo}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
"""


class Setup:
    def __init__(self, tmp: Path, echo_port: int) -> None:
        self.tmp = tmp
        self.ca = TestCA()
        self.ca_file = self.ca.write(tmp / "ca.pem")
        self.a = self.ca.issue("a.example")
        self.a.write(tmp, "a")
        b = self.ca.issue("*.b.example")
        self.text = GATEWAY.format(
            crt=base64.b64encode(b.cert_pem).decode(),
            key=base64.b64encode(b.key_pem).decode(),
            echo=echo_port,
        )
        self.config = tmp / "gateway.yaml"

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


@pytest.fixture
def echo() -> AsyncIterator[EchoServer]:
    with EchoServer("echo") as server:
        yield server


async def _run(*cmd: str, stdin: bytes = b"") -> tuple[int, str]:
    proc = await trio.run_process(
        list(cmd), stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
    )
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


async def _curl(s: Setup, port: int, host: str, path: str = "/") -> tuple[int, str]:
    return await _run(
        "curl", "-sS", "--cacert", str(s.ca_file), "--resolve", f"{host}:{port}:127.0.0.1",
        f"https://{host}:{port}{path}",
    )  # fmt: skip


async def _tls_stream(s: Setup, port: int, sni: str) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, s.client_context(), server_hostname=sni)
    await stream.do_handshake()
    return stream


async def _exchange(stream: trio.SSLStream[trio.SocketStream], host: str) -> bytes:
    await stream.send_all(f"GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = await stream.receive_some(65536)
        assert chunk, data
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            return int(value)
    return 0


def _serial(stream: trio.SSLStream[trio.SocketStream]) -> int:
    der = stream.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@needs
async def test_curl_over_https_with_sni_choosing_the_certificate(
    tmp_path: Path, echo: EchoServer
) -> None:
    s = Setup(tmp_path, echo.port)
    async with trio.open_nursery() as nursery:
        server, port = await start_edge(nursery, s.config, s.text)
        code_a, out_a = await _curl(s, port, "a.example", "/hello")
        code_b, out_b = await _curl(s, port, "shop.b.example")
        code_c, out_c = await _curl(s, port, "c.example")  # no listener: handshake refused
        metrics = server.metrics.render()
        nursery.cancel_scope.cancel()
    assert code_a == 0, out_a
    got = json.loads(out_a)
    assert got["path"] == "/hello" and got["host"] == f"a.example:{port}"
    assert got["headers"]["x-forwarded-proto"] == ["https"]
    assert code_b == 0 and json.loads(out_b)["host"] == f"shop.b.example:{port}", out_b
    assert code_c == 35 and "unrecognized name" in out_c.lower(), out_c
    assert "weft_tls_handshake_errors_total" in metrics


@needs
async def test_openssl_sees_sni_certificate_alpn_and_no_old_protocols(
    tmp_path: Path, echo: EchoServer
) -> None:
    s = Setup(tmp_path, echo.port)
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, s.config, s.text)
        target = f"127.0.0.1:{port}"
        code, out = await _run(
            "openssl", "s_client", "-connect", target, "-servername", "x.b.example",
            "-alpn", "h2,http/1.1", "-CAfile", str(s.ca_file), "-verify_return_error",
            stdin=b"",
        )  # fmt: skip
        code11, out11 = await _run(
            "openssl", "s_client", "-connect", target, "-servername", "a.example", "-tls1_1",
            stdin=b"",
        )  # fmt: skip
        nursery.cancel_scope.cancel()
    assert code == 0, out
    assert "subject=CN = *.b.example" in out
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: h2" in out
    assert code11 != 0 and "alert protocol version" in out11, out11  # the server's alert 70


@needs
async def test_request_for_another_listener_on_the_connection_is_misdirected(
    tmp_path: Path, echo: EchoServer
) -> None:
    s = Setup(tmp_path, echo.port)
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, s.config, s.text)
        stream = await _tls_stream(s, port, "a.example")
        same = await _exchange(stream, "a.example")
        other = await _exchange(stream, "x.b.example")
        nursery.cancel_scope.cancel()
    assert same.startswith(b"HTTP/1.1 200 ")
    assert other.startswith(b"HTTP/1.1 421 ")


@needs
async def test_plaintext_to_an_https_port_is_refused_and_counted(
    tmp_path: Path, echo: EchoServer
) -> None:
    s = Setup(tmp_path, echo.port)
    async with trio.open_nursery() as nursery:
        server, port = await start_edge(nursery, s.config, s.text)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
        with trio.fail_after(10):
            leftover = b""
            while chunk := await tcp.receive_some(65536):
                leftover += chunk
        metrics = server.metrics.render()
        nursery.cancel_scope.cancel()
    assert leftover.startswith(b"HTTP/1.1 400 ") and b"speaks HTTPS" in leftover
    assert 'weft_tls_handshake_errors_total{reason="plaintext_http"} 1' in metrics


@needs
async def test_certificate_reload_keeps_connections_and_serves_the_new_one(
    tmp_path: Path, echo: EchoServer
) -> None:
    s = Setup(tmp_path, echo.port)
    async with trio.open_nursery() as nursery:
        server, port = await start_edge(nursery, s.config, s.text)
        old = await _tls_stream(s, port, "a.example")
        assert _serial(old) == s.a.serial
        renewed = s.ca.issue("a.example")
        renewed.write(tmp_path, "a")
        assert server.reload()
        fresh = await _tls_stream(s, port, "a.example")
        still = await _exchange(old, "a.example")  # the old connection keeps working
        # A broken renewal (key of another certificate) is refused; the last good stays.
        Leaf(renewed.cert_pem, s.ca.issue("a.example").key_pem, 0).write(tmp_path, "a")
        assert not server.reload()
        error = server.last_error
        after = await _tls_stream(s, port, "a.example")
        nursery.cancel_scope.cancel()
    assert _serial(fresh) == renewed.serial
    assert still.startswith(b"HTTP/1.1 200 ")
    assert "does not match" in error and "TLSCertificate default/a" in error
    assert _serial(after) == renewed.serial


async def test_startup_names_the_bad_certificate(tmp_path: Path) -> None:
    s = Setup(tmp_path, 1)
    (tmp_path / "a-key.pem").write_text("not a key")
    s.config.write_text(s.text)
    server = EdgeServer([str(s.config)], admin_port=0, bind=lambda key: ("127.0.0.1", 0))
    with pytest.raises(Exception, match=r"TLSCertificate default/a: no valid PEM private key"):
        await server.run()


@needs
async def test_silent_client_is_dropped_after_the_handshake_timeout_but_sessions_are_not(
    tmp_path: Path, echo: EchoServer
) -> None:
    s = Setup(tmp_path, echo.port)
    async with trio.open_nursery() as nursery:
        server, port = await start_edge(
            nursery, s.config, s.text, limits=Limits(tls_handshake_timeout_s=0.3)
        )
        session = await _tls_stream(s, port, "a.example")
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await silent.receive_some(1) == b""  # closed by the server
        await trio.sleep(0.4)  # the established session outlives the handshake deadline
        answer = await _exchange(session, "a.example")
        metrics = server.metrics.render()
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert 'weft_tls_handshake_errors_total{reason="timeout"} 1' in metrics
