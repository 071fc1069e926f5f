"""The forward proxy as its clients use it: curl with `-x` for http:// (absolute form) and
https:// (CONNECT) URLs, an egress policy that allows some destinations and refuses the
rest (403, never connected), proxy authentication (407), malformed requests (400), and
every request in the access log and /metrics."""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.echo import EchoServer
from tests.support.edge import start_edge
from tests.support.pki import self_signed

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

CONFIG = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: proxy}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: fwd, port: 3128, protocol: weft.dev/ForwardProxy}}]
---
apiVersion: weft.dev/v1alpha1
kind: EgressPolicy
metadata: {{name: outbound}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: proxy}}]
  rules:
  - {{hosts: [localhost], ports: [{allowed}, {tls}]}}
  - {{cidrs: [127.0.0.0/8], ports: [{cidr_port}]}}
{auth}"""
AUTH = """  proxyAuth: {{users: {{name: proxy-users}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: proxy-users}}
type: Opaque
data: {{.htpasswd: {htpasswd}}}
"""


async def _curl(*argv: str) -> tuple[int, str, str]:
    done = await trio.run_process(["curl", "-sS", "--max-time", "10", *argv],
                                  capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_curl_through_the_forward_proxy(tmp_path: Path) -> None:
    leaf = self_signed("localhost")
    cert, key = leaf.write(tmp_path, "origin")
    with EchoServer("allowed") as allowed, EchoServer("other") as other, \
            EchoServer("by-cidr") as by_cidr:  # fmt: skip
        # an HTTPS origin for CONNECT: Python's TLS server in a thread
        tls_port, stop_tls = _tls_origin(cert, key)
        try:
            text = CONFIG.format(allowed=allowed.port, tls=tls_port, cidr_port=by_cidr.port,
                                 auth="")  # fmt: skip
            async with trio.open_nursery() as nursery:
                edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
                proxy = f"http://127.0.0.1:{port}"
                # absolute form, allowed by host name
                code, out, err = await _curl("-x", proxy, f"http://localhost:{allowed.port}/a?b=1",
                                             "-H", "X-Trace: 1", "-H", "Host: evil.example")  # fmt: skip
                assert code == 0, err
                seen = allowed.received[-1]
                assert seen["host"] == f"localhost:{allowed.port}"  # the target's, not the client's
                assert seen["path"] == "/a?b=1" and seen["headers"]["x-trace"] == ["1"]
                assert "proxy-connection" not in seen["headers"]
                # allowed by CIDR (an address, any name)
                code, out, err = await _curl("-x", proxy, f"http://127.0.0.1:{by_cidr.port}/c")
                assert code == 0 and by_cidr.received[-1]["path"] == "/c", err
                # a POST with a body
                code, out, _ = await _curl("-x", proxy, "--data-binary", "hello",
                                           f"http://localhost:{allowed.port}/post")  # fmt: skip
                assert allowed.received[-1]["body_length"] == 5
                # refused: another port, never connected to
                code, out, _ = await _curl("-x", proxy, "-o", "/dev/null", "-w", "%{http_code}",
                                           f"http://localhost:{other.port}/x")  # fmt: skip
                assert out == "403" and other.received == []
                # https through CONNECT: end-to-end TLS the proxy cannot read
                code, out, err = await _curl("-x", proxy, "--cacert", str(cert),
                                             f"https://localhost:{tls_port}/secure")  # fmt: skip
                assert code == 0 and out == "tls origin: /secure", err
                code, _, err = await _curl("-x", proxy, "-k", f"https://localhost:{other.port}/")
                assert code != 0 and "403" in err
                async with httpx.AsyncClient(timeout=10) as http:
                    metrics = (await http.get(
                        f"http://127.0.0.1:{edge.admin_bound_port}/metrics")).text  # fmt: skip
                assert 'route="forward-proxy"' in metrics and 'flow="downstream"' in metrics
                # malformed: 400, nothing forwarded
                with trio.fail_after(10):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.send_all(b"GET http://localhost/ HTTP/1.1\r\nBad Header\r\n\r\n")
                    answer = await stream.receive_some(1024)
                    await stream.aclose()
                assert answer.startswith(b"HTTP/1.1 400")
                nursery.cancel_scope.cancel()
        finally:
            stop_tls()


async def test_proxy_authentication(tmp_path: Path) -> None:
    sha = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    htpasswd = base64.b64encode(f"alice:{{SHA}}{sha}\n".encode()).decode()
    with EchoServer("allowed") as allowed:
        text = CONFIG.format(allowed=allowed.port, tls=1, cidr_port=1,
                             auth=AUTH.format(htpasswd=htpasswd))  # fmt: skip
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            proxy = f"http://127.0.0.1:{port}"
            url = f"http://localhost:{allowed.port}/"
            _, out, _ = await _curl("-x", proxy, "-o", "/dev/null", "-w", "%{http_code}", url)
            assert out == "407" and allowed.received == []
            _, out, _ = await _curl("-x", proxy, "-U", "alice:wrong", "-o", "/dev/null",
                                    "-w", "%{http_code}", url)  # fmt: skip
            assert out == "407"
            code, out, err = await _curl("-x", proxy, "-U", "alice:pw", url)
            assert code == 0 and allowed.received, err
            assert "proxy-authorization" not in allowed.received[-1]["headers"]
            nursery.cancel_scope.cancel()


def _tls_origin(cert: Path, key: Path) -> tuple[int, object]:
    """A small HTTPS server (Python's ssl) answering "tls origin: <path>"."""
    import http.server
    import ssl
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # the http.server API
            body = f"tls origin: {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return server.server_address[1], stop


async def test_hostile_requests_reach_no_destination(tmp_path: Path) -> None:
    with EchoServer("allowed") as allowed:
        text = CONFIG.format(allowed=allowed.port, tls=1, cidr_port=1, auth="")
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)

            async def send(data: bytes) -> bytes:
                with trio.fail_after(10):
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    await stream.send_all(data)
                    out = b""
                    while chunk := await stream.receive_some(65536):
                        out += chunk
                    await stream.aclose()
                return out

            origin = f"localhost:{allowed.port}".encode()
            assert (await send(b"CONNECT localhost HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
            assert (await send(b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
                b"HTTP/1.1 400")  # fmt: skip
            chunked = b"POST http://%b/c HTTP/1.1\r\nHost: %b\r\n" % (origin, origin)
            chunked += b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            assert (await send(chunked)).startswith(b"HTTP/1.1 411")
            huge = b"GET http://%b/ HTTP/1.1\r\nX: " % origin + b"a" * 100_000 + b"\r\n\r\n"
            assert (await send(huge)).startswith(b"HTTP/1.1 431")
            # a second request smuggled after the first one's body is not forwarded
            smuggle = b"POST http://%b/one HTTP/1.1\r\nHost: %b\r\nContent-Length: 3\r\n\r\n" % (
                origin, origin)  # fmt: skip
            smuggle += b"abcGET /two HTTP/1.1\r\nHost: x\r\n\r\n"
            answer = await send(smuggle)
            assert answer.startswith(b"HTTP/1.")
            assert [r["path"] for r in allowed.received] == ["/one"]
            assert allowed.received[0]["body_length"] == 3
            # an absolute URI without a path reaches the origin as "/" (RFC 9112 3.2.1)
            for target, want in ((b"", "/"), (b"?q=1", "/?q=1")):
                bare = b"GET http://%b%b HTTP/1.1\r\nHost: x\r\n\r\n" % (origin, target)
                assert (await send(bare)).startswith(b"HTTP/1.1 200")
                assert allowed.received[-1]["path"] == want
            # a host that is no DNS name or IP literal is refused, never looked up or sent
            for host in (b"local%0ahost", b"localhost\\", b"[localhost]", b"a,b"):
                odd = b"GET http://%b:%d/ HTTP/1.1\r\nHost: x\r\n\r\n" % (host, allowed.port)
                assert (await send(odd)).startswith(b"HTTP/1.1 400"), host
            assert len(allowed.received) == 3
            nursery.cancel_scope.cancel()
