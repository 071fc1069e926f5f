"""Request aggregation at the edge: one request, several upstream calls (EchoServers, each
reporting what it received), one merged JSON answer; parts in parallel or in their
declared order, optional and fatal failures, timeouts, and a CLIENT span per part."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from sidecar.config.loader import load_snapshot
from sidecar.errors import ConfigError
from sidecar.observe.tracing import TraceOptions
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.otlp import otlp_receiver

ROUTE = """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]
    filters: [{{type: ExtensionRef, extensionRef: {{group: weft.dev, kind: Aggregation, name: {name}}}}}]
---
apiVersion: weft.dev/v1alpha1
kind: Aggregation
metadata: {{name: {name}}}
spec:
{spec}"""

PROFILE = """  pathTemplate: /profile/{id}
  forwardHeaders: [authorization]
  parts:
  - name: user
    backendRef: {name: users, port: 80}
    path: /users/${path.id}?page=${query.page}
  - name: orders
    backendRef: {name: orders, port: 80}
    path: /orders?owner=${part.user.pod}&seen=${part.user.path}
  - name: slow
    backendRef: {name: orders, port: 80}
    path: /delay/3000/slow
    timeout: 200ms
    optional: true
  - name: broken
    backendRef: {name: users, port: 80}
    path: /status/500/broken
    optional: true
"""

STRICT = """  parts:
  - name: user
    backendRef: {name: users, port: 80}
    path: /status/503/user
  - name: after
    backendRef: {name: orders, port: 80}
    path: /after/${part.user.id}
"""


async def test_parts_merged_in_order_with_failures_and_spans(tmp_path: Path) -> None:
    with (
        otlp_receiver() as (receiver, otlp),
        EchoServer("users") as users,
        EchoServer("orders") as orders,
    ):
        text = config({"users": users.port, "orders": orders.port}, [])
        text += ROUTE.format(name="profile", spec=PROFILE) + ROUTE.format(
            name="strict", spec=STRICT
        )
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text,
                                       trace=TraceOptions(endpoint=f"127.0.0.1:{otlp}"))  # fmt: skip
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                with trio.fail_after(5):  # the slow part's 3 s never holds the answer up
                    got = await http.get("/profile/42?page=a%20b",
                                         headers={"authorization": "Bearer t", "x-other": "1"})  # fmt: skip
                strict = await http.get("/strict")
            assert got.status_code == 200, got.text
            doc = got.json()
            assert doc["user"]["path"] == "/users/42?page=a%20b"  # query values re-encoded
            assert doc["user"]["headers"]["authorization"] == ["Bearer t"]
            assert "x-other" not in doc["user"]["headers"]
            # `orders` ran after `user`, with values from its answer, encoded for a URL
            assert (
                doc["orders"]["path"] == "/orders?owner=users&seen=%2Fusers%2F42%3Fpage%3Da%2520b"
            )
            assert doc["slow"] is None and doc["broken"] is None
            assert doc["_errors"] == {"slow": "no answer within 0.2s", "broken": "answered 500"}

            assert strict.status_code == 502
            assert strict.json()["error"] == "part user failed: answered 503"
            assert strict.json()["errors"]["after"] == "cancelled: part user failed"
            assert not any(r["path"].startswith("/after") for r in orders.received)

            with trio.fail_after(30):
                assert await receiver.wait_for(
                    lambda s: sum(r.span.kind == 3 for r in s) >= 5, 30)  # fmt: skip
            nursery.cancel_scope.cancel()
    spans = receiver.spans
    server = next(
        r for r in spans if r.span.kind == 2 and r.attributes.get("url.path") == "/profile/42"
    )
    parts = [r for r in spans if r.span.kind == 3 and r.span.parent_span_id == server.span.span_id]
    assert len(parts) == 4  # one CLIENT span per part, children of the request's span
    assert {r.span.trace_id for r in parts} == {server.span.trace_id}
    # each part's upstream got its span as the parent
    user_seen = doc["user"]["headers"]["traceparent"][0].split("-")[2]
    assert bytes.fromhex(user_seen) in {r.span.span_id for r in parts}


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ("  - {name: a, backendRef: {name: s, port: 80}, path: '/x/${part.b.id}'}\n"
         "  - {name: b, backendRef: {name: s, port: 80}, path: '/y/${part.a.id}'}\n",
         "parts wait for each other: a -> b -> a"),
        ("  - {name: a, backendRef: {name: s, port: 80}, path: '/x/${part.zz}'}\n",
         "no part named 'zz'"),
        ("  - {name: a, backendRef: {name: s, port: 80}, path: '/x/${part.a.id}'}\n",
         "refers to its own part"),
        ("  - {name: a, backendRef: {name: s, port: 80}, path: x}\n", "must start with /"),
        ("  - {name: a, backendRef: {name: s, port: 80}, path: /x}\n"
         "  - {name: a, backendRef: {name: s, port: 80}, path: /y}\n", "unique"),
    ],
)  # fmt: skip
def test_bad_aggregations_are_refused(tmp_path: Path, parts: str, message: str) -> None:
    text = config({"s": 1}, []) + ROUTE.format(name="agg", spec="  parts:\n" + parts)
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_snapshot([str(tmp_path / "c.yaml")], version=1, gateway_class="weft")
