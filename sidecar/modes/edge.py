"""Edge mode: serve Gateway listeners from YAML files, reloading them when they change.

Theory of operation. A reload parses, validates and compiles every file into a new
snapshot, opens the sockets of listeners it adds, and only then swaps the snapshot in;
any failure leaves the previous snapshot and sockets untouched. Removed listeners stop
accepting; their established connections live in the connection nursery, which no
reload touches, and finish on the snapshot their current request began with.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

import trio

from sidecar.admin import AdminState, serve_admin
from sidecar.config.dump import describe
from sidecar.config.ingress import IngressListeners
from sidecar.config.loader import FileStamp, load_snapshot
from sidecar.config.model import Limits, ListenerKey
from sidecar.config.snapshot import Snapshot
from sidecar.config.store import SnapshotStore
from sidecar.entry import serve_downstream
from sidecar.errors import ConfigError
from sidecar.filters.cache import CacheState
from sidecar.filters.jwks import JwksState
from sidecar.filters.ratelimit import RateLimitState
from sidecar.http.context import ProxyContext
from sidecar.observe.accesslog import AccessLog
from sidecar.observe.metrics import Metrics
from sidecar.transport.idle import IdleTracker, run_sweeper
from sidecar.transport.listen import Handler, accept_loop, open_listener
from sidecar.upstream.manager import ClusterManager, ConnectorFactory, plain

if TYPE_CHECKING:
    from sidecar.filters.global_ratelimit import GlobalLimits
    from sidecar.http.terminate import ServerTls
    from sidecar.observe.tracing import TraceOptions, Tracer

log = logging.getLogger("weft.edge")

# What a standalone edge refuses from its files: the mesh's kinds, which it would not enforce
MESH_ONLY = {
    "AuthorizationPolicy": "is enforced by mesh sidecars on their inbound side, not by an "
    "edge; at the edge use a SecurityPolicy (authorization, apiKeyAuth)",
    "MeshConfig": "configures a mesh's control plane; an edge does not read it",
}

# What a sidecar refuses from its files: the edge's kinds, which its outbound side would
# apply to the app's own calls rather than to callers from outside
EDGE_ONLY = {
    "SecurityPolicy": "is enforced by an edge gateway (meshctl edge); in the mesh, callers "
    "are authorized by AuthorizationPolicy on the callee's sidecar",
    "ClientTrafficPolicy": "configures an edge gateway's listeners (meshctl edge); sidecars "
    "verify callers by mTLS",
}

BindHook = Callable[[ListenerKey], tuple[str, int]]
ServeHook = Callable[[ListenerKey], Handler | None]


class EdgeServer:
    def __init__(
        self,
        paths: Sequence[str],
        *,
        gateway_class: str = "weft",
        admin_address: str = "127.0.0.1",
        admin_port: int | None = 15000,
        access_log: TextIO | None = None,
        bind: BindHook | None = None,
        watch_interval_s: float = 1.0,
        limits: Limits | None = None,
        drain_timeout_s: float = 15.0,
        metrics: Metrics | None = None,
        connector: ConnectorFactory = plain,
        direction: str = "edge",
        service: str = "edge",
        signals: bool = True,
        source: Callable[[int], Snapshot] | None = None,
        trace: TraceOptions | None = None,
        tracer: Tracer | None = None,
        refused: Mapping[str, str] | None = None,
        trust: ssl.SSLContext | None = None,
        ratelimit: GlobalLimits | None = None,
        worker: bool = False,
        serve: ServeHook | None = None,
        ingress: IngressListeners | None = None,
    ) -> None:
        """`admin_port=None` runs no admin listener (a sidecar's outbound side, whose
        sidecar has one); `connector` says how upstreams are reached (mTLS in sidecars);
        `source` compiles snapshots from elsewhere than `paths` (what a control plane sent).
        Spans go to the collector `trace` names, or to an embedding sidecar's `tracer`.
        `trust` verifies the HTTPS the edge calls itself (remote JWKS): the system's CAs
        by default. `ratelimit`: the Redis that global rate limits count in.
        `refused`: kinds the files may not hold, and why (`MESH_ONLY` for `meshctl edge`).
        `worker`: one of `meshctl edge --workers` (mesh_ctl/workers.py): listeners share
        their ports with the other workers, the supervisor watches the files and signals
        reloads, and EOF on stdin (the supervisor gone) drains this one.
        `serve(key)`: what runs a connection accepted on listener `key`, when not the
        listener's protocol (a sidecar's intercepting outbound port), else None.
        `ingress`: the address and ports the files' Ingresses are served on."""
        self.worker = worker
        self.serve = serve
        self.ingress = ingress or IngressListeners()  # where the files' Ingresses are served
        self.source = source
        self.refused = refused
        self.drain_timeout_s = drain_timeout_s
        self.signals = signals  # SIGHUP reloads, SIGTERM drains and exits (off when embedded)
        self.direction = direction
        self.service = service
        self.limits = limits or Limits()
        self.paths = list(paths)
        self.gateway_class = gateway_class
        self.admin_address = admin_address
        self.admin_port = admin_port
        self.bind: BindHook = bind or (lambda key: (key.address, key.port))
        self.watch_interval_s = watch_interval_s
        self.metrics = metrics or Metrics()
        self.access_log = AccessLog(access_log)
        self.clusters = ClusterManager(connector=connector)
        self.limits_state = RateLimitState()  # rate-limit buckets, kept across reloads
        self.jwks_state = JwksState(trust, self.metrics)  # fetched JWT keys, likewise
        self.cache_state = CacheState(self.metrics)  # response caches' entries, likewise
        self.global_limits = ratelimit  # None: Global rate limits are refused
        if ratelimit is not None:
            ratelimit.metrics = self.metrics
        self.metrics.collectors.append(self._breakers)
        self.store: SnapshotStore | None = None
        self.idle = IdleTracker(idle_timeout_s=300.0, header_timeout_s=30.0)
        self.listeners: dict[ListenerKey, tuple[trio.CancelScope, int]] = {}
        self.admin_bound_port = 0
        self.draining = False
        self.last_error: str = ""
        self._version = 0
        self._stamp = FileStamp(())
        self._nursery: trio.Nursery | None = None
        self._ctx: ProxyContext | None = None
        self._own_tracer = trace is not None
        if trace is not None:
            from sidecar.observe.tracing import Tracer

            tracer = Tracer(trace, self.metrics)
        self.tracer = tracer

    # -- public ---------------------------------------------------------------------------
    @property
    def context(self) -> ProxyContext | None:
        """What its connection handlers share (None until running)."""
        return self._ctx

    @property
    def snapshot(self) -> Snapshot | None:
        return self.store.current if self.store else None

    def bound_port(self, address: str, port: int) -> int:
        """The port actually bound for a configured listener (they differ under a bind hook)."""
        return self.listeners[ListenerKey(address=address, port=port)][1]

    async def run(
        self, *, task_status: trio.TaskStatus[EdgeServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        snap = self._load(1)
        self._stamp = FileStamp.of(self.paths, snap.sources)
        # Everything a user can get wrong (files, certificates, ports) fails here, before
        # any task runs.
        tls = _terminations(snap)
        opened = self._bind(snap)
        admin = self._bind_admin(self.admin_port) if self.admin_port is not None else None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.store = SnapshotStore(snap)
            self.idle = IdleTracker(
                idle_timeout_s=snap.limits.idle_timeout_s,
                header_timeout_s=snap.limits.header_timeout_s,
            )
            self._ctx = ProxyContext(
                store=self.store,
                clusters=self.clusters,
                metrics=self.metrics,
                access_log=self.access_log,
                background=nursery,
                idle=self.idle,
                tls=tls,
                direction=self.direction,
                service=self.service,
                tracer=self.tracer,
                sidecar_upstreams=self.clusters.connector is not plain,
            )
            self.clusters.nursery = nursery  # active health checks run there
            self._sync_state(snap)
            self._serve(opened)
            if admin is not None:
                self._serve_admin(nursery, admin)
            self._publish(snap)
            nursery.start_soon(self.access_log.run)
            if self._own_tracer and self.tracer is not None:
                nursery.start_soon(self.tracer.run)
            nursery.start_soon(run_sweeper, self.idle)
            nursery.start_soon(self.jwks_state.run)
            nursery.start_soon(self._watch_files)
            if self.signals:
                nursery.start_soon(self._watch_sighup)
                nursery.start_soon(self._watch_sigterm, nursery)
            if self.worker:
                nursery.start_soon(self._watch_supervisor, nursery)
            task_status.started(self)
        self.clusters.close()

    def reload(self) -> bool:
        """Load the files again; True when a new snapshot is in force."""
        try:
            snap = self._load(self._version + 1)
            tls = _terminations(snap)
            opened = self._bind(snap)
        except ConfigError as exc:
            self.last_error = str(exc)
            self.metrics.inc("weft_config_reload_failures_total")
            log.error("configuration rejected, keeping version %d: %s", self._version, exc)
            return False
        assert self.store is not None and self._ctx is not None
        self._serve(opened)
        self._ctx.tls = tls
        self.store.swap(snap)
        self.idle.idle_timeout_s = snap.limits.idle_timeout_s
        self.idle.header_timeout_s = snap.limits.header_timeout_s
        self._sync_state(snap)
        for key in [k for k in self.listeners if k not in snap.routers]:
            scope, port = self.listeners.pop(key)
            scope.cancel()
            log.info("listener %s:%d closed (established connections continue)", key.address, port)
        self.last_error = ""
        self._publish(snap)
        return True

    def _sync_state(self, snap: Snapshot) -> None:
        """Give the snapshot's filters and clusters the state kept across snapshots."""
        self.clusters.sync(snap.clusters, time.perf_counter())
        self.limits_state.sync(snap.limiters)
        self.cache_state.sync(snap.caches)
        self.jwks_state.sync(snap.jwks)
        if self.global_limits is not None:
            self.global_limits.sync(snap.global_limiters)

    def drain(self) -> None:
        """Stop accepting; open connections finish what they carry (HTTP/1 responses say
        `Connection: close`, HTTP/2 connections send GOAWAY) and then close."""
        self.draining = True
        for scope, _ in self.listeners.values():
            scope.cancel()
        self.listeners.clear()
        if self._ctx is not None:
            self._ctx.draining.set()
        self.idle.close_idle()

    @property
    def open_connections(self) -> int:
        return len(self.idle.tracked)

    # -- internals ------------------------------------------------------------------------
    def _breakers(self) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
        """`weft_circuit_open{cluster}`: endpoints whose breaker is open (ejected) now."""
        return [
            ("weft_circuit_open", (("direction", self.direction), ("cluster", name)), n)
            for name, n in self.clusters.circuit_open(time.perf_counter())
        ]

    def _load(self, version: int) -> Snapshot:
        if self.source is not None:
            snap = self.source(version)
        else:
            snap = load_snapshot(
                self.paths, version=version, gateway_class=self.gateway_class, limits=self.limits,
                refused=self.refused, ingress=self.ingress,
            )  # fmt: skip
        if snap.global_limiters and self.global_limits is None:
            names = ", ".join(f.name for f in snap.global_limiters)
            raise ConfigError(f"BackendTrafficPolicy {names}: a Global rate limit counts in "
                              "Redis: give meshctl edge --ratelimit-redis redis://HOST:PORT "
                              "(or WEFT_RATELIMIT_REDIS)")  # fmt: skip
        for warning in snap.warnings:
            log.warning("%s", warning)
        return snap

    def _sources(self) -> tuple[str, ...]:
        """Files the snapshot in force was read from, certificate files included."""
        snap = self.snapshot
        return snap.sources if snap is not None else ()

    def _publish(self, snap: Snapshot) -> None:
        # A snapshot lives until the next reload: keep the cyclic GC from walking its
        # (possibly hundreds of thousands of) objects on every full collection.
        gc.unfreeze()  # let the previous snapshot be collected
        gc.collect()
        gc.freeze()
        self._version = snap.version
        self.metrics.gauges["weft_config_version"] = snap.version
        log.info(
            "configuration version %d in force: %d listener port(s), %d cluster(s)",
            snap.version,
            len(snap.routers),
            len(snap.clusters),
        )

    def _bind(self, snap: Snapshot) -> list[tuple[ListenerKey, socket.socket]]:
        """Open sockets for listeners not open yet: all of them or none (ConfigError)."""
        opened: list[tuple[ListenerKey, socket.socket]] = []
        if self.draining:
            return opened
        try:
            for key in snap.routers:
                if key in self.listeners:
                    continue
                address, port = self.bind(key)
                try:
                    opened.append((key, open_listener(address, port, reuse_port=self.worker)))
                except OSError as exc:  # its message names the address it could not bind
                    moved = (address, port) != (key.address, key.port)
                    source = f"listener {key.address}:{key.port}" if moved else ""
                    raise ConfigError(str(exc.strerror), source=source) from None
        except ConfigError:
            for _, sock in opened:
                sock.close()
            raise
        return opened

    def _serve(self, opened: list[tuple[ListenerKey, socket.socket]]) -> None:
        assert self._nursery is not None and self._ctx is not None
        for key, sock in opened:
            scope = trio.CancelScope()
            bound = sock.getsockname()[1]
            self.listeners[key] = (scope, bound)
            own = self.serve(key) if self.serve is not None else None
            handler = own or functools.partial(serve_downstream, self._ctx, key)
            serve = functools.partial(accept_loop, app=self.direction == "outbound")
            self._nursery.start_soon(_scoped, scope, serve, sock, handler, self._nursery)
            log.info("listening on %s:%d", sock.getsockname()[0], bound)

    def _bind_admin(self, port: int) -> socket.socket:
        try:
            sock = open_listener(self.admin_address, port)
        except OSError as exc:
            raise ConfigError(
                str(exc.strerror),
                source="admin",
            ) from None
        self.admin_bound_port = sock.getsockname()[1]
        return sock

    def _serve_admin(self, nursery: trio.Nursery, sock: socket.socket) -> None:
        state = AdminState(
            dump=lambda: describe(self.snapshot),
            metrics=self.metrics,
            drain=self.drain,
            ready=lambda: self.store is not None and not self.draining,
            purge=self.cache_state.purge,
        )
        nursery.start_soon(accept_loop, sock, functools.partial(serve_admin, state), nursery)

    async def _watch_files(self) -> None:
        if self.watch_interval_s <= 0 or self.source is not None or self.worker:
            return
        while True:
            await trio.sleep(self.watch_interval_s)
            stamp = FileStamp.of(self.paths, self._sources())
            if stamp != self._stamp:
                self._stamp = stamp
                log.info("configuration files changed; reloading")
                self.reload()

    async def _watch_sigterm(self, nursery: trio.Nursery) -> None:
        """SIGTERM: drain, wait for connections to finish (at most `drain_timeout_s`), exit."""
        try:
            receiver = trio.open_signal_receiver(signal.SIGTERM)
        except (RuntimeError, ValueError):
            return
        with receiver as signals:
            async for _ in signals:
                break
        await self._drain_and_stop(nursery, "SIGTERM")

    async def _watch_supervisor(self, nursery: trio.Nursery) -> None:
        """A worker's stdin is a pipe from its supervisor: EOF means the supervisor is gone."""
        stdin = trio.lowlevel.FdStream(os.dup(0))
        async with stdin:
            while await stdin.receive_some():
                pass
        await self._drain_and_stop(nursery, "the supervisor is gone")

    async def _drain_and_stop(self, nursery: trio.Nursery, why: str) -> None:
        """Drain, wait for connections to finish (at most `drain_timeout_s`), stop."""
        log.info("%s: draining %d connection(s)", why, self.open_connections)
        self.drain()
        with trio.move_on_after(self.drain_timeout_s):
            await self.idle.wait_empty()
        nursery.cancel_scope.cancel()

    async def _watch_sighup(self) -> None:
        try:
            receiver = trio.open_signal_receiver(signal.SIGHUP)
        except (RuntimeError, ValueError):  # not the main thread: no signal delivery
            return
        with receiver as signals:
            async for _ in signals:
                log.info("SIGHUP: reloading configuration")
                self._stamp = FileStamp.of(self.paths, self._sources())
                self.reload()


def _terminations(snap: Snapshot) -> dict[ListenerKey, ServerTls]:
    """TLS contexts for the snapshot's HTTPS ports (ConfigError if OpenSSL refuses one)."""
    from sidecar.http.terminate import ServerTls

    return {
        key: ServerTls(router) for key, router in snap.routers.items() if router.protocol == "HTTPS"
    }


async def _scoped(scope: trio.CancelScope, fn: Callable[..., object], *args: object) -> None:
    with scope:
        await fn(*args)  # type: ignore[misc]
