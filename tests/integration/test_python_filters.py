"""Filters written in Python, as users write them (examples/filters/): loaded from their
files with a validated configuration, run on the routes that name them, reloaded when the
file changes; a filter that raises answers 500 for that request only, and is counted."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from pathlib import Path

import httpx
import pytest
import trio

from sidecar.config.loader import load_snapshot
from sidecar.errors import ConfigError
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "filters"
ROUTE = """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [{host}]
  rules:
  - filters: [{{type: ExtensionRef, extensionRef: {{group: weft.dev, kind: PythonFilter, name: {name}}}}}]
    backendRefs: [{{name: app, port: 80}}]
---
apiVersion: weft.dev/v1alpha1
kind: PythonFilter
metadata: {{name: {name}}}
spec:
  file: {file}
  class: {cls}
  config: {config}
"""

FLAKY = """
class Flaky:
    def __init__(self, config):
        self.calls = 0
    def on_request(self, request):
        self.calls += 1
        if request.path == "/boom":
            raise RuntimeError("the filter's own bug")
        if request.path == "/crlf":
            request.set_header("x-evil", "a\\r\\nx-injected: 1")
        if request.path == "/bad-answer":
            return 42
        request.set_header("x-calls", str(self.calls))
"""

ASYNC = """
import trio
from sidecar.filters.python import Reply

class Waits:
    def __init__(self, config):
        self.value = config["value"]
    async def on_request(self, request):
        await trio.sleep(0)
        if request.header("x-stop"):
            return Reply(429, "slow down\\n")
        request.set_header("x-async", self.value)
"""


def _files(tmp: Path, app_port: int) -> str:
    for name in ("signer.py", "tenant_router.py"):
        shutil.copy(EXAMPLES / name, tmp / name)
    (tmp / "flaky.py").write_text(FLAKY)
    (tmp / "waits.py").write_text(ASYNC)
    text = config({"app": app_port}, [])
    text += ROUTE.format(
        name="signer",
        host="sign.example",
        file="signer.py",
        cls="HeaderSigner",
        config="{key: 'sixteen-bytes-key', header: x-sig}",
    )
    text += ROUTE.format(
        name="tenants",
        host="'*.api.example'",
        file="tenant_router.py",
        cls="TenantRouter",
        config="{tenants: {acme: eu-1}}",
    )
    text += ROUTE.format(
        name="flaky", host="flaky.example", file="flaky.py", cls="Flaky", config="{}"
    )
    text += ROUTE.format(
        name="waits", host="async.example", file="waits.py", cls="Waits", config="{value: 'yes'}"
    )
    return text  # fmt: skip


async def test_user_filters_on_their_routes(tmp_path: Path) -> None:
    with EchoServer("app") as app:
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", _files(tmp_path, app.port))
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=10) as http:

                async def get(host: str, path: str = "/", **headers: str) -> httpx.Response:
                    fields = {k.replace("_", "-"): v for k, v in headers.items()}
                    return await http.get(url + path, headers={"Host": host, **fields})

                seen = (await get("sign.example", "/orders")).json()["headers"]
                stamp, sig = seen["x-sig"][0].split(",")
                want = hmac.new(b"sixteen-bytes-key", f"GET\n/orders\n{stamp[2:]}".encode(),
                                hashlib.sha256).hexdigest()  # fmt: skip
                assert sig == f"v1={want}"  # the upstream can check it
                ok = await get("acme.api.example")
                assert ok.json()["headers"]["x-tenant-region"] == ["eu-1"]
                assert ok.headers["x-served-tenant"] == "acme"
                refused = await get("initech.api.example")
                assert refused.status_code == 403 and "unknown tenant 'initech'" in refused.text
                assert (await get("async.example")).json()["headers"]["x-async"] == ["yes"]
                assert (await get("async.example", x_stop="1")).status_code == 429
                # a filter's failures: 500 for that request, counted, the next one fine
                assert (await get("flaky.example", "/boom")).status_code == 500
                assert (await get("flaky.example", "/bad-answer")).status_code == 500
                assert (await get("flaky.example", "/crlf")).status_code == 500  # not forwarded
                assert not any("x-injected" in r["headers"] for r in app.received)
                fine = await get("flaky.example", "/ok")
                assert fine.status_code == 200 and fine.json()["headers"]["x-calls"] == ["4"]
                metrics = (await http.get(f"http://127.0.0.1:{edge.admin_bound_port}/metrics")).text
                assert 'weft_filter_errors_total{filter="default/flaky"} 3' in metrics
                # an edit of the filter's file is a reload, like an edit of the configuration
                (tmp_path / "flaky.py").write_text(FLAKY.replace('"x-calls"', '"x-edited"'))
                assert tmp_path.joinpath("flaky.py").as_posix() in edge.snapshot.sources
                assert edge.reload(), edge.last_error
                assert "x-edited" in (await get("flaky.example", "/ok")).json()["headers"]
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("cls", "cfg", "code", "message"),
    [
        ("HeaderSigner", "{key: short}", None, "config key: 'short' is too short"),
        ("HeaderSigner", "{key: 'sixteen-bytes-key', extra: 1}", None, "Additional properties"),
        ("Missing", "{}", None, "has no class Missing"),
        ("Broken", "{}", "class Broken(:\n", "SyntaxError"),
        ("Raises", "{}", "class Raises:\n    def __init__(self, c): raise KeyError('k')\n",
         "KeyError"),
    ],
)  # fmt: skip
def test_a_filter_that_cannot_load_refuses_the_configuration(
    tmp_path: Path, cls: str, cfg: str, code: str | None, message: str
) -> None:
    if code is None:
        shutil.copy(EXAMPLES / "signer.py", tmp_path / "f.py")
    else:
        (tmp_path / "f.py").write_text(code)
    path = tmp_path / "c.yaml"
    path.write_text(config({"app": 1}, []) + ROUTE.format(
        name="f", host="f.example", file="f.py", cls=cls, config=cfg))  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        load_snapshot([str(path)], version=1, gateway_class="weft")


async def test_a_filter_attached_by_its_target_refs(tmp_path: Path) -> None:
    """Named in a policy instead of a route's ExtensionRef: every rule of the routes it
    targets runs it."""
    with EchoServer("app") as app:
        text = config({"app": app.port}, [("plain", "/", "app")])
        text += f"""---
apiVersion: weft.dev/v1alpha1
kind: PythonFilter
metadata: {{name: sign-all}}
spec:
  file: {EXAMPLES / "signer.py"}
  class: HeaderSigner
  config: {{key: 'sixteen-bytes-key'}}
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: plain}}]
"""
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(timeout=10) as http:
                seen = (await http.get(f"http://127.0.0.1:{port}/x")).json()["headers"]
            nursery.cancel_scope.cancel()
    assert seen["x-gateway-signature"][0].startswith("t=")


RESHAPER = """
class Reshaper:
    def __init__(self, config):
        self.seen = 0
    def on_request(self, request):
        return None
    async def on_response(self, response):
        if response.header("x-echo-fail") or response.status == 418:
            raise RuntimeError("the hook's own bug")
        response.set_header("x-upstream-status", str(response.status))
        response.remove_header("server")
        if response.status == 201:
            response.status = 202
        if response.status == 404:
            response.status = 204  # a bodyless status for an answer with a body: refused
    def on_response_body(self, chunk, end):
        if b"explode" in chunk:
            raise ValueError("cannot read this")
        self.seen += len(chunk)
        return chunk.upper() + (b"\\n-- %d bytes" % self.seen if end else b"")
"""


async def test_response_hooks_edit_the_answer_and_its_body(tmp_path: Path) -> None:
    (tmp_path / "reshaper.py").write_text(RESHAPER)
    with EchoServer("app") as app:
        text = config({"app": app.port}, []) + ROUTE.format(
            name="reshape", host="reshape.example", file="reshaper.py", cls="Reshaper",
            config="{}")  # fmt: skip
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=10, headers={"Host": "reshape.example"}) as http:
                ok = await http.get(url + "/status/201/hello")
                assert ok.status_code == 202 and ok.headers["x-upstream-status"] == "201"
                assert "server" not in ok.headers
                body, _, tail = ok.content.partition(b"\n-- ")
                assert json.loads(body.lower())["path"] == "/status/201/hello"
                assert tail == b"%d bytes" % len(body)  # every chunk went through the hook
                failed = await http.get(url + "/x", headers={"x-echo-set-header": "x-echo-fail: 1"})
                assert failed.status_code == 500 and "x-echo-fail" not in failed.headers
                assert (await http.get(url + "/status/404/x")).status_code == 500
                with pytest.raises(httpx.RemoteProtocolError):  # cut, never passed on unread
                    await http.get(url + "/explode")
                again = await http.get(url + "/after")  # the next request is fine
                assert again.status_code == 200
            metrics = edge.metrics.counters[("weft_filter_errors_total",
                                             (("filter", "default/reshape"),))]  # fmt: skip
            assert metrics == 3
            nursery.cancel_scope.cancel()
