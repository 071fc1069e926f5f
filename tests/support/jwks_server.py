"""An identity provider's JWKS endpoint for tests: HTTPS on 127.0.0.1 (http.server with
a certificate from a test CA), whose document and status a test changes mid-run
(key rotation, an outage), counting the fetches it answers."""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.pki import TestCA


class JwksServer:
    def __init__(self, directory: Path, document: str) -> None:
        self.document = document
        self.status = 200
        self.fetches = 0
        self.cond = threading.Condition()
        self.ca = TestCA("JWKS test CA")
        self.ca_file = self.ca.write(directory / "jwks-ca.pem")
        cert, key = self.ca.issue("localhost").write(directory, "jwks")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with owner.cond:
                    status, body = owner.status, owner.document.encode()
                    owner.fetches += 1
                    owner.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.uri = f"https://localhost:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def set(self, document: str | None = None, status: int | None = None) -> None:
        with self.cond:
            self.document = self.document if document is None else document
            self.status = self.status if status is None else status

    def wait_fetches(self, n: int, timeout_s: float = 10.0) -> int:
        """Until at least `n` fetches were answered (blocking: run it in a thread)."""
        with self.cond:
            self.cond.wait_for(lambda: self.fetches >= n, timeout_s)
            return self.fetches

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
