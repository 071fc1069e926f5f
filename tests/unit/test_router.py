"""Route selection and precedence on compiled snapshots (pure: no sockets)."""

from __future__ import annotations

from typing import Any

import yaml

from sidecar.config.compile import compile_snapshot
from sidecar.config.model import ListenerKey
from sidecar.config.parse import Document, load_documents
from sidecar.config.snapshot import Snapshot
from sidecar.http.router import normalize_host

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  listeners:
  - {name: a, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - {name: b, port: 80, protocol: HTTP, hostname: "api.example.com"}
  - {name: c, port: 80, protocol: HTTP}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: s}
spec:
  ports: [{port: 80}]
  endpoints: [{address: 127.0.0.1, port: 9}]
"""


def _snap(routes: str) -> Snapshot:
    docs = list(yaml.safe_load_all(GATEWAY + "---\n" + routes))
    res = load_documents([Document(d, f"doc{i}") for i, d in enumerate(docs)])
    return compile_snapshot(res, version=1)


def _route(
    snap: Snapshot,
    host: str,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    query: dict[str, list[str]] | None = None,
) -> Any:
    router = snap.routers[ListenerKey(address="0.0.0.0", port=80)]
    fields = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    qs = "&".join(f"{k}={v}" for k, vs in (query or {}).items() for v in vs)
    m = router.route(normalize_host(host), path, method, fields, qs)
    return None if m is None else (m.action.route, m.action.rule)


def route(name: str, rules: str, hostnames: str = "[]", section: str = "") -> str:
    sec = f", sectionName: {section}" if section else ""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: gw{sec}}}]
  hostnames: {hostnames}
  rules: {rules}
---
"""


def test_exact_beats_longer_prefix_and_prefix_is_segment_wise() -> None:
    snap = _snap(
        route(
            "r",
            """
  - matches: [{path: {type: PathPrefix, value: /foo}}]
    backendRefs: [{name: s, port: 80}]
  - matches: [{path: {type: Exact, value: /foo/bar}}]
    backendRefs: [{name: s, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /foo/bar/}}]
    backendRefs: [{name: s, port: 80}]
""",
        )
    )
    assert _route(snap, "x", "/foo/bar") == ("default/r", 1)
    assert _route(snap, "x", "/foo/bar/baz") == ("default/r", 2)
    assert _route(snap, "x", "/foo/bar/") == ("default/r", 2)
    assert _route(snap, "x", "/foo") == ("default/r", 0)
    assert _route(snap, "x", "/foobar") is None


def test_method_then_headers_then_query_break_ties() -> None:
    snap = _snap(
        route(
            "r",
            """
  - matches: [{path: {value: /}}]
    backendRefs: [{name: s, port: 80}]
  - matches: [{path: {value: /}, queryParams: [{name: q, value: "1"}]}]
    backendRefs: [{name: s, port: 80}]
  - matches: [{path: {value: /}, headers: [{name: X-A, value: "1"}]}]
    backendRefs: [{name: s, port: 80}]
  - matches: [{path: {value: /}, method: POST}]
    backendRefs: [{name: s, port: 80}]
""",
        )
    )
    both = {"x-a": "1"}
    q = {"q": ["1"]}
    assert _route(snap, "x", "/", "POST", both, q) == ("default/r", 3)
    assert _route(snap, "x", "/", "GET", both, q) == ("default/r", 2)
    assert _route(snap, "x", "/", "GET", {}, q) == ("default/r", 1)
    assert _route(snap, "x", "/", "GET") == ("default/r", 0)


def test_listener_isolation_and_hostname_precedence() -> None:
    snap = _snap(
        route("wild", "[{backendRefs: [{name: s, port: 80}]}]", section="a")
        + route("api", "[{backendRefs: [{name: s, port: 80}]}]", section="b")
        + route("any", "[{backendRefs: [{name: s, port: 80}]}]", section="c")
        + route(
            "exact",
            "[{matches: [{path: {value: /x}}], backendRefs: [{name: s, port: 80}]}]",
            hostnames='["shop.example.com"]',
            section="a",
        )
    )
    assert _route(snap, "api.example.com", "/") == ("default/api", 0)
    assert _route(snap, "API.Example.com:8080", "/") == ("default/api", 0)
    assert _route(snap, "shop.example.com", "/x") == ("default/exact", 0)
    assert _route(snap, "shop.example.com", "/y") == ("default/wild", 0)
    assert _route(snap, "a.b.example.com", "/") == ("default/wild", 0)
    assert _route(snap, "example.com", "/") == ("default/any", 0)


def test_older_route_wins_a_tie() -> None:
    a = route("b-newer", "[{backendRefs: [{name: s, port: 80}]}]").replace(
        "metadata: {name: b-newer}",
        "metadata: {name: b-newer, creationTimestamp: '2024-01-02T00:00:00Z'}",
    )
    b = route("z-older", "[{backendRefs: [{name: s, port: 80}]}]").replace(
        "metadata: {name: z-older}",
        "metadata: {name: z-older, creationTimestamp: '2024-01-01T00:00:00Z'}",
    )
    assert _route(_snap(a + b), "x", "/") == ("default/z-older", 0)


def test_regex_path_and_invalid_backend() -> None:
    snap = _snap(
        route(
            "r",
            """
  - matches: [{path: {type: RegularExpression, value: "/v[0-9]+/items"}}]
    backendRefs: [{name: s, port: 80}]
  - matches: [{path: {value: /missing}}]
    backendRefs: [{name: nope, port: 80}]
""",
        )
    )
    assert _route(snap, "x", "/v12/items") == ("default/r", 0)
    assert _route(snap, "x", "/v12/items/more") is None
    router = snap.routers[ListenerKey(address="0.0.0.0", port=80)]
    m = router.route("x", "/missing", "GET", [], "")
    assert m is not None and m.action.backends[0].cluster is None
    assert "not found" in m.action.backends[0].reason
