"""Upstream clusters at run time: endpoint statistics, balancer and keep-alive pools.

Times here are `time.perf_counter()` seconds, the data path's clock (not trio's).

A `ClusterSpec` in the snapshot is immutable; its `Cluster` here is the mutable owner of
what outlives one configuration: endpoint statistics and idle connections survive a
reload for endpoints that stay, and are dropped for endpoints that leave.

Panic (Envoy's `healthy_panic_threshold`): when fewer than `panic_threshold` percent of a
cluster's endpoints take traffic (ejected by outlier detection or failing active checks),
it balances over all of them instead. Health signals are then wrong more often than the
endpoints are (a deny policy making every instance answer errors, a dependency down for
all): failing every request with `503 no healthy upstream` turns a partial outage into a
full one. A split still leaves a version with no healthy endpoint out (`healthy`), so a
failing canary's share goes to the others; only when no version is healthy does the split
fall back to its weights.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING

import trio

from sidecar.config.model import ClusterSpec, Endpoint
from sidecar.transport.io import Conn, connect_within
from sidecar.upstream.balance import (
    Balancer,
    Cumulative,
    EndpointStats,
    cumulative_weights,
    make_balancer,
)
from sidecar.upstream.breaker import count_open, may_eject, over_limit
from sidecar.upstream.retry import Budget

if TYPE_CHECKING:
    from sidecar.upstream.h2client import H2Pool

log = logging.getLogger("weft.upstream")

MAX_IDLE_PER_ENDPOINT = 256
# An idle connection older than this is checked for a FIN from the upstream before reuse.
STALE_CHECK_AFTER_S = 0.5


# Opens a connection to (address, port) within a timeout: plain TCP, or mTLS in sidecars.
Connector = Callable[[str, int, float], Awaitable[Conn]]
ConnectorFactory = Callable[[ClusterSpec], Connector]


def plain(spec: ClusterSpec) -> Connector:
    return connect_within


class EndpointPool:
    """Idle keep-alive connections to one endpoint, most recently used first out; `connect`
    opens new ones the way the cluster's upstreams are reached."""

    __slots__ = ("connect", "idle")

    def __init__(self, connect: Connector = connect_within) -> None:
        self.idle: list[tuple[Conn, float]] = []
        self.connect = connect

    def take(self, now: float, idle_timeout_s: float, check: bool = False) -> Conn | None:
        """An idle connection; `check`: make sure the upstream has not closed it, however
        recently it was used (for requests that must not be replayed after a failure)."""
        idle = self.idle
        while idle:
            conn, since = idle.pop()
            age = now - since
            stale_check = check or age > STALE_CHECK_AFTER_S
            if age > idle_timeout_s or (stale_check and conn.at_eof_or_garbage()):
                conn.close()
                continue
            return conn
        return None

    def give(self, conn: Conn, now: float) -> None:
        if len(self.idle) >= MAX_IDLE_PER_ENDPOINT:
            conn.close()
        else:
            self.idle.append((conn, now))

    def close(self) -> None:
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()


class Cluster:
    """One upstream cluster at run time: its endpoints' statistics and breakers, the
    endpoints that may take traffic now, pools, the retry budget and the limits' counters."""

    __slots__ = (
        "available", "balancer", "budget", "connect_raw", "connecting", "connections",
        "cumulative", "h2pools", "half_open", "healthy_now", "next_change", "panic", "pools",
        "requests", "spec", "stats",
    )  # fmt: skip

    def __init__(self, spec: ClusterSpec, now: float, connect: Connector = connect_within) -> None:
        self.spec = spec
        self.connect_raw = connect
        self.balancer: Balancer = make_balancer(spec.lb_policy)
        self.stats: list[EndpointStats] = [EndpointStats(e, now) for e in spec.endpoints]
        self.pools = {e.key: EndpointPool(self.connect) for e in spec.endpoints}
        self.h2pools: dict[str, H2Pool] = {}  # HTTP/2 clusters, made on first use
        self.budget = Budget(spec.budget, now)
        self.requests = 0  # in flight
        self.connecting = 0  # requests waiting for a new connection
        self.connections = 0  # open
        self.available: list[EndpointStats] = []
        self.half_open: list[EndpointStats] = []  # past their ejection, one trial at a time
        self.cumulative: Cumulative = None
        self.next_change = 0.0
        self.healthy_now = True  # some endpoint takes traffic on its own merits
        self.panic = False  # too few do: all endpoints take it
        self.refresh(now)

    # -- endpoints that take traffic ------------------------------------------------------
    def refresh(self, now: float) -> None:
        """Recompute which endpoints take traffic (after a breaker or health change)."""
        avail: list[EndpointStats] = []
        half: list[EndpointStats] = []
        next_change = math.inf
        checked = self.spec.health_check is not None
        for s in self.stats:
            if not s.healthy:
                continue
            until = s.outlier.until
            if until:
                if now < until:
                    next_change = min(next_change, until)
                elif not checked:  # with active checks, a passing check closes it
                    half.append(s)
                continue
            avail.append(s)
        self.healthy_now = bool(avail or half)
        total = len(self.stats)
        panic = total > 0 and len(avail) * 100 < self.spec.panic_threshold * total
        if panic != self.panic:
            self.panic = panic
            if panic:
                log.warning("cluster %s: %d of %d endpoints healthy, under the %d%% panic "
                            "threshold: balancing over all of them", self.spec.name,
                            len(avail), total, self.spec.panic_threshold)  # fmt: skip
            else:
                log.info("cluster %s: out of panic (%d of %d endpoints healthy)",
                         self.spec.name, len(avail), total)  # fmt: skip
        if panic:
            avail, half = list(self.stats), []
        self.available = avail
        self.half_open = half
        self.cumulative = cumulative_weights([s.endpoint.weight for s in avail])
        self.next_change = next_change

    def pick(
        self, rng: random.Random, now: float, avoid: Collection[Endpoint] = ()
    ) -> EndpointStats | None:
        """An endpoint for the next try; one not in `avoid` (those tried) when possible."""
        if now >= self.next_change:
            self.refresh(now)
        for s in self.half_open:
            if s.pending == 0 and s.endpoint not in avoid:
                return s  # the half-open trial
        stats = self.available
        cumulative = self.cumulative
        if avoid:
            others = [s for s in stats if s.endpoint not in avoid]
            if others and len(others) < len(stats):
                stats = others
                cumulative = cumulative_weights([s.endpoint.weight for s in others])
        if not stats:
            return None
        return self.balancer.pick(stats, rng, now, cumulative)

    def has_endpoints(self, now: float) -> bool:
        """Can a request be sent at all (some endpoint takes traffic or a trial, or the
        cluster is in panic)?"""
        if now >= self.next_change:
            self.refresh(now)
        return bool(self.available or self.half_open)

    def healthy(self, now: float) -> bool:
        """Does some endpoint take traffic on its own merits (panic aside)? What a split
        asks before giving this backend its share."""
        if now >= self.next_change:
            self.refresh(now)
        return self.healthy_now

    def observe(
        self, stats: EndpointStats, status: int, now: float, *, app_error: bool = False
    ) -> float:
        """Feed one try's outcome (`status` 0: no response; `app_error`: a 5xx the peer's
        app answered itself) to the endpoint's breaker; returns the ejection time when it
        opened (0.0 otherwise)."""
        policy = self.spec.outlier
        o = stats.outlier
        if policy is None or (
            0 < status < 500 and not (o.until or o.consecutive_gateway or o.consecutive_5xx)
        ):
            return 0.0
        was_open = o.until
        if o.record(policy, status, now, app_error=app_error):
            # A failed half-open trial reopens; a closed breaker opens within the maximum.
            if was_open or may_eject(policy, count_open([s.outlier for s in self.stats], now),
                                     len(self.stats)):  # fmt: skip
                duration = o.open(policy, now)
                self.refresh(now)
                return duration
        elif was_open and not o.until:
            self.refresh(now)  # the trial passed: closed again
        return 0.0

    def open_count(self, now: float) -> int:
        """Endpoints whose breaker is open (ejected), for `weft_circuit_open`."""
        return count_open([s.outlier for s in self.stats], now)

    # -- limits -----------------------------------------------------------------------------
    def over_limit(self, key: str) -> str | None:
        """The limit a new request to endpoint `key` would break (see breaker.over_limit)."""
        pool = self.pools.get(key)
        if self.requests < self.spec.limits.max_requests and (self.h2pools or (pool and pool.idle)):
            return None  # the common case, decided without a call
        connecting = pool is None or not pool.idle
        if self.h2pools:
            connecting = False  # HTTP/2 multiplexes: the pool opens few connections
        return over_limit(
            self.spec.limits, self.requests, self.connecting, self.connections, connecting
        )

    async def connect(self, address: str, port: int, timeout_s: float) -> Conn:
        """Open a connection, counted against the limits while it is open."""
        self.connecting += 1
        try:
            conn = await self.connect_raw(address, port, timeout_s)
        finally:
            self.connecting -= 1
        self.connections += 1
        conn.on_close = self._closed
        return conn

    def _closed(self) -> None:
        self.connections -= 1

    # -- configuration ----------------------------------------------------------------------
    def update(self, spec: ClusterSpec, now: float) -> None:
        """Take a new spec, keeping statistics and pools of endpoints that remain."""
        if spec.lb_policy != self.spec.lb_policy:
            self.balancer = make_balancer(spec.lb_policy)
        if spec.budget != self.spec.budget:
            self.budget = Budget(spec.budget, now)
        old_stats = {s.endpoint: s for s in self.stats}
        self.stats = [old_stats.get(e) or EndpointStats(e, now) for e in spec.endpoints]
        keep = {e.key for e in spec.endpoints}
        for key, pool in list(self.pools.items()):
            if key not in keep:
                pool.close()
                del self.pools[key]
        for key, h2pool in list(self.h2pools.items()):
            if key not in keep:
                h2pool.close()
                del self.h2pools[key]
        for e in spec.endpoints:
            self.pools.setdefault(e.key, EndpointPool(self.connect))
        if spec.health_check is None:
            for s in self.stats:
                s.healthy = True
        self.spec = spec
        self.refresh(now)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        for h2pool in self.h2pools.values():
            h2pool.close()


class ClusterManager:
    """Owns every Cluster; `sync` is called once per snapshot swap.

    A cluster that leaves the configuration is retired, not closed: connections still
    draining on an older snapshot can reach it for `retire_after_s`.
    """

    def __init__(self, retire_after_s: float = 300.0, connector: ConnectorFactory = plain) -> None:
        self.connector = connector  # how each cluster's upstreams are reached
        self.clusters: dict[str, Cluster] = {}
        self.retired: dict[str, tuple[Cluster, float]] = {}
        self.retire_after_s = retire_after_s
        # where active health checks run; set by the process before the first sync
        self.nursery: trio.Nursery | None = None
        self.checks: dict[Cluster, trio.CancelScope] = {}

    def get(self, name: str) -> Cluster | None:
        cluster = self.clusters.get(name)
        if cluster is None and name in self.retired:
            cluster = self.retired[name][0]
        return cluster

    def sync(self, specs: Mapping[str, ClusterSpec], now: float) -> None:
        for name, (old, since) in list(self.retired.items()):
            if name in specs or now - since > self.retire_after_s:
                del self.retired[name]
                if name not in specs:
                    old.close()
                else:
                    self.clusters.setdefault(name, old)
        for name in list(self.clusters):
            if name not in specs:
                self.retired[name] = (self.clusters.pop(name), now)
        for name, spec in specs.items():
            cluster = self.clusters.get(name)
            if cluster is not None and cluster.spec.protocol != spec.protocol:
                # How to connect depends on the protocol (ALPN, mTLS contexts): a new
                # cluster; the old one finishes what it carries and is closed later.
                self.retired[f"{name} (until {now})"] = (cluster, now)
                cluster = None
            if cluster is None:
                self.clusters[name] = Cluster(spec, now, self.connector(spec))
            elif cluster.spec != spec:
                cluster.update(spec, now)
        self._reconcile_checks()

    def _reconcile_checks(self) -> None:
        """Run active health checks for exactly the clusters in force that ask for them."""
        wanted = {c for c in self.clusters.values() if c.spec.health_check is not None}
        for cluster in [c for c in self.checks if c not in wanted]:
            self.checks.pop(cluster).cancel()
        if self.nursery is None:
            return
        for cluster in wanted - self.checks.keys():
            scope = self.checks[cluster] = trio.CancelScope()
            self.nursery.start_soon(_checks, cluster, scope)

    def circuit_open(self, now: float) -> list[tuple[str, int]]:
        """(cluster, endpoints ejected now) for each cluster, for `weft_circuit_open`."""
        return [(name, c.open_count(now)) for name, c in sorted(self.clusters.items())]

    def close(self) -> None:
        for scope in self.checks.values():
            scope.cancel()
        self.checks.clear()
        for cluster in self.clusters.values():
            cluster.close()
        for cluster, _ in self.retired.values():
            cluster.close()
        self.clusters.clear()
        self.retired.clear()


async def _checks(cluster: Cluster, scope: trio.CancelScope) -> None:
    from sidecar.upstream.health import run_checks

    with scope:
        await run_checks(cluster)
