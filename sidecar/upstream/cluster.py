"""Upstream clusters at run time: endpoint statistics, balancer and keep-alive pools.

Times here are `time.perf_counter()` seconds, the data path's clock (not trio's).

A `ClusterSpec` in the snapshot is immutable; its `Cluster` here is the mutable owner of
what outlives one configuration: endpoint statistics and idle connections survive a
reload for endpoints that stay, and are dropped for endpoints that leave.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from sidecar.config.model import ClusterSpec
from sidecar.transport.io import Conn, connect_within
from sidecar.upstream.balance import Balancer, EndpointStats, cumulative_weights, make_balancer

if TYPE_CHECKING:
    from sidecar.upstream.h2client import H2Pool

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

    def take(self, now: float, idle_timeout_s: float) -> Conn | None:
        idle = self.idle
        while idle:
            conn, since = idle.pop()
            age = now - since
            if age > idle_timeout_s or (age > STALE_CHECK_AFTER_S and conn.at_eof_or_garbage()):
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
    __slots__ = ("balancer", "connect", "cumulative", "h2pools", "pools", "spec", "stats")

    def __init__(self, spec: ClusterSpec, now: float, connect: Connector = connect_within) -> None:
        self.spec = spec
        self.connect = connect
        self.balancer: Balancer = make_balancer(spec.lb_policy)
        self.stats: list[EndpointStats] = [EndpointStats(e, now) for e in spec.endpoints]
        self.cumulative = cumulative_weights([e.weight for e in spec.endpoints])
        self.pools = {e.key: EndpointPool(connect) for e in spec.endpoints}
        self.h2pools: dict[str, H2Pool] = {}  # HTTP/2 clusters, made on first use

    def pick(self, rng: random.Random, now: float) -> EndpointStats | None:
        stats = self.stats
        if not stats:
            return None
        return self.balancer.pick(stats, rng, now, self.cumulative)

    def update(self, spec: ClusterSpec, now: float) -> None:
        """Take a new spec, keeping statistics and pools of endpoints that remain."""
        if spec.lb_policy != self.spec.lb_policy:
            self.balancer = make_balancer(spec.lb_policy)
        old_stats = {s.endpoint: s for s in self.stats}
        self.stats = [old_stats.get(e) or EndpointStats(e, now) for e in spec.endpoints]
        self.cumulative = cumulative_weights([e.weight for e in spec.endpoints])
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
        self.spec = spec

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

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()
        for cluster, _ in self.retired.values():
            cluster.close()
        self.clusters.clear()
        self.retired.clear()
