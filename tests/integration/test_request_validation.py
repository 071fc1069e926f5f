"""Request validation at the edge (an HTTPRoute ExtensionRef to a RequestValidation),
with curl, httpx and raw HTTP/2 clients; what the backend received is asserted: only
requests that passed, with their bodies byte for byte."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.echo import EchoServer
from tests.support.edge import config, raw_exchange, start_edge
from tests.support.h2raw import RawH2, get

ROUTE_FILTER = """    filters:
    - type: ExtensionRef
      extensionRef: {group: weft.dev, kind: RequestValidation, name: orders}
"""
VALIDATION = """---
apiVersion: weft.dev/v1alpha1
kind: RequestValidation
metadata: {name: orders}
spec:
  methods: [GET, POST]
  requiredHeaders: [x-tenant]
  maxBodyBytes: 4096
  jsonSchema:
    type: object
    required: [item, qty]
    properties:
      item: {type: string}
      qty: {type: integer, minimum: 1}
      notes: {type: string}
"""
JSON = {"content-type": "application/json", "x-tenant": "t1"}


async def test_methods_headers_size_and_schema(tmp_path: Path) -> None:
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")], extra=ROUTE_FILTER) + VALIDATION
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                wrong_method = await http.delete("/orders", headers=JSON)
                no_tenant = await http.get("/orders")
                get_ok = await http.get("/orders", headers={"x-tenant": "t1"})
                valid = await http.post("/orders", json={"item": "tea", "qty": 2},
                                        headers={"x-tenant": "t1"})  # fmt: skip
                bad_qty = await http.post("/orders", json={"item": "tea", "qty": 0},
                                          headers={"x-tenant": "t1"})  # fmt: skip
                not_json = await http.post("/orders", content=b"{oops", headers=JSON)
                no_body = await http.post("/orders", headers=JSON)
                text_body = await http.post("/orders", content=b"item=tea",
                                            headers={"x-tenant": "t1", "content-type": "text/plain"})  # fmt: skip
                too_big = await http.post(
                    "/orders", content=b"{" + b" " * 5000 + b"}", headers=JSON
                )

                async def chunks() -> object:  # a chunked body: no length to judge up front
                    yield b'{"item": "tea", '
                    yield b'"qty": 3}'

                chunked = await http.post("/orders", content=chunks(), headers=JSON)
            deep = await raw_exchange(port, b"POST /orders HTTP/1.1\r\nHost: h\r\nx-tenant: t1\r\n"
                                      b"content-type: application/json\r\ncontent-length: 4000\r\n\r\n"
                                      + b"[" * 2000 + b"]" * 2000, until_close=False)  # fmt: skip
            nursery.cancel_scope.cancel()
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET, POST"
    assert no_tenant.status_code == 400 and no_tenant.text == "missing required header x-tenant\n"
    assert get_ok.status_code == 200 and valid.status_code == 200 and chunked.status_code == 200
    assert bad_qty.status_code == 400
    assert bad_qty.json()["path"] == "$.qty" and "minimum" in bad_qty.json()["message"]
    assert not_json.status_code == 400 and not_json.json()["error"] == "the body is not JSON"
    assert no_body.status_code == 400 and text_body.status_code == 415
    assert too_big.status_code == 413
    assert deep.startswith(b"HTTP/1.1 400")  # nesting deeper than the parser goes: refused
    sent = json.dumps({"item": "tea", "qty": 2}, separators=(",", ":")).encode()
    got = [(r["method"], r["path"], r["body_sha256"]) for r in api.received]
    assert got == [
        ("GET", "/orders", hashlib.sha256(b"").hexdigest()),
        ("POST", "/orders", hashlib.sha256(sent).hexdigest()),
        ("POST", "/orders", hashlib.sha256(b'{"item": "tea", "qty": 3}').hexdigest()),
    ]
    assert edge.snapshot is not None
    (router,) = edge.snapshot.routers.values()
    match = router.route("h", "/orders", "GET", [], "")
    assert match is not None
    (validation,) = match.action.filters
    assert validation.describe() == ("request validation default/orders: methods GET, POST; "
                                     "required x-tenant; body up to 4096 bytes; JSON Schema")  # fmt: skip


async def test_http2_and_a_body_that_outgrows_the_limit_while_streaming(tmp_path: Path) -> None:
    size_only = VALIDATION.split("  jsonSchema:", maxsplit=1)[0]
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")], extra=ROUTE_FILTER) + VALIDATION
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            h2 = await RawH2.connect(port)
            head = [*get(b"/orders", b"gw", b"POST"), (b"content-type", b"application/json"),
                    (b"x-tenant", b"t1")]  # fmt: skip
            ok = await h2.request(head, b'{"item": "tea", "qty": 1}')
            bad = await h2.request(head, b'{"item": 7, "qty": 1}')
            big = await h2.request(head, b"[" + b"0," * 3000 + b"0]")
            answers = await h2.wait(ok, bad, big)
            await h2.aclose()
            nursery.cancel_scope.cancel()
        # size only (no schema): the body streams to the backend until it passes the limit
        text = config({"api": api.port}, [("api", "/", "api")], extra=ROUTE_FILTER) + size_only
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "d.yaml", text)
            chunked = b"POST /orders HTTP/1.1\r\nHost: h\r\nx-tenant: t1\r\n"
            chunked += b"transfer-encoding: chunked\r\n\r\n"
            chunked += (b"400\r\n" + b"a" * 1024 + b"\r\n") * 5 + b"0\r\n\r\n"
            streamed = await raw_exchange(port, chunked)
            nursery.cancel_scope.cancel()
    assert [a.status for a in answers] == [200, 400, 413]
    assert json.loads(answers[1].body)["path"] == "$.item"
    assert streamed.startswith(b"HTTP/1.1 413")
    assert len(api.received) == 1  # the valid HTTP/2 request; nothing of the others


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_expect_100_continue_with_a_schema(tmp_path: Path) -> None:
    body = json.dumps({"item": "tea", "qty": 1, "notes": "x" * 2000}).encode()
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")], extra=ROUTE_FILTER) + VALIDATION
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            (tmp_path / "body.json").write_bytes(body)
            done = await trio.to_thread.run_sync(lambda: subprocess.run(
                ["curl", "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}", "-H", "x-tenant: t1",
                 "-H", "Expect: 100-continue",
                 "-H", "content-type: application/json", "--data-binary", f"@{tmp_path / 'body.json'}",
                 f"http://127.0.0.1:{port}/orders"], check=False, capture_output=True, timeout=30))  # fmt: skip
            nursery.cancel_scope.cancel()
    assert done.stdout == b"200", done.stderr
    assert b"Expect: 100-continue" in done.stderr and b"HTTP/1.1 100" in done.stderr
    assert api.received[0]["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_bad_validation_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    from sidecar.config.loader import load_snapshot
    from sidecar.errors import ConfigError

    cases = {
        "  jsonSchema: {type: objekt}\n": "jsonSchema: is not a valid schema",
        "  jsonSchema: {$ref: 'https://example.com/s.json'}\n": "only references within the schema",
        "  methods: [get]\n": "methods[0]: 'get' is not valid",
        "  {}\n": "checks nothing",
    }
    for spec, message in cases.items():
        doc = VALIDATION.split("spec:", maxsplit=1)[0] + "spec:\n" + spec
        path = tmp_path / "v.yaml"
        path.write_text(config({"api": 1}, [("api", "/", "api")], extra=ROUTE_FILTER) + doc)
        with pytest.raises(ConfigError) as info:
            load_snapshot([str(path)], version=1, gateway_class="weft")
        assert message in str(info.value), (spec, str(info.value))
    # a missing target: the rule answers 500 rather than skipping the filter
    path.write_text(config({"api": 1}, [("api", "/", "api")], extra=ROUTE_FILTER))
    snap = load_snapshot([str(path)], version=1, gateway_class="weft")
    assert any("RequestValidation default/orders not found; its rules answer 500" in w
               for w in snap.warnings)  # fmt: skip
