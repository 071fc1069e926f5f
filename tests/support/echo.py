"""An echo backend like the Gateway API conformance echo server, on Python's http.server.

Each response is JSON describing what arrived (path, host, method, headers) and who
answered (backend name, namespace). `X-Echo-Set-Header: Name:Value[,Name:Value]` asks the
backend to put headers on its response. Every request is also recorded for tests that
need to see what a backend received (mirrors).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class EchoServer:
    def __init__(self, name: str, namespace: str = "default", address: str = "127.0.0.1") -> None:
        self.name = name
        self.namespace = namespace
        self.received: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
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
                    "body_length": len(body),
                }
                with owner.cond:
                    owner.received.append(info)
                    owner.cond.notify_all()
                payload = json.dumps(info).encode()
                self.send_response(200)
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

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

        self.httpd = ThreadingHTTPServer((address, 0), Handler)
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

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.received), timeout=timeout)
