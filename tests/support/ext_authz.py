"""External authorization services for tests (documented-API doubles, named as such):
one over HTTP (http.server) and one implementing Envoy's
`envoy.service.auth.v3.Authorization` with a real grpcio server. Both decide by the
request's Authorization field: `Bearer good` passes, `Bearer slow` answers too late,
`Bearer error` fails (gRPC UNAVAILABLE), anything else is denied 401 (gRPC: 401 with a
body). They record the checks they received."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2

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


class GrpcAuthDouble(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.checks: list[Any] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_AuthorizationServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Check(self, request: Any, context: Any) -> Any:
        self.checks.append(request)
        auth = request.attributes.request.http.headers.get("authorization", "")
        if auth == "Bearer error":
            context.abort(grpc.StatusCode.UNAVAILABLE, "policy store down")
        if auth == "Bearer slow":
            time.sleep(SLOW_S)
        if auth == "Bearer good":
            ok = pb.OkHttpResponse(headers_to_remove=["x-remove-me"])
            for key, value in (("x-user", "bob"), ("x-smuggle", "a\r\nb"),
                               ("content-length", "5"), (":path", "/admin")):  # fmt: skip
                h = ok.headers.add()
                h.header.key, h.header.value = key, value
            return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)
        denied = pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            body="denied by the test authorization service\n",
        )
        h = denied.headers.add()
        h.header.key, h.header.value = "www-authenticate", 'Bearer realm="test"'
        return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                                denied_response=denied)  # fmt: skip

    def __enter__(self) -> GrpcAuthDouble:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None)
