"""Envoy's Authorization gRPC service as a test double, built on Envoy's own protos (the
gRPC project's xds-protos, from .cache/xds-protos) with a real grpcio server — so the
edge's subset of those protos is checked against the originals. Run as a process:
prints its port, then one JSON line per check it answers (see ext_authz.GrpcAuthDouble).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent import futures
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2_grpc as pb_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf.json_format import MessageToDict
from google.rpc import code_pb2, status_pb2

SLOW_S = 2.0


def _add(headers: Any, *pairs: tuple[str, str]) -> None:
    for key, value in pairs:
        h = headers.add()
        h.header.key, h.header.value = key, value


class Double(pb_grpc.AuthorizationServicer):  # type: ignore[misc]
    def Check(self, request: Any, context: Any) -> Any:
        print(json.dumps(MessageToDict(request)), flush=True)
        auth = request.attributes.request.http.headers.get("authorization", "")
        if auth == "Bearer error":
            context.abort(grpc.StatusCode.UNAVAILABLE, "policy store down")
        if auth == "Bearer slow":
            time.sleep(SLOW_S)
        if auth == "Bearer good":
            ok = pb.OkHttpResponse(headers_to_remove=["x-remove-me"])
            _add(ok.headers, ("x-user", "bob"), ("x-smuggle", "a\r\nb"), ("content-length", "5"),
                 (":path", "/admin"), ("x-request-id", "forged"),
                 ("x_forwarded_for", "10.0.0.1"))  # fmt: skip
            _add(ok.response_headers_to_add, ("x-checked-by", "grpc-double"))
            return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.OK), ok_response=ok)
        denied = pb.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Unauthorized),
            body="denied by the test authorization service\n",
        )
        _add(denied.headers, ("www-authenticate", 'Bearer realm="test"'))
        return pb.CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                                denied_response=denied)  # fmt: skip


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AuthorizationServicer_to_server(Double(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop(grace=None)


if __name__ == "__main__":
    main()
