"""web: the shop's front end. GET / lists the catalog (gRPC to `catalog`) with a quote for
each item (HTTP to `orders`), both through the local sidecar's outbound port, which finds
the services, encrypts, balances and splits.

It copies the trace context and X-Request-Id of the request it serves onto the calls it
makes (FORWARD), so one shop request is one trace in Jaeger and its hops share a request id
in the access logs. That is all an app must do for tracing in a mesh: the sidecars make the
spans, but only the app knows which incoming request an outgoing call belongs to."""

from __future__ import annotations

import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import catalog_pb2
import catalog_pb2_grpc
import grpc

# What a request's calls must carry on: W3C trace context, B3 (for apps that speak it), the id.
FORWARD = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
           "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "x-request-id")  # fmt: skip
MESH = os.environ["MESH_OUTBOUND"]  # host:port of the sidecar's outbound listener
# Where each service is reached: its own name where the sidecar intercepts what the app
# dials (`meshctl up --transparent` sets CATALOG_ADDR=catalog:8080), else the sidecar's
# outbound port, with the service named in the authority (gRPC) or Host (HTTP).
CATALOG = os.environ.get("CATALOG_ADDR", MESH)
ORDERS = os.environ.get("ORDERS_ADDR", MESH)
catalog = catalog_pb2_grpc.CatalogStub(
    grpc.insecure_channel(CATALOG, options=[("grpc.default_authority", "catalog")])
)


def quote(sku: str, context: dict[str, str]) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://{ORDERS}/orders/{sku}", headers={"Host": "orders", **context}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        answer: dict[str, object] = json.load(resp)
        return answer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # the http.server API
        if self.path != "/":
            return self._send(404, {"error": "try GET /"})
        context = {k: v for k in FORWARD if (v := self.headers.get(k)) is not None}
        try:
            items = catalog.List(catalog_pb2.ListRequest(), timeout=5,
                                 metadata=list(context.items())).items  # fmt: skip
            page = [{"sku": i.sku, "name": i.name, "price": i.price_cents / 100,
                     "quote": quote(i.sku, context)} for i in items]  # fmt: skip
        except (grpc.RpcError, OSError) as exc:
            return self._send(502, {"error": f"a service is unavailable: {exc}"})
        self._send(200, {"items": page})

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body, indent=1).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # the sidecar logs every request
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
