"""The expectations of a routing corpus case, checked against what a real request got.

Shared by the gateway and the mesh corpus tests: each gives `check_case` its own way of
sending a case's request (`Send`).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import trio

from tests.support.echo import EchoServer

Send = Callable[[dict[str, Any]], Awaitable[httpx.Response]]
DEFAULT_PORTS = {"http": 80, "https": 443}


async def check_case(
    send: Send,
    case: dict[str, Any],
    echoes: dict[tuple[str, str], EchoServer],
    failures: list[str],
    *,
    h2c_backend: bool = False,
) -> None:
    """Send the case's request and add what differs from its expectations to `failures`.
    `h2c_backend`: the expected backend must have been reached over HTTP/2."""
    exp = case["expect"]
    cid = case["id"]
    if "distribution" in exp:
        await _check_distribution(send, case, failures)
        return
    if "backend_one_of" in exp:
        for _ in range(exp.get("sample_size", 20) // 10):
            resp = await send(case)
            body = resp.json()
            if body["pod"] not in exp["backend_one_of"]:
                failures.append(f"{cid}: backend {body['pod']} not in {exp['backend_one_of']}")
                return
            want = exp["request_headers_at_backend_by_backend"].get(body["pod"], {})
            _check_headers(cid, body, want, failures)
        return
    resp = await send(case)
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
    if h2c_backend and body.get("http_version") != "2":
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
        await _check_mirror(send, case, mirror, echoes, failures)


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
    send: Send,
    case: dict[str, Any],
    failures: list[str],
) -> None:
    exp = case["expect"]
    problems: list[str] = []
    for _ in range(exp.get("max_attempts", 1)):
        counts: dict[str, int] = {}
        for _ in range(exp["sample_size"]):
            resp = await send(case)
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
    send: Send,
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
            await send(case)
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
