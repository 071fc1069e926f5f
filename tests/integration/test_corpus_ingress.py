"""Every `api: ingress` case of the routing corpus (the ingress-controller conformance
features), through a real edge serving the Ingresses on its ingress listener."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from sidecar.config.ingress import IngressListeners
from sidecar.modes.edge import EdgeServer
from tests.support.corpus import CORPUS, build_resources, corpus_files
from tests.support.corpus_expect import check_case
from tests.support.echo import EchoServer

FILES = corpus_files("ingress")
ADDRESS = "127.0.0.9"  # the edge's --ingress-address in this test


def test_the_ingress_cases_are_present() -> None:
    assert FILES, f"routing corpus not found at {CORPUS}"
    assert sum(len(json.loads(p.read_text())["cases"]) for p in FILES) == 18


@pytest.mark.parametrize("corpus_file", FILES, ids=[f.stem for f in FILES])
async def test_corpus_file(corpus_file: Path, tmp_path: Path) -> None:
    doc = json.loads(corpus_file.read_text())
    echoes = {(w["namespace"], w["backend"]): EchoServer(w["backend"], w["namespace"])
              for w in doc["workloads"]}  # fmt: skip
    for e in echoes.values():
        e.__enter__()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump_all(
        build_resources(doc, {k: e.port for k, e in echoes.items()}), sort_keys=False))  # fmt: skip
    server = EdgeServer([str(config)], admin_port=0, bind=lambda key: (key.address, 0),
                        watch_interval_s=0, ingress=IngressListeners(ADDRESS, 80, 443))  # fmt: skip
    failures: list[str] = []
    try:
        async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10.0) as http:
            await nursery.start(server.run)

            async def send(case: dict[str, object]) -> httpx.Response:
                req = case["request"]
                assert isinstance(req, dict)
                assert req["entrypoint"] == {"kind": "IngressController"}
                port = server.bound_port(ADDRESS, req["port"])
                headers = {"Host": req["host"] or ADDRESS, **req["headers"]}
                url = f"{req['scheme']}://{ADDRESS}:{port}{req['path']}"
                return await http.request(req["method"], url, headers=headers)

            for case in doc["cases"]:
                await check_case(send, case, echoes, failures)
            nursery.cancel_scope.cancel()
    finally:
        for e in echoes.values():
            e.__exit__()
    assert not failures, "\n".join(failures)
