"""An echo backend like the Gateway API conformance echo server, on Python's http.server.

Each response is JSON describing what arrived (path, host, method, headers) and who
answered (backend name, namespace). `X-Echo-Set-Header: Name:Value[,Name:Value]` asks the
backend to put headers on its response. Every request is also recorded for tests that
need to see what a backend received (mirrors).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _read(rfile: Any, n: int) -> Iterator[bytes]:
    while n > 0:
        piece = rfile.read(min(n, 1 << 16))
        if not piece:
            return
        n -= len(piece)
        yield piece


class _Server(ThreadingHTTPServer):
    # A proxy opens many connections at once (one per concurrent HTTP/2 stream); the
    # socketserver default backlog of 5 would drop SYNs and stall them for seconds.
    request_queue_size = 1024


class _Server6(_Server):
    address_family = socket.AF_INET6  # "::" takes IPv4 too (IPV6_V6ONLY is off)


class EchoServer:
    def __init__(
        self, name: str, namespace: str = "default", address: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.received: list[dict[str, Any]] = []
        self.started: list[str] = []  # paths of requests as they arrive
        self.streamed = 0  # bytes of /bytes/N answers written so far
        self.cond = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> tuple[int, str]:
                digest = hashlib.sha256()
                total = 0
                if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            break
                        for piece in _read(self.rfile, size):
                            digest.update(piece)
                            total += len(piece)
                        self.rfile.readline()
                else:
                    for piece in _read(self.rfile, int(self.headers.get("Content-Length") or 0)):
                        digest.update(piece)
                        total += len(piece)
                return total, digest.hexdigest()

            def _serve(self) -> None:
                with owner.cond:
                    owner.started.append(self.path)
                    owner.cond.notify_all()
                if self.path.startswith("/delay/"):  # /delay/<ms>/...: answer late
                    time.sleep(int(self.path.split("/")[2]) / 1000)
                if self.path.startswith("/bytes/"):
                    self._stream_zeros(int(self.path.partition("?")[0].split("/")[2]))
                    return
                body_length, body_sha256 = self._body()
                headers: dict[str, list[str]] = {}
                for k, v in self.headers.items():
                    headers.setdefault(k.lower(), []).append(v)
                info = {
                    "path": self.path,
                    "host": self.headers.get("Host", ""),
                    "method": self.command,
                    "headers": headers,
                    "namespace": owner.namespace,
                    "pod": owner.name,
                    "body_length": body_length,
                    "body_sha256": body_sha256,
                }
                with owner.cond:
                    owner.received.append(info)
                    owner.cond.notify_all()
                payload = json.dumps(info).encode()
                status = 200
                if self.path.startswith("/status/"):  # /status/<code>/...: answer with it
                    status = int(self.path.split("/")[2])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for item in self.headers.get_all("X-Echo-Set-Header") or []:
                    for pair in item.split(","):
                        name, _, value = pair.partition(":")
                        if name.strip():
                            self.send_header(name.strip(), value.strip())
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _stream_zeros(self, n: int) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(n))
                self.end_headers()
                block = bytes(1 << 16)
                while n > 0:
                    self.wfile.write(block[: min(n, len(block))])
                    owner.streamed += min(n, len(block))
                    n -= len(block)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

        server = _Server6 if ":" in address else _Server
        self.httpd = server((address, port), Handler)
        self.httpd.daemon_threads = True
        self.address = address
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> EchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_started(self, count: int, timeout: float) -> bool:
        """Until `count` requests have arrived (answered or not)."""
        with self.cond:
            return self.cond.wait_for(lambda: len(self.started) >= count, timeout=timeout)

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.received), timeout=timeout)
