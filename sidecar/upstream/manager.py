"""Every upstream cluster of the process, kept in step with the configuration.

`ClusterManager.sync` takes each new snapshot's cluster specs: a cluster that stays keeps
its statistics and connections (`Cluster.update`), a new one starts fresh, and one that
left is retired (connections still draining on an older snapshot can reach it for a
while). Active health checks run for exactly the clusters in force that ask for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import trio

from sidecar.config.model import ClusterSpec
from sidecar.transport.io import Conn, Connector, connect_within
from sidecar.upstream.cluster import Cluster
from sidecar.upstream.health import run_checks

ConnectorFactory = Callable[[ClusterSpec], Connector]


def plain(spec: ClusterSpec) -> Connector:
    """TCP, or TLS when a BackendTLSPolicy covers the cluster's Service port."""
    tls = spec.tls
    if tls is None:
        return connect_within
    from sidecar.transport import origin_tls

    h2 = spec.protocol in ("HTTP2", "GRPC")

    async def connect(address: str, port: int, timeout_s: float) -> Conn:
        return await origin_tls.connect(tls, h2, address, port, timeout_s)

    return connect


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
    with scope:
        await run_checks(cluster)
