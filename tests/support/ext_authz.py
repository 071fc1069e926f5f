"""External authorization services for tests (documented-API doubles, named as such):
one over HTTP (http.server) and one implementing Envoy's
`envoy.service.auth.v3.Authorization` with a real grpcio server on Envoy's own protos
(ext_authz_grpc_server.py). Both decide by the
request's Authorization field: `Bearer good` passes, `Bearer slow` answers too late,
`Bearer error` fails (gRPC UNAVAILABLE), anything else is denied 401 (gRPC: 401 with a
body). They record the checks they received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SLOW_S = 2.0


class HttpAuthDouble:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _check(self) -> None:
                owner.checks.append({"method": self.command, "path": self.path,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}})  # fmt: skip
                auth = self.headers.get("Authorization", "")
                if auth == "Bearer slow":
                    time.sleep(SLOW_S)
                if auth == "Bearer good":
                    self.send_response(200)
                    self.send_header("x-user", "alice")
                    self.send_header("x-not-forwarded", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"denied by the test authorization service\n"
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer realm="test"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _check

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)  # fmt: skip

    def __enter__(self) -> HttpAuthDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class GrpcAuthDouble:
    """ext_authz_grpc_server.py in a process of its own, with Envoy's protos on its path;
    `checks` are the CheckRequests it answered, as JSON (protobuf's JSON mapping)."""

    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[2]
        protos = root / ".cache" / "xds-protos"
        if not (protos / "envoy").is_dir():
            pytest.skip(f"Envoy's protos are not in {protos} (make test installs them)")
        env = {**os.environ, "PYTHONPATH": f"{protos}{os.pathsep}{root}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ext_authz_grpc_server"], cwd=root, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.checks: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.checks.append(json.loads(line))

    def __enter__(self) -> GrpcAuthDouble:
        self.reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)
        self.reader.join(timeout=10)
