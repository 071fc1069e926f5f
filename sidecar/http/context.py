"""What every request handler of a proxy process shares: the snapshot store, clusters,
metrics, logs, tracer, and the per-client counters."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from sidecar.config.model import ListenerKey
from sidecar.config.store import SnapshotStore
from sidecar.http.request import RequestIds
from sidecar.observe.accesslog import AccessLog
from sidecar.observe.metrics import Metrics
from sidecar.transport.idle import IdleTracker
from sidecar.upstream.manager import ClusterManager

if TYPE_CHECKING:  # TLS and tracing load on first use: a plain gateway stays small
    from ca.spiffe import SpiffeId
    from sidecar.authz import Decision
    from sidecar.http.terminate import ServerTls
    from sidecar.observe.tracing import Tracer


class PerClient:
    """How many of something (connections, requests) each client address has open."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def enter(self, client: str, limit: int) -> bool:
        """Count one more for `client`; False (and nothing counted) at `limit` already."""
        n = self.counts.get(client, 0)
        if n >= limit:
            return False
        self.counts[client] = n + 1
        return True

    def leave(self, client: str) -> None:
        n = self.counts.pop(client)
        if n > 1:
            self.counts[client] = n - 1


@dataclass(slots=True, kw_only=True)
class ProxyContext:
    """Everything a connection handler shares with the rest of the process."""

    store: SnapshotStore
    clusters: ClusterManager
    metrics: Metrics
    access_log: AccessLog
    background: trio.Nursery
    idle: IdleTracker
    service: str = "edge"
    direction: str = "edge"
    rng: random.Random = field(default_factory=random.Random)
    # TLS termination of the HTTPS ports of the snapshot in force; swapped with it
    tls: Mapping[ListenerKey, ServerTls] = field(default_factory=dict)
    # set when the process drains: HTTP/1 answers with Connection: close, HTTP/2 sends GOAWAY
    draining: trio.Event = field(default_factory=trio.Event)
    # sidecar inbound: may this verified peer (SPIFFE ID) make this call (method, path)?
    authorize: Callable[[SpiffeId | None, str, str], Decision] | None = None
    # sidecar inbound: this workload's SPIFFE ID, named in X-Forwarded-Client-Cert
    identity: SpiffeId | None = None
    # upstreams are peer sidecars (mTLS): their "could not reach my app" marker is believed
    sidecar_upstreams: bool = False
    # set when spans are exported: every request gets a span and passes its context on
    tracer: Tracer | None = None
    # per client address: open downstream connections, requests in flight (only counted
    # while the matching limit is set)
    client_connections: PerClient = field(default_factory=PerClient)
    client_requests: PerClient = field(default_factory=PerClient)
    ids: RequestIds = field(init=False)

    def __post_init__(self) -> None:
        self.ids = RequestIds(self.rng)
