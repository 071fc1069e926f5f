"""Parsing and validation of the Gateway API routing kinds: Gateway, HTTPRoute, ReferenceGrant.

Rules follow the Gateway API CRD validation (OpenAPI and CEL) where it exists.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sidecar.config.parse_policy import parse_route_retry
from sidecar.config.reader import HOSTNAME_RE, NAME_RE, Reader
from sidecar.config.resources import (
    GATEWAY_GROUP,
    WEFT_GROUP,
    AllowedRoutes,
    BackendObjectRef,
    BackendRef,
    CorsPolicy,
    Gateway,
    HeaderModifier,
    HTTPRoute,
    LabelSelector,
    Listener,
    Meta,
    Mirror,
    ObjectRef,
    ParentRef,
    PathMatch,
    PathModifier,
    Redirect,
    ReferenceGrant,
    Rewrite,
    RouteFilter,
    RouteGroupKind,
    RouteMatch,
    RouteRule,
    StreamRoute,
    ValueMatch,
)

HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
HEADER_VALUE_RE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
DURATION_RE = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_DURATION_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
REDIRECT_CODES = (301, 302, 303, 307, 308)


def duration_s(text: str) -> float:
    """Seconds in a Gateway API Duration (GEP-2257), e.g. `1h30m`, `500ms`."""
    return sum(int(n) * _DURATION_UNIT_S[u] for n, u in _DURATION_PART.findall(text))


def parse_selector(r: Reader) -> LabelSelector:
    exprs = []
    for e in r.objs("matchExpressions"):
        op = e.text("operator", choices=("In", "NotIn", "Exists", "DoesNotExist"))
        values = tuple(e.str_list("values"))
        if op in ("In", "NotIn") and not values:
            e.fail("values", f"must not be empty for operator {op}")
        exprs.append((e.text("key"), op, values))
        e.finish()
    sel = LabelSelector(match_labels=r.str_map("matchLabels"), match_expressions=tuple(exprs))
    r.finish()
    return sel


def parse_gateway(top: Reader, meta: Meta) -> Gateway:
    spec = top.req_obj("spec")
    class_name = spec.text("gatewayClassName", None)
    listeners = []
    seen: set[str] = set()
    for lr in spec.objs("listeners", max_items=64):
        name = lr.text("name", pattern=NAME_RE)
        if name in seen:
            lr.fail("name", f"duplicate listener name {name!r}")
        seen.add(name)
        listeners.append(_listener(lr, name))
    if not listeners:
        spec.fail("listeners", "must have at least one listener")
    bind_address = None
    for ar in spec.objs("addresses", max_items=16):
        atype = ar.text("type", "IPAddress", max_len=253)
        if atype == "IPAddress":
            value = ar.text("value", max_len=64)
            if ":" not in value and not value.replace(".", "").isdigit():
                ar.fail("value", f"{value!r} is not an IP address")
            bind_address = bind_address or value
        else:
            ar.text("value")
        ar.finish()
    spec.ignore("infrastructure")
    spec.finish()
    return Gateway(
        meta=meta, class_name=class_name, listeners=tuple(listeners), bind_address=bind_address
    )


def _listener(lr: Reader, name: str) -> Listener:
    port = lr.integer("port", lo=1, hi=65535)
    protocol = lr.text("protocol", pattern=re.compile(r"^[A-Za-z0-9_./-]+$"))
    hostname = lr.text("hostname", None, pattern=HOSTNAME_RE)
    allowed = AllowedRoutes()
    ar = lr.obj("allowedRoutes")
    if ar is not None:
        ns_from, selector = "Same", None
        nr = ar.obj("namespaces")
        if nr is not None:
            ns_from = nr.text("from", "Same", choices=("All", "Same", "Selector"))
            sr = nr.obj("selector")
            selector = parse_selector(sr) if sr is not None else None
            if ns_from == "Selector" and selector is None:
                nr.fail("selector", "is required when from is Selector")
            nr.finish()
        kinds = []
        for kr in ar.objs("kinds", max_items=8):
            kinds.append(
                RouteGroupKind(group=kr.text("group", GATEWAY_GROUP), kind=kr.text("kind"))
            )
            kr.finish()
        ar.finish()
        allowed = AllowedRoutes(namespaces_from=ns_from, selector=selector, kinds=tuple(kinds))
    tls_mode, certs = None, []
    tr = lr.obj("tls")
    if tr is not None:
        tls_mode = tr.text("mode", "Terminate", choices=("Terminate", "Passthrough"))
        for cr in tr.objs("certificateRefs", max_items=64):
            certs.append(
                ObjectRef(
                    group=cr.text("group", ""),
                    kind=cr.text("kind", "Secret"),
                    name=cr.text("name"),
                    namespace=cr.text("namespace", None),
                )
            )
            cr.finish()
        tr.ignore("options", "frontendValidation")
        tr.finish()
    lr.finish()
    return Listener(
        name=name,
        port=port,
        protocol=protocol,
        hostname=hostname,
        allowed_routes=allowed,
        tls_mode=tls_mode,
        certificate_refs=tuple(certs),
    )


def parse_http_route(top: Reader, meta: Meta) -> HTTPRoute:
    spec = top.req_obj("spec")
    parents = _parent_refs(spec)
    hostnames = tuple(spec.str_list("hostnames", pattern=HOSTNAME_RE))
    rules = [_rule(rr) for rr in spec.objs("rules", max_items=64)] or [_DEFAULT_RULE]
    spec.finish()
    return HTTPRoute(meta=meta, parent_refs=parents, hostnames=hostnames, rules=tuple(rules))


# The CRDs default rules to one rule matching every request, with no backends.
_DEFAULT_RULE = RouteRule(
    name=None,
    matches=(RouteMatch(path=PathMatch(type="PathPrefix", value="/")),),
    filters=(),
    backend_refs=(),
)


def _parent_refs(spec: Reader) -> tuple[ParentRef, ...]:
    parents = []
    for pr in spec.objs("parentRefs", max_items=32):
        parents.append(
            ParentRef(
                group=pr.text("group", GATEWAY_GROUP),
                kind=pr.text("kind", "Gateway"),
                name=pr.text("name"),
                namespace=pr.text("namespace", None),
                section_name=pr.text("sectionName", None),
                port=pr.integer("port", None, lo=1, hi=65535),
            )
        )
        pr.finish()
    return tuple(parents)


# -- TCPRoute and TLSRoute ------------------------------------------------------------------
def parse_stream_route(top: Reader, meta: Meta, kind: str) -> StreamRoute:
    """TCPRoute / TLSRoute: one rule of weighted backends (more rules are refused, as
    their meaning is left to implementations)."""
    spec = top.req_obj("spec")
    parents = _parent_refs(spec)
    hostnames = tuple(spec.str_list("hostnames", pattern=HOSTNAME_RE)) if kind == "TLSRoute" else ()
    backends = []
    rules = list(spec.objs("rules", max_items=16))
    if len(rules) != 1:
        spec.fail("rules", f"a {kind} needs exactly one rule")
    rr = rules[0]
    rr.text("name", None, pattern=NAME_RE)
    for br in rr.objs("backendRefs", max_items=16):
        ref = backend_object_ref(br)
        if ref.port is None:
            br.fail("port", "is required")
        weight = br.integer("weight", 1, lo=0, hi=1_000_000)
        br.finish()
        backends.append(BackendRef(ref=ref, weight=weight))
    rr.finish()
    spec.finish()
    return StreamRoute(
        meta=meta, kind=kind, parent_refs=parents, hostnames=hostnames, backend_refs=tuple(backends)
    )


# -- GRPCRoute ------------------------------------------------------------------------------
_GRPC_SERVICE_RE = re.compile(r"^(?:[A-Za-z_][A-Za-z_0-9]*\.)*[A-Za-z_][A-Za-z_0-9]*$")
_GRPC_METHOD_RE = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")
_GRPC_FILTERS = ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror")


def parse_grpc_route(top: Reader, meta: Meta) -> HTTPRoute:
    """A GRPCRoute as the HTTPRoute it means: a gRPC method is the HTTP/2 path
    `/package.Service/Method`, so method matches become path matches."""
    spec = top.req_obj("spec")
    parents = _parent_refs(spec)
    hostnames = tuple(spec.str_list("hostnames", pattern=HOSTNAME_RE))
    rules = [_grpc_rule(rr) for rr in spec.objs("rules", max_items=16)] or [_DEFAULT_RULE]
    spec.finish()
    return HTTPRoute(
        meta=meta, parent_refs=parents, hostnames=hostnames, rules=tuple(rules), kind="GRPCRoute"
    )


def _grpc_rule(rr: Reader) -> RouteRule:
    name = rr.text("name", None, pattern=NAME_RE)
    matches = [_grpc_match(mr) for mr in rr.objs("matches", max_items=8)]
    filters = tuple(_filter(fr) for fr in rr.objs("filters", max_items=16))
    _check_filters(rr, "filters", filters)
    backends = _backend_refs(rr)
    for i, f in enumerate(filters):
        if f.redirect is not None or f.rewrite is not None:
            rr.fail(f"filters[{i}]", f"a GRPCRoute supports only {', '.join(_GRPC_FILTERS)}")
    if rr.has("sessionPersistence"):
        rr.fail("sessionPersistence", "is not supported yet")
    rr.finish()
    return RouteRule(
        name=name,
        matches=tuple(matches) or _DEFAULT_RULE.matches,
        filters=filters,
        backend_refs=tuple(backends),
    )


def _grpc_match(mr: Reader) -> RouteMatch:
    path = PathMatch(type="PathPrefix", value="/")
    m = mr.obj("method")
    if m is not None:
        mtype = m.text("type", "Exact", choices=("Exact", "RegularExpression"))
        exact = mtype == "Exact"
        service = m.text("service", None, max_len=1024, pattern=_GRPC_SERVICE_RE if exact else None)
        method = m.text("method", None, max_len=1024, pattern=_GRPC_METHOD_RE if exact else None)
        if service is None and method is None:
            m.fail(None, "needs a service, a method or both")
        if not exact:
            for key, value in (("service", service), ("method", method)):
                if value is not None:
                    _check_regex(m, key, value)
        m.finish()
        path = _grpc_path(exact, service, method)
    headers = _value_matches(mr, "headers", HEADER_NAME_RE)
    mr.finish()
    return RouteMatch(path=path, headers=headers)


def _grpc_path(exact: bool, service: str | None, method: str | None) -> PathMatch:
    if exact and service and method:
        return PathMatch(type="Exact", value=f"/{service}/{method}")
    if exact and service:
        return PathMatch(type="PathPrefix", value=f"/{service}")
    svc = (re.escape(service) if exact else f"(?:{service})") if service else "[^/]+"
    meth = (re.escape(method) if exact else f"(?:{method})") if method else "[^/]+"
    return PathMatch(type="RegularExpression", value=f"/{svc}/{meth}")


def _rule(rr: Reader) -> RouteRule:
    name = rr.text("name", None, pattern=NAME_RE)
    matches = [_match(mr) for mr in rr.objs("matches", max_items=64)]
    if not matches:
        matches = [RouteMatch(path=PathMatch(type="PathPrefix", value="/"))]
    filters = tuple(_filter(fr) for fr in rr.objs("filters", max_items=16))
    _check_filters(rr, "filters", filters)
    for f in filters:
        path = (f.rewrite.path if f.rewrite else None) or (f.redirect.path if f.redirect else None)
        if path is not None and path.type == "ReplacePrefixMatch":
            for m in matches:
                if m.path.type != "PathPrefix":
                    rr.fail("filters", "ReplacePrefixMatch needs every match to be a PathPrefix")
    backends = _backend_refs(rr)
    if any(f.redirect for f in filters) and backends:
        rr.fail("filters", "RequestRedirect cannot be combined with backendRefs")
    req_t = backend_t = None
    tr = rr.obj("timeouts")
    if tr is not None:
        req = tr.text("request", None, pattern=DURATION_RE)
        backend = tr.text("backendRequest", None, pattern=DURATION_RE)
        req_t = duration_s(req) if req else None
        backend_t = duration_s(backend) if backend else None
        if req_t and backend_t and backend_t > req_t:
            tr.fail("backendRequest", "must not be longer than request")
        tr.finish()
    retry = parse_route_retry(rt) if (rt := rr.obj("retry")) is not None else None
    if rr.has("sessionPersistence"):
        rr.fail("sessionPersistence", "is not supported yet")
    rr.finish()
    return RouteRule(
        name=name,
        matches=tuple(matches),
        filters=filters,
        backend_refs=tuple(backends),
        request_timeout_s=req_t or None,
        backend_request_timeout_s=backend_t or None,
        retry=retry,
    )


def _backend_refs(rr: Reader) -> list[BackendRef]:
    backends = []
    for br in rr.objs("backendRefs", max_items=16):
        ref = backend_object_ref(br)
        weight = br.integer("weight", 1, lo=0, hi=1_000_000)
        bfilters = tuple(_filter(fr) for fr in br.objs("filters", max_items=16))
        _check_filters(br, "filters", bfilters)
        br.finish()
        backends.append(BackendRef(ref=ref, weight=weight, filters=bfilters))
    return backends


def _match(mr: Reader) -> RouteMatch:
    path = PathMatch(type="PathPrefix", value="/")
    pr = mr.obj("path")
    if pr is not None:
        ptype = pr.text("type", "PathPrefix", choices=("Exact", "PathPrefix", "RegularExpression"))
        value = pr.text("value", "/", max_len=1024)
        if ptype == "RegularExpression":
            _check_regex(pr, "value", value)
        else:
            if not value.startswith("/"):
                pr.fail("value", "must be an absolute path starting with '/'")
            if "//" in value or "/./" in value or "/../" in value or "#" in value or "?" in value:
                pr.fail("value", f"{value!r} is not a normalized path")
        pr.finish()
        path = PathMatch(type=ptype, value=value)
    headers = _value_matches(mr, "headers", HEADER_NAME_RE)
    query = _value_matches(mr, "queryParams", re.compile(r"^[^\s&=]+$"))
    method = mr.text("method", None, choices=METHODS)
    mr.finish()
    return RouteMatch(path=path, headers=headers, query_params=query, method=method)


def _value_matches(mr: Reader, key: str, name_re: re.Pattern[str]) -> tuple[ValueMatch, ...]:
    out = []
    names: set[str] = set()
    for hr in mr.objs(key, max_items=16):
        mtype = hr.text("type", "Exact", choices=("Exact", "RegularExpression"))
        name = hr.text("name", pattern=name_re, max_len=256)
        value = hr.text("value", max_len=4096)
        if mtype == "RegularExpression":
            _check_regex(hr, "value", value)
        # Header names are case-insensitive; query parameter names are not.
        folded = name.lower() if key == "headers" else name
        if folded in names:
            hr.fail("name", f"duplicate match for {name!r}")
        names.add(folded)
        out.append(ValueMatch(type=mtype, name=folded, value=value))
        hr.finish()
    return tuple(out)


def _check_regex(r: Reader, key: str, value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        r.fail(key, f"invalid regular expression: {exc}")


# Fields a header modifier may not set or add: they decide where a message ends or what
# the connection carries, and are the proxy's to write.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                      "te", "trailer", "upgrade", "proxy-connection"})  # fmt: skip


def _header_modifier(r: Reader) -> HeaderModifier:
    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        names: set[str] = set()
        for hr in r.objs(key, max_items=16):
            name = hr.text("name", pattern=HEADER_NAME_RE, max_len=256)
            value = hr.text("value", max_len=4096, pattern=HEADER_VALUE_RE)
            if name.lower() in _FRAMING:
                hr.fail("name", f"{name} frames the message or the connection; the proxy "
                        "writes it, a filter cannot")  # fmt: skip
            if name.lower() in names:
                hr.fail("name", f"duplicate header {name!r}")
            names.add(name.lower())
            out.append((name, value))
            hr.finish()
        return tuple(out)

    mod = HeaderModifier(
        set=pairs("set"),
        add=pairs("add"),
        remove=tuple(n.lower() for n in r.str_list("remove", pattern=HEADER_NAME_RE)),
    )
    r.finish()
    return mod


def _path_modifier(r: Reader) -> PathModifier:
    ptype = r.text("type", choices=("ReplaceFullPath", "ReplacePrefixMatch", "ReplaceRegexMatch"))
    if ptype == "ReplaceRegexMatch":  # Envoy Gateway's extension: a regex and its substitution
        rr = r.req_obj("replaceRegexMatch")
        pattern = rr.text("pattern", max_len=1024)
        try:
            re.compile(pattern)
        except re.error as exc:
            rr.fail("pattern", f"invalid regular expression: {exc}")
        substitution = rr.text("substitution", max_len=1024)
        rr.finish()
        r.finish()
        return PathModifier(type=ptype, value=substitution, pattern=pattern)
    key = "replaceFullPath" if ptype == "ReplaceFullPath" else "replacePrefixMatch"
    value = r.text(key, max_len=1024)
    if not value.startswith("/"):
        r.fail(key, "must start with '/'")
    other = "replacePrefixMatch" if key == "replaceFullPath" else "replaceFullPath"
    if r.has(other):
        r.fail(other, f"must not be set when type is {ptype}")
    r.ignore(other)
    r.finish()
    return PathModifier(type=ptype, value=value)


_FILTER_KEYS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestRedirect": "requestRedirect",
    "URLRewrite": "urlRewrite",
    "RequestMirror": "requestMirror",
    "CORS": "cors",
}


EXTENSION_KINDS = ("RequestValidation", "PythonFilter", "Transform", "Aggregation",
                   "GrpcJsonTranscoder")  # fmt: skip


def _filter(fr: Reader) -> RouteFilter:
    ftype = fr.text("type", choices=(*_FILTER_KEYS, "ExtensionRef"))
    if ftype == "ExtensionRef":
        er = fr.req_obj("extensionRef")
        group = er.text("group", choices=(WEFT_GROUP,))
        kind = er.text("kind", choices=EXTENSION_KINDS)
        name = er.text("name", pattern=NAME_RE)
        er.finish()
        fr.finish()
        return RouteFilter(type=ftype, extension=(group, kind, name))
    for t, k in _FILTER_KEYS.items():
        if t != ftype and fr.has(k):
            fr.fail(k, f"must not be set on a {ftype} filter")
    body = fr.req_obj(_FILTER_KEYS[ftype])
    out: RouteFilter
    if ftype == "RequestHeaderModifier":
        out = RouteFilter(type=ftype, request_headers=_header_modifier(body))
    elif ftype == "ResponseHeaderModifier":
        out = RouteFilter(type=ftype, response_headers=_header_modifier(body))
    elif ftype == "RequestRedirect":
        pm = body.obj("path")
        out = RouteFilter(
            type=ftype,
            redirect=Redirect(
                scheme=body.text("scheme", None, choices=("http", "https")),
                hostname=body.text("hostname", None, pattern=HOSTNAME_RE),
                path=_path_modifier(pm) if pm is not None else None,
                port=body.integer("port", None, lo=1, hi=65535),
                status_code=body.integer("statusCode", 302, lo=100, hi=599),
            ),
        )
        if out.redirect and out.redirect.status_code not in REDIRECT_CODES:
            body.fail("statusCode", f"must be one of {', '.join(map(str, REDIRECT_CODES))}")
        body.finish()
    elif ftype == "URLRewrite":
        pm = body.obj("path")
        out = RouteFilter(
            type=ftype,
            rewrite=Rewrite(
                hostname=body.text("hostname", None, pattern=HOSTNAME_RE),
                path=_path_modifier(pm) if pm is not None else None,
            ),
        )
        body.finish()
    elif ftype == "CORS":
        out = RouteFilter(type=ftype, cors=parse_cors(body, max_age=_seconds_field))
    else:
        out = RouteFilter(type=ftype, mirror=_mirror(body))
    fr.finish()
    return out


_ORIGIN_RE = re.compile(r"^(\*|[a-z][a-z0-9+.-]*://(\*\.)?[a-z0-9.-]+(:[0-9]{1,5})?)$")
_TOKEN_RE = re.compile(r"^(\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")


def _seconds_field(r: Reader, key: str, default: int) -> int:
    """Gateway API's `maxAge`: whole seconds."""
    return int(r.integer(key, default, lo=0, hi=86400))


def parse_cors(r: Reader, *, max_age: Callable[[Reader, str, int], int]) -> CorsPolicy:
    """A CORS policy (HTTPRoute filter or SecurityPolicy), checked: origins are `*` or
    scheme://host[:port] with an optional leading `*.`; methods and header names are
    tokens. `max_age` reads maxAge in the resource's own form. (`*` with credentials is
    allowed: the answer always names the requesting origin, never `*`.)"""
    origins = tuple(r.str_list("allowOrigins", pattern=_ORIGIN_RE))
    if not origins:
        r.fail("allowOrigins", 'must name at least one origin (or "*")')
    policy = CorsPolicy(
        origins=origins,
        methods=tuple(r.str_list("allowMethods", pattern=_TOKEN_RE)),
        headers=tuple(r.str_list("allowHeaders", pattern=_TOKEN_RE)),
        expose=tuple(r.str_list("exposeHeaders", pattern=_TOKEN_RE)),
        max_age_s=max_age(r, "maxAge", 5),
        credentials=r.flag("allowCredentials", False),
    )
    r.finish()
    return policy


def _mirror(r: Reader) -> Mirror:
    ref = backend_object_ref(r.req_obj("backendRef"), finish=True)
    num, den = 100, 100
    if r.has("percent") and r.has("fraction"):
        r.fail("percent", "only one of percent and fraction may be set")
    if r.has("percent"):
        num = r.integer("percent", lo=0, hi=100)
    fr = r.obj("fraction")
    if fr is not None:
        num = fr.integer("numerator", lo=0)
        den = fr.integer("denominator", 100, lo=1)
        if num > den:
            fr.fail("numerator", "must not exceed denominator")
        fr.finish()
    r.finish()
    return Mirror(backend=ref, numerator=num, denominator=den)


def _check_filters(r: Reader, key: str, filters: tuple[RouteFilter, ...]) -> None:
    counts: dict[str, int] = {}
    for f in filters:
        counts[f.type] = counts.get(f.type, 0) + 1
    for t, n in counts.items():
        if n > 1 and t not in ("RequestMirror", "ExtensionRef"):  # as Gateway API allows
            r.fail(key, f"{t} may appear only once")
    if counts.get("RequestRedirect") and counts.get("URLRewrite"):
        r.fail(key, "RequestRedirect and URLRewrite cannot be combined")


def backend_object_ref(r: Reader, *, finish: bool = False) -> BackendObjectRef:
    ref = BackendObjectRef(
        group=r.text("group", ""),
        kind=r.text("kind", "Service"),
        name=r.text("name"),
        namespace=r.text("namespace", None, pattern=NAME_RE, max_len=63),
        port=r.integer("port", None, lo=1, hi=65535),
        version=r.text("version", None, pattern=NAME_RE, max_len=63),
        protocol=r.text("protocol", None, choices=("HTTP", "HTTP2", "GRPC")),
    )
    if finish:
        r.finish()
    return ref


def parse_reference_grant(top: Reader, meta: Meta) -> ReferenceGrant:
    spec = top.req_obj("spec")
    froms, tos = [], []
    for fr in spec.objs("from", max_items=16):
        froms.append((fr.text("group"), fr.text("kind"), fr.text("namespace", pattern=NAME_RE)))
        fr.finish()
    for tr in spec.objs("to", max_items=16):
        tos.append((tr.text("group"), tr.text("kind"), tr.text("name", None)))
        tr.finish()
    if not froms or not tos:
        spec.fail("from" if not froms else "to", "must have at least one entry")
    spec.finish()
    return ReferenceGrant(meta=meta, from_=tuple(froms), to=tuple(tos))
