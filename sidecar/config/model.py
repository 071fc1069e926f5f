"""Frozen configuration types: routes, clusters and limits, compiled once per configuration.

A leaf: it imports nothing from the data path (http/, upstream/), which imports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import re

    from sidecar.config.headerops import HeaderOps
    from sidecar.config.split import SmoothWeighted
    from sidecar.filters.chain import Filter


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    address: str
    port: int
    version: str = ""
    weight: int = 1  # relative share of picks among the cluster's endpoints

    key: str = field(init=False, compare=False, repr=False)  # "address:port", for logs

    def __post_init__(self) -> None:
        host = f"[{self.address}]" if ":" in self.address else self.address
        object.__setattr__(self, "key", f"{host}:{self.port}")


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """When a failed try is sent again (upstream/retry.py decides; docs/resilience.md).

    Connect failures and refused streams (the request never reached the app) are retried
    for every method; resets, per-try timeouts and the `codes` only for idempotent methods
    unless `non_idempotent` (the route said so)."""

    attempts: int = 2  # retries after the first try; 0: never
    codes: frozenset[int] = frozenset()
    per_try_timeout_s: float | None = None
    backoff_base_s: float = 0.025
    backoff_max_s: float = 0.25
    non_idempotent: bool = False
    buffer_bytes: int = 64 * 1024  # a body streamed past this is never replayed


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """Retries may add at most `ratio` of the requests of the last `window_s`, plus
    `min_per_s` per second so a quiet service can still retry."""

    ratio: float = 0.2
    min_per_s: float = 10.0
    window_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitLimits:
    """Per-cluster limits; over one the request is answered 503 at once (no queue)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024  # waiting for a connection to be opened
    max_requests: int = 1024  # in flight


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierPolicy:
    """Passive health: consecutive errors open an endpoint's breaker (it is ejected)."""

    consecutive_5xx: int = 0  # responses 500-599 (0: not counted)
    consecutive_gateway_errors: int = 5  # 502/503/504, connect failures, resets, timeouts
    base_ejection_s: float = 30.0  # times the number of ejections so far
    max_ejection_s: float = 300.0
    max_ejection_percent: int = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckPolicy:
    """Active health checks of every endpoint of a cluster."""

    type: str = "HTTP"  # HTTP | TCP
    path: str = "/"
    expected_statuses: frozenset[int] = frozenset(range(200, 400))
    interval_s: float = 5.0
    timeout_s: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamTls:
    """TLS to a cluster's endpoints (a BackendTLSPolicy): the name to ask for and check,
    and the roots to check it with (None: the system's; `verify` False: no check)."""

    hostname: str
    ca_pem: bytes | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSpec:
    """An upstream cluster: one service port and its endpoints."""

    name: str  # "namespace/service:port"
    service: str
    namespace: str
    protocol: str = "HTTP"
    endpoints: tuple[Endpoint, ...] = ()
    lb_policy: str = "p2c_ewma"  # p2c_ewma | round_robin | least_request
    connect_timeout_s: float = 5.0
    idle_timeout_s: float = 60.0
    # from a BackendTrafficPolicy targeting the Service (defaults otherwise)
    request_timeout_s: float | None = None
    retry: RetryPolicy = RetryPolicy()  # for routes that set no `retry` of their own
    budget: RetryBudget = RetryBudget()
    limits: CircuitLimits = CircuitLimits()
    outlier: OutlierPolicy | None = OutlierPolicy()
    health_check: HealthCheckPolicy | None = None
    # Below this % of endpoints taking traffic, balance over all of them (Envoy's panic).
    panic_threshold: int = 50
    policy: str = ""  # "namespace/name" of the BackendTrafficPolicy, for logs
    tls: UpstreamTls | None = None  # a BackendTLSPolicy's: TLS to every endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class Backend:
    """One weighted backendRef of a rule; `cluster` is None when the ref is invalid (500)."""

    cluster: str | None
    weight: int
    # the rule's Request/ResponseHeaderModifier then this backend's, in the order they apply
    request_ops: tuple[HeaderOps, ...] = ()
    response_ops: tuple[HeaderOps, ...] = ()
    reason: str = ""  # why the ref is invalid
    # the cluster's retry policy with the rule's `retry` over it; None: the cluster's as is
    retry: RetryPolicy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RedirectAction:
    scheme: str | None
    hostname: str | None
    path_type: str | None  # ReplaceFullPath | ReplacePrefixMatch | ReplaceRegexMatch | None
    path_value: str
    port: int | None
    status_code: int
    path_regex: re.Pattern[str] | None = None  # ReplaceRegexMatch's


@dataclass(frozen=True, slots=True, kw_only=True)
class RewriteAction:
    hostname: str | None
    path_type: str | None
    path_value: str
    path_regex: re.Pattern[str] | None = None  # ReplaceRegexMatch's


@dataclass(frozen=True, slots=True, kw_only=True)
class Mirror:
    cluster: str | None
    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteAction:
    """What to do with a request that matched one rule."""

    route: str  # "namespace/name", the bounded `route` metric label
    rule: int
    rule_name: str | None = None
    redirect: RedirectAction | None = None
    rewrite: RewriteAction | None = None
    mirrors: tuple[Mirror, ...] = ()
    backends: tuple[Backend, ...] = ()
    # with several backends: the per-request choice (mutable state, not configuration)
    split: SmoothWeighted | None = field(default=None, compare=False)
    request_timeout_s: float | None = None  # the whole exchange, retries included
    backend_request_timeout_s: float | None = None  # each try
    # what runs on each request before it is forwarded (sidecar/filters/chain.py)
    filters: tuple[Filter, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerKey:
    address: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Downstream HTTP limits (per listener); 0 means unlimited where noted."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_request_body_bytes: int = 0  # 0: unlimited (bodies stream)
    header_timeout_s: float = 30.0  # the whole head, from its first byte (first request:
    # from the connection's start)
    idle_timeout_s: float = 300.0
    # A request body gets this long, plus a second per min_body_rate bytes (http/pace.py);
    # 0: no limit. gRPC streams are exempt (their messages come when the app has them).
    body_timeout_s: float = 30.0
    min_body_rate: int = 500  # bytes per second
    # Per client address, 0: no limit. A connection over the first limit is closed at once;
    # a request over the second is answered 429 (HTTP/2 also caps streams per connection).
    max_connections_per_client: int = 0
    max_requests_per_client: int = 0
    tls_handshake_timeout_s: float = 10.0
    # Detecting ports: how long a silent client may wait before it is relayed as opaque TCP
    detect_timeout_s: float = 0.3
    # Upgrade protocols passed through to upstreams (lower-case tokens, without version)
    upgrades: frozenset[bytes] = frozenset({b"websocket"})
    # Path normalization before routing and authorization (http/paths.py)
    merge_slashes: bool = True
    escaped_slashes: str = "reject"  # %2F and %5C in paths: "reject" (400), "keep", "decode"
    # proxies in front whose X-Forwarded-For entries are believed when filters judge the
    # client (0: the connection's peer is the client)
    trusted_hops: int = 0
