"""Transformations at the edge (weft.dev Transform): what the upstream (EchoServer, which
reports what it received) sees and what the client (httpx) gets back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
import trio

from sidecar.config.loader import load_snapshot
from sidecar.errors import ConfigError
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge

ROUTE = """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [{name}.example]
  rules:
  - filters: [{{type: ExtensionRef, extensionRef: {{group: weft.dev, kind: Transform, name: {name}}}}}]
    backendRefs: [{{name: app, port: 80}}]
---
apiVersion: weft.dev/v1alpha1
kind: Transform
metadata: {{name: {name}}}
spec:
{spec}"""

ORDERS = """  pathTemplate: /orders/{id}/items/{item}
  request:
    headers:
      set:
      - {name: x-order, value: "order-${path.id}"}
      - {name: x-item, value: "${path.item}"}
      - {name: x-page, value: "${query.page}"}
      - {name: x-from, value: "${client} via ${header.user-agent}"}
      - {name: x-missing, value: "${header.x-absent}"}
      remove: [x-debug]
    query:
      set: [{name: v, value: "2"}, {name: page, value: "p${query.page}"}]
      remove: [debug]
    json:
      maxBytes: 1000
      set: [{path: $.meta.source, value: edge}, {path: '$.items[0].qty', value: 3}]
      remove: [$.internal]
      rename: [{from: $.userName, to: $.user_name}]
  response:
    headers:
      set: [{name: x-served-order, value: "${path.id}"}]
      remove: [server]
    json:
      maxBytes: 4000
      remove: [$.headers]
      rename: [{from: $.pod, to: $.instance}]
      set: [{path: $.edge, value: true}]
"""

MAINTENANCE = """  localResponse:
    status: 503
    body: "down for maintenance\\n"
    headers: [{name: retry-after, value: "120"}]
"""

ERRORS = """  localResponse:
    status: 502
    body: '{"error": "the shop is having a moment"}'
    headers: [{name: content-type, value: application/json}]
    onStatus: [500, 503]
"""


async def test_requests_and_answers_reshaped(tmp_path: Path) -> None:
    with EchoServer("app") as app:
        text = config({"app": app.port}, [])
        text += ROUTE.format(name="orders", spec=ORDERS)
        text += ROUTE.format(name="maintenance", spec=MAINTENANCE)
        text += ROUTE.format(name="errors", spec=ERRORS)
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                body = {"userName": "ada", "internal": {"cost": 1}, "items": [{"sku": "a"}]}
                got = await http.post(
                    "/orders/42/items/7?debug=1&page=3&keep=x%20y",
                    headers={"Host": "orders.example", "x-debug": "1", "user-agent": "ua/1"},
                    json=body,
                )
                assert got.status_code == 200, got.text
                answer = got.json()
                seen = app.received[-1]
                assert seen["path"] == "/orders/42/items/7?keep=x%20y&v=2&page=p3"
                h = seen["headers"]
                assert h["x-order"] == ["order-42"] and h["x-item"] == ["7"]
                assert h["x-page"] == ["3"] and h["x-from"] == ["127.0.0.1 via ua/1"]
                assert "x-missing" not in h and "x-debug" not in h
                want = {"items": [{"sku": "a", "qty": 3}], "user_name": "ada",
                        "meta": {"source": "edge"}}  # fmt: skip
                edited = json.dumps(want, separators=(",", ":")).encode()
                assert seen["body_sha256"] == hashlib.sha256(edited).hexdigest()
                assert seen["body_length"] == len(edited)
                # the answer: EchoServer's report, edited
                assert "headers" not in answer and answer["instance"] == "app"
                assert answer["edge"] is True and "pod" not in answer
                assert got.headers["x-served-order"] == "42" and "server" not in got.headers
                assert int(got.headers["content-length"]) == len(got.content)

                # Not JSON: the request is refused; a body over maxBytes too.
                bad = await http.post("/orders/1/items/2", headers={"Host": "orders.example",
                                      "content-type": "application/json"}, content=b"{nope")  # fmt: skip
                assert bad.status_code == 400
                big = await http.post("/orders/1/items/2", headers={"Host": "orders.example"},
                                      json={"pad": "x" * 2000})  # fmt: skip
                assert big.status_code == 413
                # An answer over its maxBytes never leaks unedited.
                huge = await http.get("/orders/1/items/2", headers={"Host": "orders.example",
                                      "x-pad": "y" * 5000})  # fmt: skip
                assert huge.status_code == 502 and "y" * 100 not in huge.text
                # Not JSON: streamed through untouched.
                raw = await http.get("/bytes/70000", headers={"Host": "orders.example"})
                assert raw.status_code == 200 and raw.content == bytes(70000)

                down = await http.get("/anything", headers={"Host": "maintenance.example"})
                assert down.status_code == 503 and down.text == "down for maintenance\n"
                assert down.headers["retry-after"] == "120"

                fine = await http.get("/x", headers={"Host": "errors.example"})
                assert fine.status_code == 200 and fine.json()["path"] == "/x"
                broken = await http.get("/status/503/x", headers={"Host": "errors.example"})
                assert broken.status_code == 502
                assert broken.json() == {"error": "the shop is having a moment"}
            paths = [r["path"] for r in app.received]
            assert "/anything" not in paths  # maintenance answers without the upstream
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("  request: {headers: {set: [{name: x, value: '${nope}'}]}}\n", "unknown"),
        ("  request: {headers: {set: [{name: x, value: '${path.id}'}]}}\n", "pathTemplate"),
        ("  request: {headers: {set: [{name: host, value: a}]}}\n", "written by the proxy"),
        ("  request: {json: {remove: ['$..a']}}\n", "is not a JSON path"),
        ("  request: {headers: {set: [{name: x, value: '${header}'}]}}\n", "needs a name"),
        ("  pathTemplate: /a/{id}/{id}\n  localResponse: {status: 503}\n", "appears twice"),
        ("  pathTemplate: /a\n", "changes nothing"),
    ],
)
def test_bad_transforms_are_refused(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "c.yaml").write_text(config({"app": 1}, []) + ROUTE.format(name="t", spec=spec))
    with pytest.raises(ConfigError, match=message):
        load_snapshot([str(tmp_path / "c.yaml")], version=1, gateway_class="weft")


async def test_a_rule_can_use_several_extension_filters(tmp_path: Path) -> None:
    """Gateway API lets ExtensionRef repeat on a rule: a Transform beside a RequestValidation."""
    text = (
        config({"app": 1}, [])
        + ROUTE.format(name="t", spec=MAINTENANCE).replace(
            "Transform, name: t}}]",
            "Transform, name: t}}, {type: ExtensionRef, extensionRef: "
            "{group: weft.dev, kind: RequestValidation, name: v}}]",
        )
        + """---
apiVersion: weft.dev/v1alpha1
kind: RequestValidation
metadata: {name: v}
spec: {methods: [GET]}
"""
    )
    (tmp_path / "c.yaml").write_text(text)
    snapshot = load_snapshot([str(tmp_path / "c.yaml")], version=1, gateway_class="weft")
    router = next(iter(snapshot.routers.values()))
    match = router.route("t.example", "/", "GET", [], "")
    assert match is not None
    assert [type(f).__name__ for f in match.action.filters] == ["TransformFilter",
                                                                "ValidationFilter"]  # fmt: skip


async def test_templates_read_the_claims_a_security_policy_verified(tmp_path: Path) -> None:
    """${jwt.CLAIM} in a Transform: the route's SecurityPolicy verifies the token first."""
    from tests.support.tokens import JWKS, token

    spec = """  request:
    headers:
      set: [{name: x-user, value: "user ${jwt.sub} of ${jwt.tenant}"}]
"""
    policy = f"""---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: jwt}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: claims}}]
  jwt:
    providers:
    - name: idp
      issuer: https://idp.example
      audiences: [api]
      localJWKS: {{type: Inline, inline: {json.dumps(JWKS)}}}
"""
    with EchoServer("app") as app:
        text = config({"app": app.port}, []) + ROUTE.format(name="claims", spec=spec) + policy
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                signed = {"authorization": f"Bearer {token(tenant='acme')}",
                          "Host": "claims.example"}  # fmt: skip
                ok = await http.get("/", headers=signed)
                refused = await http.get("/", headers={"Host": "claims.example"})
            nursery.cancel_scope.cancel()
    assert ok.status_code == 200 and refused.status_code == 401
    assert ok.json()["headers"]["x-user"] == ["user u-1 of acme"]
