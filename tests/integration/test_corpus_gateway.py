"""Every `api: gateway` case of the routing corpus, through a real edge listener.

Requests go over real sockets (httpx) to `meshctl edge`'s server, which forwards to echo
backends that say who they are and what they received.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
from tests.support.echo import EchoServer
from tests.support.h2echo import H2Echo

FILES = corpus_files("gateway")
DEFAULT_PORTS = {"http": 80, "https": 443}


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
                        await _run_case(client, server, doc, case, echoes, failures)
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


async def _run_case(
    client: Clients,
    server: EdgeServer,
    doc: dict[str, Any],
    case: dict[str, Any],
    echoes: dict[tuple[str, str], EchoServer],
    failures: list[str],
) -> None:
    exp = case["expect"]
    cid = case["id"]
    if "distribution" in exp:
        await _check_distribution(client, server, doc, case, failures)
        return
    if "backend_one_of" in exp:
        for _ in range(exp.get("sample_size", 20) // 10):
            resp = await _send(client, server, doc, case)
            body = resp.json()
            if body["pod"] not in exp["backend_one_of"]:
                failures.append(f"{cid}: backend {body['pod']} not in {exp['backend_one_of']}")
                return
            want = exp["request_headers_at_backend_by_backend"].get(body["pod"], {})
            _check_headers(cid, body, want, failures)
        return
    resp = await _send(client, server, doc, case)
    if resp.status_code != exp["status"]:
        failures.append(
            f"{cid}: status {resp.status_code}, want {exp['status']}: {resp.text[:200]}"
        )
        return
    if exp.get("redirect"):
        _check_redirect(cid, case, resp, failures)
    for name, value in (exp.get("response_headers") or {}).items():
        got = ",".join(resp.headers.get_list(name))
        if got != value:
            failures.append(f"{cid}: response header {name}={got!r}, want {value!r}")
    for name in exp.get("absent_response_headers") or []:
        if name in resp.headers:
            failures.append(f"{cid}: response header {name} should be absent")
    if resp.status_code != 200 or (exp.get("backend") is None and "path_at_backend" not in exp):
        return
    body = resp.json()
    if req_h2c_backend(doc, case) and body.get("http_version") != "2":
        failures.append(f"{cid}: reached the backend over HTTP/{body.get('http_version')}")
    if exp.get("backend") and body["pod"] != exp["backend"]:
        failures.append(f"{cid}: answered by {body['pod']}, want {exp['backend']}")
    if exp.get("namespace") and body["namespace"] != exp["namespace"]:
        failures.append(f"{cid}: namespace {body['namespace']}, want {exp['namespace']}")
    for key, field in (
        ("path_at_backend", "path"),
        ("host_at_backend", "host"),
        ("method_at_backend", "method"),
    ):
        if key in exp and body[field] != exp[key]:
            failures.append(f"{cid}: {field} at backend {body[field]!r}, want {exp[key]!r}")
    _check_headers(cid, body, exp.get("request_headers_at_backend") or {}, failures)
    for name in exp.get("absent_request_headers") or []:
        if name.lower() in body["headers"]:
            failures.append(f"{cid}: header {name} reached the backend")
    for mirror in exp.get("mirrored_to") or []:
        await _check_mirror(client, server, doc, case, mirror, echoes, failures)


def _check_headers(
    cid: str, body: dict[str, Any], want: dict[str, str], failures: list[str]
) -> None:
    for name, value in want.items():
        got = ",".join(body["headers"].get(name.lower(), []))
        if got != value:
            failures.append(f"{cid}: header {name} at backend {got!r}, want {value!r}")


def _check_redirect(
    cid: str, case: dict[str, Any], resp: httpx.Response, failures: list[str]
) -> None:
    exp = case["expect"]["redirect"]
    req = case["request"]
    loc = resp.headers.get("location", "")
    parts = urlsplit(loc)
    scheme = exp.get("scheme") or req["scheme"]
    if parts.scheme != scheme:
        failures.append(f"{cid}: Location {loc!r}: scheme {parts.scheme}, want {scheme}")
    if exp.get("host") is not None and parts.hostname != exp["host"]:
        failures.append(f"{cid}: Location {loc!r}: host {parts.hostname}, want {exp['host']}")
    want_port = int(exp["port"]) if exp.get("port") else DEFAULT_PORTS[scheme]
    if (parts.port or DEFAULT_PORTS[parts.scheme or scheme]) != want_port:
        failures.append(f"{cid}: Location {loc!r}: port {parts.port}, want {want_port}")
    want_path = exp.get("path") or req["path"].partition("?")[0]
    if parts.path != want_path:
        failures.append(f"{cid}: Location {loc!r}: path {parts.path}, want {want_path}")
    canonical = case["expect"].get("redirect_location")
    if canonical and loc != canonical:
        failures.append(f"{cid}: Location {loc!r}, want {canonical!r}")


async def _check_distribution(
    client: Clients,
    server: EdgeServer,
    doc: dict[str, Any],
    case: dict[str, Any],
    failures: list[str],
) -> None:
    exp = case["expect"]
    problems: list[str] = []
    for _ in range(exp.get("max_attempts", 1)):
        counts: dict[str, int] = {}
        for _ in range(exp["sample_size"]):
            resp = await _send(client, server, doc, case)
            pod = resp.json()["pod"]
            counts[pod] = counts.get(pod, 0) + 1
        problems = []
        for backend, share in exp["distribution"].items():
            got = counts.get(backend, 0) / exp["sample_size"]
            if share == 0 and got > 0:
                problems.append(f"{backend} got {got:.3f} with weight 0")
            elif abs(got - share) > exp["tolerance"]:
                problems.append(f"{backend} got {got:.3f}, want {share}±{exp['tolerance']}")
        if not problems:
            return
    failures.append(f"{case['id']}: {'; '.join(problems)}")


async def _check_mirror(
    client: Clients,
    server: EdgeServer,
    doc: dict[str, Any],
    case: dict[str, Any],
    mirror: dict[str, Any],
    echoes: dict[tuple[str, str], EchoServer],
    failures: list[str],
) -> None:
    echo = echoes[(mirror["namespace"], mirror["backend"])]
    path = case["expect"].get("path_at_backend", case["request"]["path"])
    sampling = case["expect"].get("mirror_sampling")
    if sampling is None:
        ok = await trio.to_thread.run_sync(
            echo.wait_for, lambda got: any(r["path"] == path for r in got), 5.0
        )
        if not ok:
            failures.append(f"{case['id']}: {mirror['backend']} never got the mirrored request")
        return
    p = mirror["percent"] / 100
    n = sampling["sample_size"]
    spread = sampling["tolerance_std_devs"] * math.sqrt(n * p * (1 - p))
    for _ in range(sampling["max_attempts"]):
        before = sum(1 for r in echo.received if r["path"] == path)
        for _ in range(n):
            await _send(client, server, doc, case)
        # Mirrors are fire-and-forget: wait until the expected share has arrived.
        await trio.to_thread.run_sync(
            echo.wait_for,
            lambda got, b=before: sum(1 for r in got if r["path"] == path) - b >= n * p - spread,
            5.0,
        )
        seen = sum(1 for r in echo.received if r["path"] == path) - before
        if abs(seen - n * p) <= spread:
            return
    failures.append(
        f"{case['id']}: {mirror['backend']} got {seen} of {n} mirrored, want {n * p:.0f}"
    )
