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
    def _items(self) -> list[catalog_pb2.Item]:
        return [catalog_pb2.Item(sku=s, name=n, price_cents=p) for s, n, p in ITEMS]

    def List(self, request: object, context: object) -> catalog_pb2.ListReply:
        return catalog_pb2.ListReply(items=self._items())

    def Get(
        self, request: catalog_pb2.GetRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.Item:
        for item in self._items():
            if item.sku == request.sku:
                return item
        context.abort(grpc.StatusCode.NOT_FOUND, f"no item {request.sku!r}")
        raise AssertionError  # abort raises

    def Search(self, request: catalog_pb2.SearchRequest, context: object) -> catalog_pb2.ListReply:
        found = [
            i
            for i in self._items()
            if request.text.lower() in i.name.lower()
            and (not request.max_price_cents or i.price_cents <= request.max_price_cents)
        ]
        if request.page.size:
            found = found[: request.page.size]
        return catalog_pb2.ListReply(items=found)

    def Watch(self, request: catalog_pb2.WatchRequest, context: object):  # type: ignore[no-untyped-def]
        for _ in range(max(1, request.repeat)):
            yield from self._items()

    def Rate(
        self, request: catalog_pb2.RateRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.Item:
        if not 1 <= request.rating.stars <= 5:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stars must be 1 to 5")
        item = self.Get(catalog_pb2.GetRequest(sku=request.sku), context)
        item.stars = request.rating.stars
        return item


if __name__ == "__main__":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    catalog_pb2_grpc.add_CatalogServicer_to_server(Catalog(), server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    server.wait_for_termination()
