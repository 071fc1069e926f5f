"""Upstream clusters at run time: endpoint statistics, the balancer, breakers and limits.

Times here are `time.perf_counter()` seconds, the data path's clock (not trio's).

A `ClusterSpec` in the snapshot is immutable; its `Cluster` here is the mutable owner of
what outlives one configuration: endpoint statistics and connections (its `Pools`)
survive a reload for endpoints that stay, and are dropped for endpoints that leave.

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
from collections.abc import Collection

from sidecar.config.model import ClusterSpec, Endpoint
from sidecar.transport.io import Connector, connect_within
from sidecar.upstream.balance import (
    Balancer,
    Cumulative,
    EndpointStats,
    cumulative_weights,
    make_balancer,
)
from sidecar.upstream.breaker import count_open, may_eject, over_limit
from sidecar.upstream.pool import Pools
from sidecar.upstream.retry import Budget

log = logging.getLogger("weft.upstream")


class Cluster:
    """One upstream cluster at run time: its endpoints' statistics and breakers, the
    endpoints that may take traffic now, pools, the retry budget and the limits' counters."""

    __slots__ = (
        "available", "balancer", "budget", "cumulative", "half_open", "healthy_now",
        "next_change", "panic", "pools", "requests", "spec", "stats",
    )  # fmt: skip

    def __init__(self, spec: ClusterSpec, now: float, connect: Connector = connect_within) -> None:
        self.spec = spec
        self.balancer: Balancer = make_balancer(spec.lb_policy)
        self.stats: list[EndpointStats] = [EndpointStats(e, now) for e in spec.endpoints]
        self.pools = Pools(connect, [e.key for e in spec.endpoints])
        self.budget = Budget(spec.budget, now)
        self.requests = 0  # in flight
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
        pools = self.pools
        connecting = pools.needs_connect(key)
        if self.requests < self.spec.limits.max_requests and not connecting:
            return None  # the common case
        return over_limit(
            self.spec.limits, self.requests, pools.connecting, pools.connections, connecting
        )

    # -- configuration ----------------------------------------------------------------------
    def update(self, spec: ClusterSpec, now: float) -> None:
        """Take a new spec, keeping statistics and pools of endpoints that remain."""
        if spec.lb_policy != self.spec.lb_policy:
            self.balancer = make_balancer(spec.lb_policy)
        if spec.budget != self.spec.budget:
            self.budget = Budget(spec.budget, now)
        old_stats = {s.endpoint: s for s in self.stats}
        self.stats = [old_stats.get(e) or EndpointStats(e, now) for e in spec.endpoints]
        self.pools.retain({e.key for e in spec.endpoints})
        if spec.health_check is None:
            for s in self.stats:
                s.healthy = True
        self.spec = spec
        self.refresh(now)

    def close(self) -> None:
        self.pools.close()
