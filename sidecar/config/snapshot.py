"""One configuration snapshot: what a listener's requests are routed and checked by.

Immutable once built (config/compile.py); the data path reads the snapshot in force and
a reload swaps it whole (config/store.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sidecar.config.model import ClusterSpec, Limits, ListenerKey

if TYPE_CHECKING:
    from sidecar.authz import Policy
    from sidecar.config.mesh import MeshNames
    from sidecar.filters.cache import CacheFilter
    from sidecar.filters.global_ratelimit import GlobalRateLimitFilter
    from sidecar.filters.jwks import RemoteJwks
    from sidecar.filters.ratelimit import RateLimitFilter
    from sidecar.http.router import PortRouter


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    version: int
    routers: Mapping[ListenerKey, PortRouter]
    clusters: Mapping[str, ClusterSpec]
    limits: Limits = Limits()
    warnings: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default_factory=tuple)
    authz: tuple[Policy, ...] = ()  # AuthorizationPolicies (enforced by sidecars' inbound)
    # a sidecar's outbound listener: how its requests' Host names a mesh destination
    mesh: MeshNames | None = None
    # rate-limit filters in force: the process's RateLimitState gives them their buckets
    limiters: tuple[RateLimitFilter, ...] = ()
    # remote JWKS of JWT filters in force: the process's JwksState fetches their keys
    jwks: tuple[RemoteJwks, ...] = ()
    # global (Redis) rate-limit filters: the process's GlobalLimits is their connection
    global_limiters: tuple[GlobalRateLimitFilter, ...] = ()
    # response caches: the process's CacheState keeps their stores across reloads
    caches: tuple[CacheFilter, ...] = ()
