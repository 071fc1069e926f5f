"""SecurityPolicy (weft.dev/v1alpha1, and Envoy Gateway's gateway.envoyproxy.io/v1alpha1
for the fields Weft implements): targets, CORS, authentication (JWT, basic auth, API keys)
and authorization on client addresses, JWT claims and headers.

Field names are Envoy Gateway's, so a policy moves between the two by its apiVersion. What
Weft does not implement yet is refused by name, never ignored: a policy that silently
dropped its `jwt` section would leave an API open.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, overload
from urllib.parse import urlsplit

from sidecar.config.headerops import HOP_WRITTEN, field_key
from sidecar.config.parse_routes import parse_cors
from sidecar.config.reader import NAME_RE, Reader
from sidecar.config.resources import (
    GATEWAY_GROUP,
    ApiKeyAuth,
    Authorization,
    AuthzRule,
    BasicAuth,
    ClaimMatch,
    ExtAuth,
    JwtAuth,
    JwtPrincipal,
    Meta,
    PolicyTarget,
    SecurityPolicy,
)
from sidecar.filters.jwks import DEFAULT_CACHE_S, RemoteJwks

if TYPE_CHECKING:  # PyJWT and cryptography load only where a policy checks JWTs
    import jwt

_TARGET_KINDS = ("Gateway", "HTTPRoute", "GRPCRoute")
_NOT_YET = ("oidc",)
_SUPPORTED = "supported: cors, authorization, apiKeyAuth, basicAuth, jwt, extAuth"


def parse_security_policy(top: Reader, meta: Meta) -> SecurityPolicy:
    spec = top.req_obj("spec")
    targets = parse_targets(spec)
    for key in _NOT_YET:
        if spec.has(key):
            spec.fail(key, f"is not supported yet ({_SUPPORTED})")
    cors = None
    if (cr := spec.obj("cors")) is not None:
        cors = parse_cors(cr, max_age=_max_age)
    api_keys = None
    if (kr := spec.obj("apiKeyAuth")) is not None:
        api_keys = _api_keys(kr)
    basic = None
    if (br := spec.obj("basicAuth")) is not None:
        basic = _basic(br)
    ext_auth = _ext_auth(er) if (er := spec.obj("extAuth")) is not None else None
    jwt = None
    if (jr := spec.obj("jwt")) is not None:
        jwt = _jwt(jr)
    authorization = None
    if (ar := spec.obj("authorization")) is not None:
        names = tuple(p.name for p in jwt.providers) if jwt is not None else ()
        authorization = _authorization(ar, names)
    spec.finish()
    if not any((cors, authorization, api_keys, basic, jwt, ext_auth)):
        top.fail("spec", f"sets nothing Weft enforces ({_SUPPORTED})")
    return SecurityPolicy(
        meta=meta, targets=targets, cors=cors, authorization=authorization, api_keys=api_keys,
        basic=basic, jwt=jwt, ext_auth=ext_auth,
    )  # fmt: skip


def _jwt(r: Reader) -> JwtAuth:
    from sidecar.filters.jwt_auth import Provider, TokenSource, load_jwks

    providers = []
    for pr in r.objs("providers", max_items=16):
        name = pr.text("name", pattern=NAME_RE)
        keys: list[jwt.PyJWK] = []
        remote = None
        if (rr := pr.obj("remoteJWKS")) is not None:
            if pr.has("localJWKS"):
                pr.fail("localJWKS", "and remoteJWKS: give one of them")
            remote = _remote_jwks(rr)
        else:
            lr = pr.req_obj("localJWKS")
            lr.text("type", "Inline", choices=("Inline",))
            try:
                keys = load_jwks(lr.text("inline", max_len=1 << 20))
            except ValueError as exc:
                lr.fail("inline", str(exc))
            lr.finish()
        source = TokenSource()
        if (er := pr.obj("extractFrom")) is not None:
            headers = []
            for hr in er.objs("headers", max_items=8):
                headers.append((hr.text("name", pattern=_FIELD_RE).lower().encode(),
                                hr.text("valuePrefix", "")))  # fmt: skip
                hr.finish()
            cookies = er.str_list("cookies", pattern=_FIELD_RE)
            params = er.str_list("params", pattern=_FIELD_RE)
            source = TokenSource(headers=tuple(headers), cookies=tuple(cookies),
                                 params=tuple(params))  # fmt: skip
            er.finish()
        claims = []
        for cr in pr.objs("claimToHeaders", max_items=16):
            header = _writable(cr, "header", cr.text("header", pattern=_FIELD_RE))
            claims.append((header.lower().encode(), cr.text("claim", max_len=256)))
            cr.finish()
        providers.append(Provider(
            name=name, keys=tuple(keys), issuer=pr.text("issuer", None, max_len=1024),
            audiences=tuple(pr.str_list("audiences")), source=source,
            claim_to_headers=tuple(claims), remote=remote,
        ))  # fmt: skip
        pr.finish()
    if not providers:
        r.fail("providers", "must have at least one provider")
    r.finish()
    return JwtAuth(providers=tuple(providers))


def _remote_jwks(r: Reader) -> RemoteJwks:
    from sidecar.config.parse_routes import DURATION_RE, duration_s

    uri = r.text("uri", max_len=2048)
    try:
        parts = urlsplit(uri)
        scheme, hostname = parts.scheme, parts.hostname
    except ValueError:  # a bracketed host that is not an address, a bad port...
        scheme, hostname = "", None
    if scheme != "https" or not hostname:
        r.fail("uri", f"must be an https:// URL (keys are fetched over TLS); got {uri!r}")
    cache = r.text("cacheDuration", None, pattern=DURATION_RE)
    cache_s = duration_s(cache) if cache is not None else DEFAULT_CACHE_S
    if not 1.0 <= cache_s <= 86400.0:
        r.fail("cacheDuration", "must be from 1s to 24h")
    r.finish()
    return RemoteJwks(uri, cache_s)


def _ext_auth(r: Reader) -> ExtAuth:
    from sidecar.config.parse_routes import DURATION_RE, backend_object_ref, duration_s

    http, grpc = r.obj("http"), r.obj("grpc")
    if (http is None) == (grpc is None):
        r.fail("http", "give one of http and grpc")
    service = http or grpc
    assert service is not None
    refs = [backend_object_ref(br, finish=True) for br in service.objs("backendRefs", max_items=1)]
    if (single := service.obj("backendRef")) is not None:
        refs.append(backend_object_ref(single, finish=True))
    if len(refs) != 1:
        service.fail("backendRefs", "must name exactly one backend (a Service and port)")
    path = ""
    to_backend: list[str] = []
    if http is not None:
        path = http.text("path", "", max_len=1024)
        if path and (not path.startswith("/") or not path.isprintable() or " " in path):
            http.fail("path", f"must be a path starting with /; got {path!r}")
        to_backend = http.str_list("headersToBackend", pattern=_FIELD_RE)
        for i, name in enumerate(to_backend):
            _writable(http, f"headersToBackend[{i}]", name)
    service.finish()
    to_auth = r.str_list("headersToExtAuth", pattern=_FIELD_RE)
    if r.has("bodyToExtAuth"):
        r.fail("bodyToExtAuth", "is not supported yet (the request body is not sent)")
    timeout = r.text("timeout", "10s", pattern=DURATION_RE)
    timeout_s = duration_s(timeout)
    if not 0.001 <= timeout_s <= 60.0:
        r.fail("timeout", "must be from 1ms to 60s")
    fail_open = r.flag("failOpen", False)
    if r.flag("recomputeRoute", False):
        r.fail("recomputeRoute", "is not supported (the route is chosen before the check)")
    r.finish()
    return ExtAuth(
        backend=refs[0], grpc=grpc is not None, path=path.rstrip("/"),
        headers_to_backend=tuple(h.lower().encode() for h in to_backend),
        headers_to_ext_auth=tuple(h.lower().encode() for h in to_auth),
        fail_open=fail_open, timeout_s=timeout_s,
    )  # fmt: skip


def _basic(r: Reader) -> BasicAuth:
    ur = r.req_obj("users")
    ur.text("group", "", choices=("",))
    ur.text("kind", "Secret", choices=("Secret",))
    name = ur.text("name", pattern=NAME_RE)
    if ur.has("namespace"):
        ur.fail("namespace", "must be the policy's own (a Secret of another namespace is not read)")
    ur.finish()
    forward = _writable(r, "forwardUsernameHeader",
                        r.text("forwardUsernameHeader", None, pattern=_FIELD_RE))  # fmt: skip
    r.finish()
    return BasicAuth(secret=name, forward_username=forward.lower() if forward else None)


def _api_keys(r: Reader) -> ApiKeyAuth:
    secrets = []
    for cr in r.objs("credentialRefs", max_items=16):
        cr.text("group", "", choices=("",))
        cr.text("kind", "Secret", choices=("Secret",))
        secrets.append(cr.text("name", pattern=NAME_RE))
        if cr.has("namespace"):
            cr.fail("namespace", "must be the policy's own (a Secret of another namespace "
                    "is not read)")  # fmt: skip
        cr.finish()
    if not secrets:
        r.fail("credentialRefs", "must name at least one Secret")
    headers: list[str] = []
    params: list[str] = []
    cookies: list[str] = []
    for er in r.objs("extractFrom", max_items=8):
        headers += er.str_list("headers", pattern=_FIELD_RE)
        params += er.str_list("params", pattern=_FIELD_RE)
        cookies += er.str_list("cookies", pattern=_FIELD_RE)
        er.finish()
    if not (headers or params or cookies):
        r.fail("extractFrom", "must name a header, param or cookie to read the key from")
    forward = _writable(r, "forwardClientIDHeader",
                        r.text("forwardClientIDHeader", None, pattern=_FIELD_RE))  # fmt: skip
    sanitize = r.flag("sanitize", False)
    for name in headers if sanitize else ():  # sanitize drops them
        _writable(r, "extractFrom", name)
    r.finish()
    return ApiKeyAuth(
        secrets=tuple(secrets), headers=tuple(h.lower() for h in headers), params=tuple(params),
        cookies=tuple(cookies), forward_client_id=forward.lower() if forward else None,
        sanitize=sanitize,
    )  # fmt: skip


_FIELD_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")


@overload
def _writable(r: Reader, key: str, name: str) -> str: ...
@overload
def _writable(r: Reader, key: str, name: None) -> None: ...
def _writable(r: Reader, key: str, name: str | None) -> str | None:
    """`name`, if a filter may set or drop that field (not one the proxy writes itself)."""
    if name is not None and field_key(name.encode()) in HOP_WRITTEN:
        r.fail(key, f"{name} is a field the proxy writes itself; a filter cannot set or drop it")
    return name


def parse_targets(spec: Reader) -> tuple[PolicyTarget, ...]:
    readers = list(spec.objs("targetRefs", max_items=16))
    if (single := spec.obj("targetRef")) is not None:
        readers.append(single)
    if not readers:
        spec.fail("targetRefs", "is required (a Gateway, HTTPRoute or GRPCRoute)")
    out = []
    for tr in readers:
        kind = tr.text("kind", choices=_TARGET_KINDS)
        tr.text("group", GATEWAY_GROUP, choices=(GATEWAY_GROUP,))
        name = tr.text("name", pattern=NAME_RE)
        section = tr.text("sectionName", None, pattern=NAME_RE)
        out.append(PolicyTarget(kind=kind, name=name, section_name=section))
        tr.finish()
    return tuple(out)


def _max_age(r: Reader, key: str, default: int) -> int:
    """Envoy Gateway's `maxAge`: a duration ("10m")."""
    from sidecar.config.parse_routes import DURATION_RE, duration_s

    text = r.text(key, None, pattern=DURATION_RE)
    return default if text is None else int(duration_s(text))


def _authorization(r: Reader, providers: tuple[str, ...]) -> Authorization:
    default = r.text("defaultAction", "Deny", choices=("Allow", "Deny"))
    rules = []
    for i, rr in enumerate(r.objs("rules", max_items=256)):
        action = rr.text("action", choices=("Allow", "Deny"))
        pr = rr.req_obj("principal")
        cidrs = []
        for j, text in enumerate(pr.str_list("clientCIDRs")):
            try:
                cidrs.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                pr.fail(f"clientCIDRs[{j}]", f"is not a CIDR: {text!r}")
        jwt = _jwt_principal(jr, providers) if (jr := pr.obj("jwt")) is not None else None
        headers = []
        for hr in pr.objs("headers", max_items=16):
            name = hr.text("name", pattern=_FIELD_RE).lower().encode()
            values = frozenset(v.encode() for v in hr.str_list("values", max_len=1024))
            if not values:
                hr.fail("values", "must list at least one value")
            headers.append((name, values))
            hr.finish()
        if not (cidrs or jwt or headers):
            pr.fail("clientCIDRs", "a principal needs clientCIDRs, jwt or headers")
        pr.finish()
        rules.append(AuthzRule(
            name=rr.text("name", f"rule {i}"), action=action, cidrs=tuple(cidrs), jwt=jwt,
            headers=tuple(headers),
        ))  # fmt: skip
        rr.finish()
    r.finish()
    return Authorization(default_action=default, rules=tuple(rules))


def _jwt_principal(r: Reader, providers: tuple[str, ...]) -> JwtPrincipal:
    provider = r.text("provider", pattern=NAME_RE)
    if provider not in providers:
        known = ", ".join(providers) or "none: the policy has no jwt section"
        r.fail("provider", f"names no provider of this policy's jwt ({known})")
    scopes = frozenset(r.str_list("scopes", max_len=256))
    claims = []
    for cr in r.objs("claims", max_items=16):
        name = cr.text("name", max_len=256)
        path = tuple(name.split("."))
        if not all(path):
            cr.fail("name", f"is not a claim name or dotted path: {name!r}")
        kind = cr.text("valueType", "String", choices=("String", "StringArray"))
        values = frozenset(cr.str_list("values", max_len=1024))
        if not values:
            cr.fail("values", "must list at least one value")
        claims.append(ClaimMatch(path=path, values=values, array=kind == "StringArray"))
        cr.finish()
    if not (scopes or claims):
        r.fail("provider", "a jwt principal needs scopes or claims to match")
    r.finish()
    return JwtPrincipal(provider=provider, scopes=scopes, claims=tuple(claims))
