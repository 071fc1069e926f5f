"""JWT providers with remote JWKS at the edge, against a real HTTPS JWKS endpoint: the
first fetch, a key rotation that fails no request, an attacker's random kids costing at
most one fetch, the last good keys kept through an outage, an untrusted endpoint, and
authorization rules on the verified claims (403)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from sidecar.filters.jwks import trust_context
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.jwks_server import JwksServer
from tests.support.tokens import EC, OTHER, RSA, jwk, token

POLICY = """---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: jwt}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  jwt:
    providers:
    - name: idp
      issuer: https://idp.example
      audiences: [api]
      remoteJWKS: {{uri: "{uri}", cacheDuration: {cache}}}
{extra}"""
SCOPES = """  authorization:
    defaultAction: Deny
    rules:
    - name: writers
      action: Allow
      principal: {jwt: {provider: idp, scopes: ["orders:write"]}}
"""


def _jwks(*pairs: tuple[object, str]) -> str:
    return json.dumps({"keys": [jwk(k, kid) for k, kid in pairs]})


def _bearer(t: str) -> dict[str, str]:
    return {"authorization": f"Bearer {t}"}


async def test_rotation_outage_and_random_kids(tmp_path: Path) -> None:
    with JwksServer(tmp_path, _jwks((RSA, "k1"))) as idp, EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")])
        text += POLICY.format(uri=idp.uri, cache="1h", extra="")
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text,
                                          trust=trust_context(str(idp.ca_file)))  # fmt: skip
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                # requests before the first answer wait for it
                first = await http.get("/", headers=_bearer(token(kid="k1")))
                assert first.status_code == 200 and idp.fetches == 1
                # the provider rotates to k2: the first k2 token waits for one refetch
                idp.set(_jwks((RSA, "k1"), (EC, "k2")))
                rotated = await http.get("/", headers=_bearer(token(EC, "ES256", kid="k2")))
                assert rotated.status_code == 200 and idp.fetches == 2
                # kids nobody published: answered 401, and no further fetch within 10 s
                for i in range(20):
                    r = await http.get("/", headers=_bearer(token(OTHER, kid=f"x{i}")))
                    assert r.status_code == 401
                assert idp.fetches == 2
                # a token signed by a key not in the set, under a known kid: 401
                forged = await http.get("/", headers=_bearer(token(OTHER, kid="k1")))
                assert forged.status_code == 401
                # the endpoint goes down: the cached keys keep working
                idp.set(status=503)
                await edge.jwks_state.start(next(iter(edge.jwks_state.cells.values()))).wait()
                down = await http.get("/", headers=_bearer(token(EC, "ES256", kid="k2")))
                metrics = (await http.get(f"http://127.0.0.1:{edge.admin_bound_port}/metrics")).text
            nursery.cancel_scope.cancel()
    assert down.status_code == 200
    series = f'weft_jwks_fetches_total{{uri="{idp.uri}",result='
    assert f'{series}"failure"}} 1' in metrics and f'{series}"success"}} 2' in metrics
    assert len(api.received) == 3  # nothing refused reached the backend


async def test_untrusted_endpoint_and_claim_authorization(tmp_path: Path) -> None:
    with JwksServer(tmp_path, _jwks((RSA, "k1"))) as idp, EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")])
        text += POLICY.format(uri=idp.uri, cache="1h", extra=SCOPES)
        async with trio.open_nursery() as nursery:
            # the system's CAs do not know the endpoint's: no keys, every token refused
            edge, port = await start_edge(nursery, tmp_path / "a.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                untrusted = await http.get("/", headers=_bearer(token(kid="k1")))
            cell = next(iter(edge.jwks_state.cells.values()))
            assert "CERTIFICATE_VERIFY_FAILED" in cell.error and idp.fetches == 0
            # trusted: scopes decide between 403 and 200
            _, port = await start_edge(nursery, tmp_path / "b.yaml", text,
                                       trust=trust_context(str(idp.ca_file)))  # fmt: skip
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                reader = await http.get("/", headers=_bearer(token(kid="k1", scope="orders:read")))
                writer = await http.get(
                    "/", headers=_bearer(token(kid="k1", scope="orders:read orders:write"))
                )
                anonymous = await http.get("/")
            nursery.cancel_scope.cancel()
    assert untrusted.status_code == 401
    assert reader.status_code == 403 and writer.status_code == 200 and anonymous.status_code == 401
    assert len(api.received) == 1
