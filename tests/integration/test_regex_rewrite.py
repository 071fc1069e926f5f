"""URLRewrite and RequestRedirect with `ReplaceRegexMatch` (Envoy Gateway's extension of
Gateway API's path modifiers): the first match of a regex replaced, `\\1` its groups."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from sidecar.config.loader import load_snapshot
from sidecar.errors import ConfigError
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge

REWRITE = """  rules:
  - matches: [{{path: {{type: RegularExpression, value: "/api/v[0-9]+/.*"}}}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        path:
          type: ReplaceRegexMatch
          replaceRegexMatch: {{pattern: '^/api/v([0-9]+)/(.*)', substitution: '/\\2/version-\\1'}}
    backendRefs: [{{name: app, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        statusCode: 301
        path: {{type: ReplaceRegexMatch, replaceRegexMatch: {{pattern: '^/old/(.*)', substitution: '/new/\\1'}}}}
"""


async def test_regex_rewrites_and_redirects(tmp_path: Path) -> None:
    with EchoServer("app") as app:
        text = config({"app": app.port}, [], port=80)
        text += "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
        text += "metadata: {name: r}\nspec:\n  parentRefs: [{name: edge}]\n"
        text += REWRITE.format()
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.get(f"http://127.0.0.1:{port}/api/v2/orders?x=1")
                assert r.json()["path"] == "/orders/version-2?x=1"
                r = await http.get(f"http://127.0.0.1:{port}/old/page")
                assert r.status_code == 301
                assert r.headers["location"].endswith("/new/page")
            nursery.cancel_scope.cancel()


def test_a_bad_pattern_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    bad = REWRITE.format().replace("^/api/v([0-9]+)/(.*)", "^/api/(")
    path.write_text(config({"app": 1}, [], port=80) + "---\napiVersion: "
                    "gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
                    "  parentRefs: [{name: edge}]\n" + bad)  # fmt: skip
    with pytest.raises(ConfigError, match="invalid regular expression"):
        load_snapshot([str(path)], version=1, gateway_class="weft")
