"""TCP and TLS passthrough routes, and protocol detection, over real sockets."""

from __future__ import annotations

import functools
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509

from tests.support.echo import EchoServer
from tests.support.edge import start_edge
from tests.support.net import free_port
from tests.support.pki import TestCA

GATEWAY = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - {{name: db, port: 7001, protocol: TCP}}
  - {{name: auto, port: 7002, protocol: weft.dev/Detect}}
  - {{name: tls, port: 7003, protocol: TLS, tls: {{mode: Passthrough}}}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: db}}
spec:
  parentRefs: [{{name: edge, sectionName: db}}, {{name: edge, sectionName: auto}}]
  rules: [{{backendRefs: [{{name: {tcp_backend}, port: 9000}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge, sectionName: auto}}]
  rules: [{{backendRefs: [{{name: http, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: a}}
spec:
  parentRefs: [{{name: edge, sectionName: tls}}]
  hostnames: [a.example]
  rules: [{{backendRefs: [{{name: tls-a, port: 443}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: b}}
spec:
  parentRefs: [{{name: edge, sectionName: tls}}]
  hostnames: ["*.b.example"]
  rules: [{{backendRefs: [{{name: tls-b, port: 443}}]}}]
"""

SERVICE = """---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{port: {port}, protocol: {protocol}}}]
  endpoints: [{{address: 127.0.0.1, port: {target}}}]
"""


async def _echo_after_eof(stream: trio.SocketStream) -> None:
    """Read until the client half-closes, then answer everything at once and close."""
    got = b""
    while chunk := await stream.receive_some(65536):
        got += chunk
    await stream.send_all(b"echo:" + got)
    await stream.aclose()


async def _greeter(stream: trio.SocketStream) -> None:
    """A server-first protocol: it speaks before the client says anything (like SMTP)."""
    await stream.send_all(b"220 ready\r\n")
    line = await stream.receive_some(100)
    await stream.send_all(b"250 got " + line)
    await stream.aclose()


@pytest.fixture
async def servers(nursery: trio.Nursery) -> AsyncIterator[dict[str, int]]:
    out = {}
    for name, handler in (("echo", _echo_after_eof), ("greeter", _greeter)):
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        out[name] = listeners[0].socket.getsockname()[1]
    yield out


def _config(servers: dict[str, int], http: int, tls_a: int, tls_b: int, tcp: str) -> str:
    text = GATEWAY.format(tcp_backend=tcp)
    for name, port, target, protocol in (
        ("echo", 9000, servers["echo"], "TCP"),
        ("greeter", 9000, servers["greeter"], "TCP"),
        ("http", 80, http, "HTTP"),
        ("tls-a", 443, tls_a, "TCP"),
        ("tls-b", 443, tls_b, "TCP"),
    ):
        text += SERVICE.format(name=name, port=port, target=target, protocol=protocol)
    return text


async def _half_close_exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    await stream.send_eof()
    out = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


async def test_tcp_route_relays_with_half_close_and_counts(
    tmp_path: Path, servers: dict[str, int]
) -> None:
    with EchoServer("web") as web:
        text = _config(servers, web.port, 1, 1, "echo")
        async with trio.open_nursery() as nursery:
            edge, _ = await start_edge(nursery, tmp_path / "c.yaml", text)
            port = edge.bound_port("127.0.0.1", 7001)
            payload = bytes(range(256)) * 4096  # 1 MiB
            answer = await _half_close_exchange(port, payload)
            await trio.testing.wait_all_tasks_blocked()  # the proxy finished its accounting
            metrics = edge.metrics.render()
            nursery.cancel_scope.cancel()
    assert answer == b"echo:" + payload
    assert 'peer="default/echo:9000",route="default/db",result="closed"} 1' in metrics
    assert f'route="default/db",flow="upstream"}} {len(payload)}' in metrics
    assert f'route="default/db",flow="downstream"}} {len(payload) + 5}' in metrics


async def test_detecting_port_sends_http_to_routes_and_the_rest_to_tcp(
    tmp_path: Path, servers: dict[str, int]
) -> None:
    with EchoServer("web") as web:
        text = _config(servers, web.port, 1, 1, "echo")
        async with trio.open_nursery() as nursery:
            edge, _ = await start_edge(nursery, tmp_path / "c.yaml", text)
            port = edge.bound_port("127.0.0.1", 7002)
            http = await _half_close_exchange(port, b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\n")
            h2 = await trio.run_process(
                ["curl", "-sS", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/h2"],
                capture_stdout=True,
                check=False,
            )
            opaque = await _half_close_exchange(port, b"\x00\x01\x02binary")
            nursery.cancel_scope.cancel()
    assert http.startswith(b"HTTP/1.1 200 ") and b'"path": "/hi"' in http
    assert b'"path": "/h2"' in h2.stdout
    assert opaque == b"echo:\x00\x01\x02binary"


async def test_server_first_protocol_is_not_held_up(
    tmp_path: Path, servers: dict[str, int]
) -> None:
    with EchoServer("web") as web:
        text = _config(servers, web.port, 1, 1, "greeter")
        async with trio.open_nursery() as nursery:
            edge, _ = await start_edge(nursery, tmp_path / "c.yaml", text)
            port = edge.bound_port("127.0.0.1", 7002)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            started = trio.current_time()
            with trio.fail_after(5):
                greeting = await stream.receive_some(100)
            waited = trio.current_time() - started
            await stream.send_all(b"HELO me\r\n")
            with trio.fail_after(5):
                reply = await stream.receive_some(100)
            nursery.cancel_scope.cancel()
    assert greeting == b"220 ready\r\n"
    assert reply == b"250 got HELO me\r\n"
    assert waited < 2.0  # the detection timeout (0.3 s), not the 10 s others wait


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl needed")


@needs_openssl
async def test_tls_passthrough_routes_by_sni(tmp_path: Path, servers: dict[str, int]) -> None:
    ca = TestCA()
    backends = []
    for name in ("a.example", "x.b.example"):
        stem = name.split(".")[0]
        cert, key = ca.issue(name).write(tmp_path, stem)
        port = free_port()
        proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
             "-key", str(key), "-www"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        backends.append((proc, port))
    try:
        for proc, _ in backends:  # s_server prints ACCEPT once it listens
            assert proc.stdout is not None
            with trio.fail_after(10):
                while "ACCEPT" not in (line := await trio.to_thread.run_sync(proc.stdout.readline)):
                    assert line, "openssl s_server exited"
        with EchoServer("web") as web:
            text = _config(servers, web.port, backends[0][1], backends[1][1], "echo")
            async with trio.open_nursery() as nursery:
                edge, _ = await start_edge(nursery, tmp_path / "c.yaml", text)
                port = edge.bound_port("127.0.0.1", 7003)
                seen = {}
                for sni in ("a.example", "y.b.example"):
                    seen[sni] = await trio.to_thread.run_sync(_peer_name, port, sni, ca.pem)
                nursery.cancel_scope.cancel()
    finally:
        for proc, _ in backends:
            proc.terminate()
            proc.wait(5)
    assert seen == {"a.example": "a.example", "y.b.example": "x.b.example"}


def _peer_name(port: int, sni: str, ca_pem: bytes) -> str:
    """Handshake through the proxy and name the certificate the backend presented."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.check_hostname = False  # *.b.example covers y.b.example but x.b.example is served
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value)
