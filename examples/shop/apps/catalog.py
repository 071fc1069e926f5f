"""catalog: the items for sale, over gRPC (grpcio, protobuf)."""

from __future__ import annotations

import os
from concurrent import futures

import catalog_pb2
import catalog_pb2_grpc
import grpc

ITEMS = [("tea", "Green tea, 100 g", 650), ("mug", "Stoneware mug", 1200),
         ("teapot", "Cast-iron teapot", 4500)]  # fmt: skip


class Catalog(catalog_pb2_grpc.CatalogServicer):
    def List(self, request: object, context: object) -> catalog_pb2.ListReply:
        items = [catalog_pb2.Item(sku=s, name=n, price_cents=p) for s, n, p in ITEMS]
        return catalog_pb2.ListReply(items=items)


if __name__ == "__main__":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    catalog_pb2_grpc.add_CatalogServicer_to_server(Catalog(), server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    server.wait_for_termination()
