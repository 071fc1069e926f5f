"""Parsing of the resilience settings: BackendTrafficPolicy and HTTPRoute `retry`.

Field names follow the Gateway API (`retry.codes/attempts/backoff`) and, for what it has
no field for, Envoy Gateway's BackendTrafficPolicy where one exists (circuitBreaker,
healthCheck), so the vocabulary is familiar; docs/resilience.md lists every field.
"""

from __future__ import annotations

import re

from sidecar.config.model import (
    CircuitLimits,
    HealthCheckPolicy,
    OutlierPolicy,
    RetryBudget,
    RetryPolicy,
)
from sidecar.config.reader import NAME_RE, Reader
from sidecar.config.resources import WEFT_GROUP, BackendTrafficPolicy, Meta, RouteRetry
from sidecar.filters.cache import CacheSpec
from sidecar.filters.compress import CODINGS, CompressionSpec
from sidecar.filters.ratelimit import UNITS, CidrSelector, HeaderSelector, LimitRule

# Envoy Gateway's names, and ours
LB_TYPES = {
    "PeakEWMA": "p2c_ewma",
    "LeastRequest": "least_request",
    "RoundRobin": "round_robin",
}
# An HTTPRoute annotation: retry this route's requests on `codes`, resets and timeouts
# whatever their method (the app makes them safe to repeat, e.g. with idempotency keys).
NON_IDEMPOTENT_ANNOTATION = "weft.dev/retry-non-idempotent"


def _duration(r: Reader, key: str, *, positive: bool = True) -> float | None:
    from sidecar.config.parse_routes import DURATION_RE, duration_s

    text = r.text(key, None, pattern=DURATION_RE)
    if text is None:
        return None
    value = duration_s(text)
    if positive and value <= 0:
        r.fail(key, "must be longer than 0s")
    return value


def status_codes(r: Reader, key: str, lo: int = 400) -> tuple[int, ...]:
    value = r.raw(key, [])
    if not isinstance(value, list):
        r.fail(key, "must be a list of status codes")
    for i, code in enumerate(value):
        if isinstance(code, bool) or not isinstance(code, int) or not lo <= code <= 599:
            r.fail(f"{key}[{i}]", f"must be a status code between {lo} and 599; got {code!r}")
    return tuple(value)


def parse_route_retry(r: Reader) -> RouteRetry:
    """An HTTPRoute rule's `retry`: codes (400-599), attempts (retries), backoff."""
    codes = status_codes(r, "codes")
    attempts = r.integer("attempts", None, lo=0, hi=10)
    backoff = _duration(r, "backoff")
    r.finish()
    return RouteRetry(codes=codes, attempts=attempts, backoff_s=backoff)


def parse_backend_traffic_policy(top: Reader, meta: Meta) -> BackendTrafficPolicy:
    spec = top.req_obj("spec")
    route_level = spec.has("targetRefs") or (
        spec.has("targetRef") and spec.req_obj("targetRef").raw("kind", "Service") != "Service"
    )
    if route_level:
        return _route_traffic_policy(spec, meta)
    if spec.has("rateLimit"):
        spec.fail("rateLimit", "applies to routes: target a Gateway, HTTPRoute or GRPCRoute")
    tr = spec.req_obj("targetRef")
    tr.text("group", "", choices=("", WEFT_GROUP))
    tr.text("kind", "Service", choices=("Service",))
    target = tr.text("name", pattern=NAME_RE)
    tr.finish()
    lb = None
    if (lr := spec.obj("loadBalancer")) is not None:
        lb = LB_TYPES[lr.text("type", choices=tuple(LB_TYPES))]
        lr.finish()
    connect = request = idle = None
    if (t := spec.obj("timeout")) is not None:
        connect = _duration(t, "connect")
        request = _duration(t, "request")
        idle = _duration(t, "idle")
        t.finish()
    retry = budget = None
    if (rr := spec.obj("retry")) is not None:
        retry, budget = _retry(rr)
    limits = None
    if (cr := spec.obj("circuitBreaker")) is not None:
        d = CircuitLimits()
        limits = CircuitLimits(
            max_connections=cr.integer("maxConnections", d.max_connections, lo=1),
            max_pending_requests=cr.integer("maxPendingRequests", d.max_pending_requests, lo=1),
            max_requests=cr.integer("maxRequests", d.max_requests, lo=1),
        )
        cr.finish()
    outlier = None
    outlier_off = False
    if (orr := spec.obj("outlierDetection")) is not None:
        outlier_off = not orr.flag("enabled", True)
        outlier = _outlier(orr)
    health = panic = None
    if (hr := spec.obj("healthCheck")) is not None:
        panic = hr.integer("panicThreshold", None, lo=0, hi=100)
        if panic is None or hr.raw("type", None) is not None:  # an active check
            health = _health_check(hr)
        else:
            hr.finish()
    spec.finish()
    return BackendTrafficPolicy(
        meta=meta, target=target, lb_policy=lb, connect_timeout_s=connect,
        request_timeout_s=request, idle_timeout_s=idle, retry=retry, budget=budget,
        limits=limits, outlier=outlier, outlier_off=outlier_off, health_check=health,
        panic_threshold=panic,
    )  # fmt: skip


def _retry(rr: Reader) -> tuple[RetryPolicy, RetryBudget | None]:
    d = RetryPolicy()
    base, cap = d.backoff_base_s, d.backoff_max_s
    if (br := rr.obj("backoff")) is not None:
        base = _duration(br, "baseInterval") or base
        cap = _duration(br, "maxInterval") or max(cap, base)
        if cap < base:
            br.fail("maxInterval", "must not be shorter than baseInterval")
        br.finish()
    policy = RetryPolicy(
        attempts=rr.integer("attempts", d.attempts, lo=0, hi=10),
        codes=frozenset(status_codes(rr, "codes")),
        per_try_timeout_s=_duration(rr, "perTryTimeout"),
        backoff_base_s=base,
        backoff_max_s=cap,
        buffer_bytes=rr.integer("bufferBytes", d.buffer_bytes, lo=0, hi=64 * 1024 * 1024),
    )
    budget = None
    if (bg := rr.obj("budget")) is not None:
        b = RetryBudget()
        budget = RetryBudget(
            ratio=bg.integer("percent", int(b.ratio * 100), lo=0, hi=1000) / 100,
            min_per_s=bg.integer("minRetriesPerSecond", int(b.min_per_s), lo=0, hi=100_000),
            window_s=_duration(bg, "window") or b.window_s,
        )
        if not 1 <= budget.window_s <= 300:
            bg.fail("window", "must be between 1s and 300s")
        bg.finish()
    rr.finish()
    return policy, budget


def _outlier(r: Reader) -> OutlierPolicy:
    d = OutlierPolicy()
    base = _duration(r, "baseEjectionTime") or d.base_ejection_s
    cap = _duration(r, "maxEjectionTime") or max(d.max_ejection_s, base)
    if cap < base:
        r.fail("maxEjectionTime", "must not be shorter than baseEjectionTime")
    policy = OutlierPolicy(
        consecutive_5xx=r.integer("consecutive5xx", d.consecutive_5xx, lo=0, hi=10_000),
        consecutive_gateway_errors=r.integer(
            "consecutiveGatewayErrors", d.consecutive_gateway_errors, lo=0, hi=10_000
        ),
        base_ejection_s=base,
        max_ejection_s=cap,
        max_ejection_percent=r.integer("maxEjectionPercent", d.max_ejection_percent, hi=100),
    )
    r.finish()
    return policy


def _health_check(r: Reader) -> HealthCheckPolicy:
    d = HealthCheckPolicy()
    kind = r.text("type", choices=("HTTP", "TCP"))
    path, expected = d.path, d.expected_statuses
    hr = r.obj("http")
    if kind == "HTTP":
        if hr is None:
            r.fail("http", "is required when type is HTTP")
        path = hr.text("path", d.path, max_len=1024)
        if not path.startswith("/") or any(c in path for c in " \r\n"):
            hr.fail("path", f"must be an absolute path; got {path!r}")
        codes = status_codes(hr, "expectedStatuses", lo=100)
        expected = frozenset(codes) if codes else expected
        hr.finish()
    elif hr is not None:
        r.fail("http", "is only for type HTTP")
    policy = HealthCheckPolicy(
        type=kind,
        path=path,
        expected_statuses=expected,
        interval_s=_duration(r, "interval") or d.interval_s,
        timeout_s=_duration(r, "timeout") or d.timeout_s,
        healthy_threshold=r.integer("healthyThreshold", d.healthy_threshold, lo=1, hi=100),
        unhealthy_threshold=r.integer("unhealthyThreshold", d.unhealthy_threshold, lo=1, hi=100),
    )
    r.finish()
    return policy


_CLUSTER_SECTIONS = ("loadBalancer", "timeout", "retry", "circuitBreaker", "outlierDetection",
                     "healthCheck")  # fmt: skip


def _route_traffic_policy(spec: Reader, meta: Meta) -> BackendTrafficPolicy:
    """A BackendTrafficPolicy that targets Gateways or routes: what Weft applies per route
    (rate limit, compression); the cluster sections apply per Service."""
    from sidecar.config.parse_security import parse_targets

    targets = parse_targets(spec)
    for key in _CLUSTER_SECTIONS:
        if spec.has(key):
            spec.fail(key, "applies per Service in Weft: put it in a BackendTrafficPolicy whose "
                      "targetRef is the Service")  # fmt: skip
    if not any(spec.has(k) for k in _ROUTE_SECTIONS):
        spec.fail(None, f"a policy for routes needs one of {', '.join(_ROUTE_SECTIONS)}")
    rules: tuple[LimitRule, ...] | None = None
    shared = False
    if (rr := spec.obj("rateLimit")) is not None:
        rules, shared = _rate_limit(rr)
    compression = _compression(spec) if spec.has("compression") else None
    if compression is None and spec.has("compressionOptions"):
        spec.fail("compressionOptions", "needs compression")
    cache = _cache(spec.obj("cache")) if spec.has("cache") else None
    inflated = None
    if (dr := spec.obj("requestDecompression")) is not None:
        inflated = dr.integer("maxInflatedBytes", 8 << 20, lo=1, hi=1 << 30)
        dr.finish()
    spec.finish()
    return BackendTrafficPolicy(meta=meta, target="", targets=targets, rate_limit=rules,
                                rate_limit_global=shared, compression=compression,
                                max_inflated=inflated, cache=cache)  # fmt: skip


_ROUTE_SECTIONS = ("rateLimit", "compression", "requestDecompression", "cache")


def _cache(cr: Reader | None) -> CacheSpec:
    if cr is None:
        return CacheSpec()
    d = CacheSpec()
    out = CacheSpec(
        max_bytes=cr.integer("maxBytes", d.max_bytes, lo=1024, hi=1 << 40),
        max_body=cr.integer("maxBodyBytes", d.max_body, lo=0, hi=1 << 30),
        coalesce=cr.flag("coalesce", d.coalesce),
        lock_timeout_s=_duration(cr, "lockTimeout") or d.lock_timeout_s,
    )
    cr.finish()
    return out


def _rate_limit(rr: Reader) -> tuple[tuple[LimitRule, ...], bool]:
    kind = rr.text("type", "Local", choices=("Local", "Global"))
    shared = kind == "Global"
    lr = rr.req_obj("global" if shared else "local")
    if rr.has("local" if shared else "global"):
        rr.fail("local" if shared else "global", f"must not be set when type is {kind}")
    rules = tuple(_limit_rule(r) for r in lr.objs("rules", max_items=64))
    if not rules:
        lr.fail("rules", "must have at least one rule")
    for i, rule in enumerate(rules):
        if shared and rule.requests > GLOBAL_MAX_REQUESTS:
            lr.fail(f"rules[{i}].limit.requests",
                    f"must be at most {GLOBAL_MAX_REQUESTS} for a Global limit (its exact "
                    "window keeps one entry per admitted request)")  # fmt: skip
    lr.finish()
    rr.finish()
    return rules, shared


def _compression(spec: Reader) -> CompressionSpec:
    """Envoy Gateway's `compression` list (`type: Gzip | Brotli`, and Zstd), with Weft's
    `compressionOptions` beside it."""
    codings: list[str] = []
    for cr in spec.objs("compression", max_items=3):
        kind = cr.text("type", choices=tuple(CODINGS))
        if CODINGS[kind] in codings:
            cr.fail("type", f"{kind} is listed twice")
        codings.append(CODINGS[kind])
        if (own := cr.obj(kind.lower())) is not None:  # Envoy Gateway's per-type block
            own.finish()
        cr.finish()
    if not codings:
        spec.fail("compression", "must list at least one type")
    out = CompressionSpec(codings=tuple(codings))
    if (o := spec.obj("compressionOptions")) is not None:
        types = o.str_list("contentTypes", pattern=_MEDIA_RANGE)
        out = CompressionSpec(
            codings=out.codings,
            min_length=o.integer("minContentLength", out.min_length, lo=0, hi=1 << 30),
            content_types=tuple(t.lower() for t in types) if types else out.content_types,
            gzip_level=o.integer("gzipLevel", out.gzip_level, lo=1, hi=9),
            brotli_quality=o.integer("brotliQuality", out.brotli_quality, lo=0, hi=11),
            zstd_level=o.integer("zstdLevel", out.zstd_level, lo=1, hi=22),
        )
        o.finish()
    return out


_MEDIA_RANGE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+/(\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+)$")


GLOBAL_MAX_REQUESTS = 100_000


def _limit_rule(r: Reader) -> LimitRule:
    import ipaddress

    headers: list[HeaderSelector] = []
    cidr = None
    for cs in r.objs("clientSelectors", max_items=8):
        for hr in cs.objs("headers", max_items=8):
            name = hr.text("name", pattern=_HEADER_NAME_RE).lower().encode()
            kind = hr.text("type", "Exact", choices=("Exact", "Distinct"))
            value = hr.text("value", None, max_len=1024)
            if kind == "Exact" and value is None:
                hr.fail("value", "is required when type is Exact")
            if kind == "Distinct" and value is not None:
                hr.fail("value", "must not be set when type is Distinct")
            headers.append(HeaderSelector(name, value.encode() if value is not None else None))
            hr.finish()
        if (sr := cs.obj("sourceCIDR")) is not None:
            distinct = sr.text("type", "Exact", choices=("Exact", "Distinct")) == "Distinct"
            text = sr.text("value")
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                sr.fail("value", f"is not a CIDR: {text!r}")
            cidr = CidrSelector(network, distinct)
            sr.finish()
        cs.finish()
    lim = r.req_obj("limit")
    requests = lim.integer("requests", lo=1, hi=10**9)
    unit = lim.text("unit", choices=tuple(UNITS))
    lim.finish()
    r.finish()
    return LimitRule(requests=requests, unit_s=UNITS[unit], headers=tuple(headers), cidr=cidr)


_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
