"""Route filters at the edge, with real clients over HTTP/1.1 and HTTP/2: CORS preflights
answered without reaching the backend, CORS fields on forwarded answers (the backend's own
replaced), and bad filter configuration refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from sidecar.config.dump import describe
from sidecar.config.loader import load_snapshot
from sidecar.errors import ConfigError
from sidecar.filters.apikey import ApiKeyFilter
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.h2raw import RawH2, get

CORS = """    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://app.example.com", "https://*.example.org"]
        allowMethods: [GET, POST]
        allowHeaders: [x-token]
        exposeHeaders: [x-request-id]
        allowCredentials: true
        maxAge: 600
"""


async def test_cors_over_http1_and_http2(tmp_path: Path) -> None:
    with EchoServer("api") as api:
        async with trio.open_nursery() as nursery:
            text = config({"api": api.port}, [("api", "/", "api")], extra=CORS)
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                preflight = await http.options("/items", headers={
                    "Origin": "https://a.b.example.org", "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "X-Token"})  # fmt: skip
                refused = await http.options("/items", headers={
                    "Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"})  # fmt: skip
                actual = await http.get("/items", headers={
                    "Origin": "https://app.example.com",
                    "X-Echo-Set-Header": "Access-Control-Allow-Origin:*"})  # fmt: skip
                other = await http.get("/items", headers={"Origin": "https://evil.example.com"})
            h2 = await RawH2.connect(port)
            sid = await h2.request([*get(b"/items", b"gw", b"OPTIONS"),
                                    (b"origin", b"https://app.example.com"),
                                    (b"access-control-request-method", b"GET")])  # fmt: skip
            ok = await h2.request([*get(b"/items", b"gw"), (b"origin", b"https://app.example.com")])
            h2_pre, h2_ok = await h2.wait(sid, ok)
            await h2.aclose()
            nursery.cancel_scope.cancel()
    assert preflight.status_code == 204 and preflight.content == b""
    assert preflight.headers["access-control-allow-origin"] == "https://a.b.example.org"
    assert preflight.headers["access-control-allow-methods"] == "GET, POST"
    assert preflight.headers["access-control-allow-headers"] == "x-token"
    assert preflight.headers["access-control-max-age"] == "600"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "content-length" not in preflight.headers  # a 204 has none
    assert refused.status_code == 403 and "access-control-allow-origin" not in refused.headers
    assert actual.status_code == 200
    assert actual.headers.get_list("access-control-allow-origin") == ["https://app.example.com"]
    assert actual.headers["access-control-expose-headers"] == "x-request-id"
    assert actual.headers["vary"] == "origin"
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    # the preflights never reached the backend; the two GETs did
    assert [r["method"] for r in api.received] == ["GET", "GET", "GET"]
    h2_fields = dict(h2_pre.headers)
    assert (
        h2_pre.status == 204
        and h2_fields[b"access-control-allow-origin"] == b"https://app.example.com"
    )
    assert dict(h2_ok.headers)[b"access-control-allow-origin"] == b"https://app.example.com"


@pytest.mark.parametrize(
    ("cors", "message"),
    [('allowOrigins: ["app.example.com"]', "allowOrigins[0]"),
     ("allowOrigins: []", "allowOrigins: must name at least one origin"),
     ('allowOrigins: ["*"]\n        allowMethods: ["GET POST"]', "allowMethods[0]"),
     ('allowOrigins: ["*"]\n        maxAge: -1', "maxAge: must be between 0 and 86400"),
     ('allowOrigins: ["*"]\n        allowOrigin: ["x"]', "allowOrigin: unknown field")],
)  # fmt: skip
def test_bad_cors_is_refused_naming_the_field(tmp_path: Path, cors: str, message: str) -> None:
    extra = f"    filters:\n    - type: CORS\n      cors:\n        {cors}\n"
    path = tmp_path / "c.yaml"
    path.write_text(config({"api": 1}, [("api", "/", "api")], extra=extra))
    with pytest.raises(ConfigError) as info:
        load_snapshot([str(path)], version=1, gateway_class="weft")
    assert message in str(info.value)


SECURITY = """---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: {name}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: {kind}, name: {target}}}]
  authorization:
    defaultAction: {default}
    rules: [{{name: r, action: {action}, principal: {{clientCIDRs: ["{cidr}"]}}}}]
"""


async def test_client_address_rules_with_policy_attachment(tmp_path: Path) -> None:
    """The Gateway's policy denies loopback; route `open` has its own policy allowing it,
    which replaces the Gateway's for that route."""
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("open", "/open", "api"), ("shut", "/shut", "api")])
        text += SECURITY.format(name="gw", kind="Gateway", target="edge", default="Allow",
                                action="Deny", cidr="127.0.0.0/8")  # fmt: skip
        text += SECURITY.format(name="open", kind="HTTPRoute", target="open", default="Deny",
                                action="Allow", cidr="127.0.0.1/32")  # fmt: skip
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                opened = await http.get("/open/x")
                shut = await http.post("/shut/x", content=b"x" * 1000)
                after = await http.get("/open/y")  # the connection survives a refusal
            h2 = await RawH2.connect(port)
            (h2_shut,) = await h2.wait(await h2.request(get(b"/shut/z", b"gw")))
            await h2.aclose()
            metrics = edge.metrics.render()
            nursery.cancel_scope.cancel()
    assert opened.status_code == 200 and after.status_code == 200
    assert shut.status_code == 403 and shut.text == "forbidden\n"
    assert h2_shut.status == 403
    assert [r["path"] for r in api.received] == ["/open/x", "/open/y"]  # nothing denied got in
    assert 'route="default/shut",code_class="4xx",code="403"} 2' in metrics


RATE = """---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: per-user}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  rateLimit:
    type: Local
    local:
      rules:
      - clientSelectors: [{{headers: [{{name: x-user, type: Distinct}}]}}]
        limit: {{requests: {n}, unit: Hour}}
"""


async def test_a_local_rate_limit_per_user_survives_a_reload(tmp_path: Path) -> None:
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")]) + RATE.format(n=3)
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                alice = [await http.get("/", headers={"x-user": "alice"}) for _ in range(4)]
                bob = await http.get("/", headers={"x-user": "bob"})
                anonymous = [await http.get("/") for _ in range(5)]  # not counted
                (tmp_path / "c.yaml").write_text(text + "# touched\n")
                assert edge.reload()
                again = await http.get("/", headers={"x-user": "alice"})  # still spent
                (tmp_path / "c.yaml").write_text(
                    config({"api": api.port}, [("api", "/", "api")]) + RATE.format(n=5)
                )
                assert edge.reload()
                raised = await http.get("/", headers={"x-user": "alice"})  # a new limit
            metrics = edge.metrics.render()
            nursery.cancel_scope.cancel()
    assert [r.status_code for r in alice] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in alice] == ["2", "1", "0", "0"]
    assert alice[0].headers["ratelimit-limit"] == "3"
    assert int(alice[3].headers["retry-after"]) == 1200  # an hour / 3
    assert alice[3].text == "too many requests\n"
    assert bob.status_code == 200 and all(r.status_code == 200 for r in anonymous)
    assert "ratelimit-limit" not in anonymous[0].headers
    assert again.status_code == 429 and raised.status_code == 200
    assert len([r for r in api.received if r["headers"].get("x-user") == ["alice"]]) == 4
    assert 'route="default/api",code_class="4xx",code="429"} 2' in metrics


KEYS = """---
apiVersion: v1
kind: Secret
metadata: {{name: api-keys}}
type: Opaque
stringData: {{alice: key-of-alice}}
data: {{bob: {bob}}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: keys}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  apiKeyAuth:
    credentialRefs: [{{name: api-keys}}]
    extractFrom: [{{headers: [x-api-key]}}, {{params: [api_key]}}]
    forwardClientIDHeader: x-client-id
    sanitize: true
---
apiVersion: weft.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: per-client}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  rateLimit:
    local:
      rules:
      - clientSelectors: [{{headers: [{{name: x-client-id, type: Distinct}}]}}]
        limit: {{requests: 2, unit: Hour}}
"""


async def test_api_keys_name_the_client_for_the_backend_and_the_rate_limit(tmp_path: Path) -> None:
    import base64

    bob = base64.b64encode(b"key-of-bob").decode()
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")]) + KEYS.format(bob=bob)
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                none = await http.get("/")
                wrong = await http.get("/", headers={"x-api-key": "key-of-mallory"})
                forged = await http.get("/", headers={"x-client-id": "alice"})
                alice = [await http.get("/a", headers={"x-api-key": "key-of-alice",
                                                       "x-client-id": "bob"}) for _ in range(3)]  # fmt: skip
                by_param = await http.get("/b?api_key=key-of-bob&x=1")
            nursery.cancel_scope.cancel()
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("API-Key")
    assert wrong.status_code == 401 and wrong.text == "invalid API key\n"
    assert forged.status_code == 401  # naming a client is not a key
    assert [r.status_code for r in alice] == [200, 200, 429]  # counted as alice, not bob
    assert by_param.status_code == 200
    seen = [r["headers"] for r in api.received]
    assert [h["x-client-id"] for h in seen] == [["alice"], ["alice"], ["bob"]]
    assert all("x-api-key" not in h for h in seen)  # sanitized
    assert edge.snapshot is not None
    (router,) = edge.snapshot.routers.values()
    match = router.route("x", "/", "GET", [], "")
    assert match is not None
    (keys,) = [f for f in match.action.filters if isinstance(f, ApiKeyFilter)]
    assert sorted(keys.clients.values()) == ["alice", "bob"]
    assert all(len(k) == 32 and b"key-of" not in k for k in keys.clients)  # digests only
    dump = json.dumps(describe(edge.snapshot))  # what /config_dump shows: no key
    assert "key-of" not in dump
    assert "api keys: 2 client(s), read from x-api-key, api_key" in dump
    assert "rate limit default/per-client: 2/3600s" in dump


def _htpasswd() -> str:
    """What `htpasswd -B` (bcrypt, $2y$) and `htpasswd -s` ({SHA}) write."""
    import base64
    import hashlib

    import bcrypt

    carol = bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(rounds=6)).decode().replace("$2b$", "$2y$", 1)
    dave = "{SHA}" + base64.b64encode(hashlib.sha1(b"dave-pw").digest()).decode()
    return f"carol:{carol}\ndave:{dave}\nerin:$apr1$abc$def\n"


BASIC = """---
apiVersion: v1
kind: Secret
metadata: {{name: users}}
stringData:
  .htpasswd: {htpasswd}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: basic}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]
  basicAuth:
    users: {{name: users}}
    forwardUsernameHeader: x-user
"""


async def test_basic_auth_with_bcrypt_and_sha_entries(tmp_path: Path) -> None:
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")])
        text += BASIC.format(htpasswd=json.dumps(_htpasswd()))
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                anonymous = await http.get("/")
                carol = [await http.get("/", auth=("carol", "carol-pw")) for _ in range(2)]
                dave = await http.get("/", auth=("dave", "dave-pw"), headers={"x-user": "root"})
                wrong = await http.get("/", auth=("carol", "guess"))
                apr1 = await http.get("/", auth=("erin", "x"))
                garbage = await http.get("/", headers={"authorization": "Basic !!!"})
            nursery.cancel_scope.cancel()
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="default/basic"'
    assert [r.status_code for r in carol] == [200, 200] and dave.status_code == 200
    assert wrong.status_code == apr1.status_code == garbage.status_code == 401
    assert [r["headers"]["x-user"] for r in api.received] == [["carol"], ["carol"], ["dave"]]
    assert edge.snapshot is not None
    assert any("users erin have a hash kind" in w for w in edge.snapshot.warnings)


async def test_x_forwarded_for_counts_only_behind_trusted_proxies(tmp_path: Path) -> None:
    from sidecar.config.model import Limits

    deny = SECURITY.format(name="deny", kind="Gateway", target="edge", default="Allow",
                           action="Deny", cidr="198.51.100.0/24")  # fmt: skip
    got = {}
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")]) + deny
        for hops in (0, 1):
            async with trio.open_nursery() as nursery:
                _, port = await start_edge(nursery, tmp_path / f"c{hops}.yaml", text,
                                           limits=Limits(trusted_hops=hops))  # fmt: skip
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    got[hops] = [
                        (await http.get("/", headers={"x-forwarded-for": xff})).status_code
                        for xff in ("198.51.100.7", "203.0.113.9", "198.51.100.7, 203.0.113.9")
                    ]
                nursery.cancel_scope.cancel()
    assert got[0] == [200, 200, 200]  # anyone can write the header: not believed
    assert got[1] == [403, 200, 200]  # one proxy in front: its entry is the client


async def test_jwt_at_the_edge(tmp_path: Path) -> None:
    from tests.support.tokens import JWKS, token

    policy = f"""---
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
      localJWKS: {{type: Inline, inline: {json.dumps(JWKS)}}}
      claimToHeaders: [{{header: x-sub, claim: sub}}]
"""
    with EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")]) + policy
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                ok = await http.get("/", headers={"authorization": f"Bearer {token()}"})
                none = await http.get("/")
                bad = await http.get("/", headers={"authorization": f"Bearer {token(aud='x')}"})
            h2 = await RawH2.connect(port)
            sid = await h2.request([*get(b"/", b"gw"),
                                    (b"authorization", f"Bearer {token()}".encode())])  # fmt: skip
            (h2_ok,) = await h2.wait(sid)
            await h2.aclose()
            nursery.cancel_scope.cancel()
    assert ok.status_code == 200 and h2_ok.status == 200
    assert none.status_code == 401 and bad.status_code == 401
    assert [r["headers"]["x-sub"] for r in api.received] == [["u-1"], ["u-1"]]
