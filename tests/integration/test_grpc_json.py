"""REST to gRPC transcoding at the edge, against the shop's real catalog service (grpcio)
and its descriptor set made by protoc (grpc_tools) from catalog.proto's google.api.http
options; JSON clients are curl and httpx."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import grpc
import httpx
import pytest
import trio

from sidecar.config.loader import load_snapshot
from sidecar.errors import ConfigError
from tests.support.edge import config, start_edge

APPS = Path(__file__).resolve().parents[2] / "examples" / "shop" / "apps"
ROUTE = """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: catalog}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - filters: [{{type: ExtensionRef, extensionRef: {{group: weft.dev, kind: GrpcJsonTranscoder, name: catalog}}}}]
    backendRefs: [{{name: catalog, port: 80}}]
---
apiVersion: weft.dev/v1alpha1
kind: GrpcJsonTranscoder
metadata: {{name: catalog}}
spec:
  descriptorSet: {descriptors}
  services: [shop.catalog.v1.Catalog]
"""


def descriptor_set(out: Path) -> Path:
    """protoc --include_imports --descriptor_set_out for the shop's catalog.proto."""
    from google.api import annotations_pb2
    from grpc_tools import protoc

    googleapis = Path(annotations_pb2.__file__).resolve().parents[2]
    bundled = resources.files("grpc_tools") / "_proto"
    code = protoc.main(["protoc", f"-I{APPS}", f"-I{googleapis}", f"-I{bundled}",
                        "--include_imports", f"--descriptor_set_out={out}", "catalog.proto"])  # fmt: skip
    assert code == 0
    return out


@contextmanager
def catalog_server() -> Iterator[int]:
    sys.path.insert(0, str(APPS))
    try:
        import catalog
        import catalog_pb2_grpc
    finally:
        sys.path.remove(str(APPS))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    catalog_pb2_grpc.add_CatalogServicer_to_server(catalog.Catalog(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def _text(tmp: Path, port: int, descriptors: Path) -> str:
    text = config({"catalog": port}, [])
    text = text.replace("ports: [{port: 80}]", "ports: [{port: 80, protocol: GRPC}]")
    return text + ROUTE.format(descriptors=descriptors)


async def test_json_clients_call_the_grpc_catalog(tmp_path: Path) -> None:
    descriptors = descriptor_set(tmp_path / "catalog.pb")
    with catalog_server() as port:
        async with trio.open_nursery() as nursery:
            server, edge = await start_edge(
                nursery, tmp_path / "c.yaml", _text(tmp_path, port, descriptors)
            )
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge}", timeout=10) as http:
                listed = await http.get("/v1/items")
                one = await http.get("/v1/items/mug")
                missing = await http.get("/v1/items/nope")
                search = await http.get("/v1/search?text=T&maxPriceCents=5000&page.size=2")
                search_snake = await http.get("/v1/search?text=tea&max_price_cents=100")
                rated = await http.post("/v1/items/tea:rate", json={"stars": 5, "comment": "!"})
                bad = await http.post("/v1/items/tea:rate", json={"stars": 9})
                not_json = await http.post("/v1/items/tea:rate", content=b"{nope",
                                           headers={"content-type": "application/json"})  # fmt: skip
                unknown_field = await http.post("/v1/items/tea:rate", json={"starz": 1})
                unbound = await http.get("/v2/nothing")
            # a server stream, read line by line as it comes, by curl
            streamed = await trio.run_process(
                ["curl", "-sS", "-N", "-D", "-", f"http://127.0.0.1:{edge}/v1/items:watch?repeat=2"],
                capture_stdout=True,
            )  # fmt: skip
            codes = {key[4] for key in server.metrics.requests}
            nursery.cancel_scope.cancel()

    assert {404, 400} <= codes  # what the clients got (gRPC answered HTTP 200 to each)
    assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
    assert [i["sku"] for i in listed.json()["items"]] == ["tea", "mug", "teapot"]
    assert one.json() == {"sku": "mug", "name": "Stoneware mug", "priceCents": 1200}
    assert missing.status_code == 404
    assert missing.json() == {"code": 5, "message": "no item 'nope'"}
    assert [i["sku"] for i in search.json()["items"]] == ["tea", "mug"]  # price <= 5000, 2
    assert search_snake.json() == {}  # tea costs 650 > 100: no items (proto3 JSON omits [])
    assert rated.status_code == 200 and rated.json()["stars"] == 5
    assert bad.status_code == 400 and bad.json()["message"] == "stars must be 1 to 5"
    assert not_json.status_code == 400 and not_json.json()["code"] == 3
    assert unknown_field.status_code == 400 and "starz" in unknown_field.json()["message"]
    # no binding: forwarded as it came, a plain GET the gRPC server does not answer
    assert unbound.status_code == 502 and unbound.headers["x-weft-error"] == "upstream_error"
    head, _, body = streamed.stdout.partition(b"\r\n\r\n")
    assert b"content-type: application/x-ndjson" in head.lower()
    lines = [json.loads(line) for line in body.splitlines()]
    assert [i["sku"] for i in lines] == ["tea", "mug", "teapot"] * 2


def test_a_descriptor_set_without_the_service_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.pb").write_bytes(b"")
    with catalog_server() as port:
        text = _text(tmp_path, port, tmp_path / "empty.pb")
        (tmp_path / "c.yaml").write_text(text)
        with pytest.raises(ConfigError, match="is not in the descriptor set"):
            load_snapshot([str(tmp_path / "c.yaml")], version=1, gateway_class="weft")
        (tmp_path / "c.yaml").write_text(text.replace("empty.pb", "missing.pb"))
        with pytest.raises(ConfigError, match="cannot read"):
            load_snapshot([str(tmp_path / "c.yaml")], version=1, gateway_class="weft")
