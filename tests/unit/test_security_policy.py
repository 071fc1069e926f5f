"""SecurityPolicy: parsing (both apiVersions, unimplemented sections refused by name),
which policy applies to a route rule (attachment precedence), and client-address rules."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sidecar.config.loader import load_snapshot
from sidecar.config.resources import Authorization, AuthzRule, ClaimMatch, JwtPrincipal
from sidecar.config.snapshot import Snapshot
from sidecar.errors import ConfigError
from sidecar.filters.authorization import AuthorizationFilter
from sidecar.filters.chain import Exchange
from sidecar.filters.cors import CorsFilter
from tests.support.edge import config

POLICY = """---
apiVersion: {api}
kind: SecurityPolicy
metadata: {{name: {name}, creationTimestamp: "2026-01-0{day}T00:00:00Z"}}
spec:
  targetRefs: [{target}]
{body}"""
DENY_ALL = "  authorization: {defaultAction: Deny}\n"
ALLOW_LOCAL = (
    "  authorization:\n    defaultAction: Deny\n"
    "    rules: [{name: local, action: Allow, principal: {clientCIDRs: [127.0.0.0/8]}}]\n"
)
CORS = '  cors: {allowOrigins: ["https://app.example.com"], maxAge: 10m}\n'
ROUTES = config({"a": 1, "b": 2}, [("a", "/a", "a"), ("b", "/b", "b")])


def _policy(name: str, target: str, body: str, day: int = 1, api: str = "weft.dev/v1alpha1") -> str:
    return POLICY.format(api=api, name=name, target=target, body=body, day=day)


def _load(tmp_path: Path, *docs: str) -> Snapshot:
    path = tmp_path / "c.yaml"
    path.write_text(ROUTES + "".join(docs))
    return load_snapshot([str(path)], version=1, gateway_class="weft")


def _filters(snap: Snapshot, path: str) -> list[object]:
    (router,) = snap.routers.values()
    match = router.route("any.host", path, "GET", [], "")
    assert match is not None
    return list(match.action.filters)


GW = "{group: gateway.networking.k8s.io, kind: Gateway, name: edge}"
GW_LISTENER = "{group: gateway.networking.k8s.io, kind: Gateway, name: edge, sectionName: http}"
ROUTE_A = "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: a}"


def test_the_most_specific_target_wins_whole(tmp_path: Path) -> None:
    snap = _load(
        tmp_path,
        _policy("gw", GW, DENY_ALL + CORS, day=1),
        _policy("route", ROUTE_A, ALLOW_LOCAL, day=2, api="gateway.envoyproxy.io/v1alpha1"),
    )
    a, b = _filters(snap, "/a"), _filters(snap, "/b")
    assert [type(f) for f in a] == [
        AuthorizationFilter
    ]  # the route's policy, without the Gateway's CORS
    assert isinstance(a[0], AuthorizationFilter) and a[0].allows(_x("127.0.0.1"))
    assert [type(f) for f in b] == [CorsFilter, AuthorizationFilter]  # the Gateway's, whole
    assert isinstance(b[1], AuthorizationFilter) and not b[1].allows(_x("127.0.0.1"))
    assert isinstance(b[0], CorsFilter) and b[0].policy.max_age_s == 600
    # a listener beats the Gateway; among equals the oldest wins
    snap = _load(tmp_path, _policy("gw", GW, DENY_ALL, day=1),
                 _policy("lst", GW_LISTENER, ALLOW_LOCAL, day=3),
                 _policy("lst2", GW_LISTENER, DENY_ALL, day=4))  # fmt: skip
    (ip,) = _filters(snap, "/b")
    assert isinstance(ip, AuthorizationFilter) and ip.allows(_x("127.0.0.1"))
    assert _filters(_load(tmp_path), "/a") == []  # no policy: no filter


@pytest.mark.parametrize(
    ("body", "message"),
    [("  jwt: {providers: []}\n", "spec.jwt.providers: must have at least one provider"),
     ("  jwt: {providers: [{name: p, remoteJWKS: {uri: 'https://[GET, POST]/k'}}]}\n",
      "must be an https:// URL"),  # a bracketed host urlsplit refuses (found by make fuzz)
     ("  oidc: {provider: {}}\n", "spec.oidc: is not supported yet"),
     ("  apiKeyAuth: {credentialRefs: [{name: k}], extractFrom: [{headers: [x-k]}], "
      "forwardClientIDHeader: X-Request-Id}\n",
      "forwardClientIDHeader: X-Request-Id is a field the proxy writes itself"),
     ("  basicAuth: {users: {name: u}, forwardUsernameHeader: x_forwarded_for}\n",
      "x_forwarded_for is a field the proxy writes itself"),
     ("  extAuth: {http: {backendRefs: [{name: a, port: 80}], headersToBackend: [traceparent]}}\n",
      "headersToBackend[0]: traceparent is a field the proxy writes itself"),
     ("  extAuth: {http: {backendRefs: [{name: a, port: 80}]}, grpc: {}}\n",
      "spec.extAuth.http: give one of http and grpc"),
     ("  extAuth: {http: {backendRefs: []}}\n", "must name exactly one backend"),
     ("  extAuth: {grpc: {backendRefs: [{name: a, port: 80}]}, bodyToExtAuth: {}}\n",
      "spec.extAuth.bodyToExtAuth: is not supported yet"),
     ("  extAuth: {grpc: {backendRefs: [{name: a, port: 80}]}, recomputeRoute: true}\n",
      "recomputeRoute: is not supported"),
     ("  extAuth: {http: {backendRefs: [{name: a, port: 80}], path: 'x y'}}\n",
      "path: must be a path starting with /"),
     ("  authorization:\n    rules: [{action: Allow, principal: {clientCIDRs: [10.0.0.300/8]}}]\n",
      "clientCIDRs[0]: is not a CIDR"),
     ("  authorization:\n    rules: [{action: Allow, principal: {jwt: {provider: p, scopes: [a]}}}]\n",
      "principal.jwt.provider: names no provider of this policy's jwt (none"),
     ("  authorization:\n    rules: [{action: Allow, principal: {}}]\n",
      "a principal needs clientCIDRs, jwt or headers"),
     ("  authorization: {defaultAction: Maybe}\n", "defaultAction: must be one of Allow, Deny"),
     ("", "sets nothing Weft enforces")],
)  # fmt: skip
def test_what_is_not_enforced_is_refused_by_name(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _policy("p", GW, body, api="gateway.envoyproxy.io/v1alpha1"))
    assert message in str(info.value)


def _x(
    client: str,
    jwt: tuple[str, dict[str, object]] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> Exchange:
    x = Exchange("GET", "h", "/", "", headers or [], client)
    x.jwt = jwt
    return x


def _rule(name: str, action: str, *cidrs: str, **kw: object) -> AuthzRule:
    return AuthzRule(
        name=name, action=action, cidrs=tuple(ipaddress.ip_network(c) for c in cidrs), **kw
    )  # type: ignore[arg-type]


def test_client_address_rules() -> None:
    f = AuthorizationFilter(Authorization(default_action="Allow", rules=(
        _rule("office", "Allow", "10.1.0.0/16"),
        _rule("rest-of-10", "Deny", "10.0.0.0/8"),
        _rule("v6", "Deny", "2001:db8::/32"),
    )))  # fmt: skip
    assert f.allows(_x("10.1.2.3"))  # the first matching rule decides
    assert not f.allows(_x("10.2.0.1"))
    assert not f.allows(_x("::ffff:10.2.0.1"))  # an IPv4 client on a dual-stack socket
    assert not f.allows(_x("2001:db8::1")) and f.allows(_x("2001:db9::1"))
    assert f.allows(_x("192.0.2.1"))  # the default
    deny = AuthorizationFilter(Authorization("Deny", ()))
    assert not deny.allows(_x("192.0.2.1"))
    assert not deny.allows(_x("-"))  # no address


def test_jwt_claim_scope_and_header_rules() -> None:
    admins = JwtPrincipal("idp", scopes=frozenset({"orders:write"}), claims=(
        ClaimMatch(("org", "team"), frozenset({"payments"})),
        ClaimMatch(("roles",), frozenset({"admin", "ops"}), array=True),
    ))  # fmt: skip
    f = AuthorizationFilter(Authorization(default_action="Deny", rules=(
        _rule("blocked", "Deny", "192.0.2.0/24"),
        _rule("admins", "Allow", jwt=admins),
        _rule("probe", "Allow", "127.0.0.0/8", headers=((b"x-probe", frozenset({b"yes"})),)),
    )))  # fmt: skip
    good = {"scope": "orders:read orders:write", "org": {"team": "payments"},
            "roles": ["dev", "ops"]}  # fmt: skip
    assert f.allows(_x("10.0.0.1", ("idp", good)))
    assert not f.allows(_x("192.0.2.9", ("idp", good)))  # an earlier Deny rule decides
    assert not f.allows(_x("10.0.0.1", ("other", good)))  # another provider's token
    assert not f.allows(_x("10.0.0.1"))  # no verified token
    for changed in ({"scope": "orders:read"}, {"org": {"team": "web"}}, {"org": "payments"},
                    {"roles": ["dev"]}, {"roles": "ops"}):  # fmt: skip
        assert not f.allows(_x("10.0.0.1", ("idp", good | changed))), changed
    assert f.allows(_x("10.0.0.1", ("idp", good | {"scope": None, "scp": ["orders:write"]})))
    # every part of a principal must match: the header alone is not enough
    assert f.allows(_x("127.0.0.1", headers=[(b"X-Probe", b"yes")]))
    assert not f.allows(_x("127.0.0.1", headers=[(b"x-probe", b"no")]))
    assert not f.allows(_x("10.0.0.1", headers=[(b"x-probe", b"yes")]))


API_KEYS = """  apiKeyAuth:
    credentialRefs: [{name: keys}]
    extractFrom: [{cookies: [session-key]}]
"""
SECRET = """---
apiVersion: v1
kind: Secret
metadata: {name: keys}
stringData: {carol: k-carol}
"""


def test_api_keys_from_cookies_and_a_missing_secret_closes_the_route(tmp_path: Path) -> None:
    from sidecar.filters.apikey import ApiKeyFilter
    from sidecar.filters.chain import Exchange

    def ask(f: object, cookie: str) -> int:
        assert isinstance(f, ApiKeyFilter)
        x = Exchange("GET", "h", "/", "", [(b"cookie", cookie.encode())], "10.0.0.1")
        reply = f.on_request(x)
        return reply.status if reply is not None else 200

    snap = _load(tmp_path, SECRET, _policy("k", GW, API_KEYS))
    (f,) = _filters(snap, "/a")
    assert ask(f, "a=b; session-key=k-carol") == 200
    assert ask(f, "session-key=k-dave") == 401 and ask(f, "other=k-carol") == 401
    closed = _load(tmp_path, _policy("k", GW, API_KEYS))  # the Secret is missing
    assert any("Secret default/keys not found" in w for w in closed.warnings)
    (g,) = _filters(closed, "/a")
    assert ask(g, "session-key=k-carol") == 401


@pytest.mark.parametrize(
    ("body", "message"),
    [("  apiKeyAuth: {credentialRefs: [{name: k}]}\n", "apiKeyAuth.extractFrom: must name"),
     ("  apiKeyAuth: {extractFrom: [{headers: [x-k]}]}\n", "credentialRefs: must name"),
     ("  apiKeyAuth:\n    credentialRefs: [{name: k, namespace: other}]\n"
      "    extractFrom: [{headers: [x-k]}]\n", "namespace: must be the policy's own")],
)  # fmt: skip
def test_bad_api_key_settings(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, _policy("p", GW, body))
    assert message in str(info.value)


def test_the_client_behind_trusted_proxies() -> None:
    from sidecar.filters.chain import client_address

    xff = b"198.51.100.7, 10.0.0.2"  # the client, then the proxy in front of ours
    assert client_address("10.0.0.3", xff, 0) == "10.0.0.3"  # not believed by default
    assert client_address("10.0.0.3", xff, 1) == "10.0.0.2"
    assert client_address("10.0.0.3", xff, 2) == "198.51.100.7"
    assert client_address("10.0.0.3", xff, 3) == "10.0.0.3"  # too few entries: ignored
    assert client_address("10.0.0.3", b"", 2) == "10.0.0.3"


def test_secret_keys_and_user_names_cannot_carry_control_characters(tmp_path: Path) -> None:
    from sidecar.filters.basic import parse_htpasswd

    bad = '---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData: {"a\\r\\nx-admin: 1": k}\n'
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, bad)
    assert "use letters, digits" in str(info.value)
    users, skipped = parse_htpasswd(b"ok:{SHA}x\nbad\x01user:{SHA}y\n")
    assert list(users) == ["ok"] and skipped == ["'bad\\x01user'"]


def test_an_unresolved_ext_auth_backend_is_a_warning_and_fails_closed(tmp_path: Path) -> None:
    from sidecar.filters.ext_auth import ExtAuthFilter

    body = "  extAuth: {http: {backendRefs: [{name: nowhere, port: 80}]}}\n"
    snap = _load(tmp_path, _policy("ext", ROUTE_A, body))
    (f,) = _filters(snap, "/a")
    assert isinstance(f, ExtAuthFilter) and f.cluster is None and not f.auth.fail_open
    assert any("extAuth: Service default/nowhere not found; its checks fail" in w
               for w in snap.warnings)  # fmt: skip


def test_a_sidecar_refuses_the_edges_policies(tmp_path: Path) -> None:
    from sidecar.modes.edge import EDGE_ONLY

    path = tmp_path / "c.yaml"
    path.write_text(ROUTES + _policy("p", ROUTE_A, DENY_ALL))
    with pytest.raises(
        ConfigError, match="SecurityPolicy default/p: is enforced by an edge gateway"
    ):
        load_snapshot([str(path)], version=1, gateway_class="weft", refused=EDGE_ONLY)
