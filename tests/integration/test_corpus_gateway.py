"""Every `api: gateway` case of the routing corpus, through a real edge listener.

Requests go over real sockets (httpx) to `meshctl edge`'s server, which forwards to echo
backends that say who they are and what they received.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from sidecar.modes.edge import EdgeServer
from tests.support.corpus import (
    CORPUS,
    build_resources,
    corpus_files,
    gateway_addresses,
    has_h2c_ports,
    req_h2c_backend,
)
from tests.support.corpus_expect import check_case
from tests.support.echo import EchoServer
from tests.support.h2echo import H2Echo

FILES = corpus_files("gateway")


def test_the_corpus_is_present() -> None:
    # The corpus is part of the repository; a missing corpus must fail, not skip.
    assert FILES, f"routing corpus not found at {CORPUS}"


def test_every_case_runs() -> None:
    assert sum(len(json.loads(p.read_text())["cases"]) for p in FILES) == 184


@dataclass
class Clients:
    """The harness's certificates are self-signed for names like "*.org" that no verifier
    accepts; the cases check which listener answered, not the chain."""

    h1: httpx.AsyncClient
    tls: httpx.AsyncClient  # HTTP/1.1 over TLS
    h2: httpx.AsyncClient  # HTTP/2 only: ALPN h2 over TLS, prior knowledge in cleartext


def _write(path: Path, resources: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump_all(resources, sort_keys=False))


@pytest.mark.parametrize("corpus_file", FILES, ids=[f.stem for f in FILES])
async def test_corpus_file(corpus_file: Path, tmp_path: Path) -> None:
    doc = json.loads(corpus_file.read_text())
    echoes = {
        (w["namespace"], w["backend"]): EchoServer(w["backend"], w["namespace"])
        for w in doc["workloads"]
    }
    for e in echoes.values():
        e.__enter__()
    ports = {k: e.port for k, e in echoes.items()}
    config = tmp_path / "config.yaml"
    server = EdgeServer(
        [str(config)],
        admin_port=0,
        bind=lambda key: (key.address, 0),
        watch_interval_s=0,
    )
    failures: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            # Service ports with appProtocol kubernetes.io/h2c reach an h2c echo instead.
            h2_ports = {}
            if has_h2c_ports(doc):
                for (ns, name), _ in echoes.items():
                    h2_ports[(ns, name)] = await nursery.start(H2Echo(name, ns).serve)
            _write(config, build_resources(doc, ports, h2_ports=h2_ports))
            await nursery.start(server.run)
            # Each TLS request gets its own connection: the cases set SNI per request, and
            # a pooled connection would carry the SNI of an earlier one.
            fresh = httpx.Limits(max_keepalive_connections=0)
            async with (
                httpx.AsyncClient(timeout=10.0) as h1,
                httpx.AsyncClient(timeout=10.0, verify=False, limits=fresh) as tls,
                httpx.AsyncClient(
                    timeout=10.0, verify=False, limits=fresh, http1=False, http2=True
                ) as h2,
            ):
                client = Clients(h1, tls, h2)
                for case in doc["cases"]:
                    removed = case.get("resources_removed")
                    if removed:
                        _write(config, build_resources(doc, ports, removed, h2_ports))
                        assert server.reload(), server.last_error
                    try:
                        await check_case(
                            functools.partial(_send, client, server, doc),
                            case, echoes, failures, h2c_backend=req_h2c_backend(doc, case),
                        )  # fmt: skip
                    finally:
                        if removed:
                            _write(config, build_resources(doc, ports, h2_ports=h2_ports))
                            assert server.reload(), server.last_error
            nursery.cancel_scope.cancel()
    finally:
        for e in echoes.values():
            e.__exit__()
    assert not failures, "\n".join(failures)


async def _send(
    clients: Clients, server: EdgeServer, doc: dict[str, Any], case: dict[str, Any]
) -> httpx.Response:
    req = case["request"]
    if req.get("protocol") in ("HTTP/2", "H2C_PRIOR_KNOWLEDGE"):
        client = clients.h2
    else:
        client = clients.tls if req["scheme"] == "https" else clients.h1
    ent = req["entrypoint"]
    address = gateway_addresses(doc)[(ent["namespace"], ent["name"])]
    port = server.bound_port(address, req["port"])
    host = req["host"]
    if host is None:
        host = address if req["port"] == 80 else f"{address}:{req['port']}"
    headers = {"Host": host, **req["headers"]}
    extra = req.get("backend_sets_response_headers")
    if extra:
        headers["X-Echo-Set-Header"] = ",".join(f"{k}:{v}" for k, v in extra.items())
    url = f"{req['scheme']}://{address}:{port}{req['path']}"
    extensions = {"sni_hostname": req["sni"]} if req.get("sni") else None
    return await client.request(
        req["method"], url, headers=headers, follow_redirects=False, extensions=extensions
    )
