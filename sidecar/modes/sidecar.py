"""Sidecar mode: the workload's identity, and its inbound mTLS listener in front of the app.

Theory of operation. On start the sidecar gets an SVID for its join token from the control
plane (`Identity.Sign`, through the identity helper process: the key, the CSR and the gRPC call
happen there, so grpcio and cryptography never load into the data plane), and only then opens
its listeners and reports ready. It renews at about two thirds of the SVID's life (with
jitter, so a fleet does not renew at once) by proving the current SVID; each renewal builds new
TLS contexts, which new connections use while open ones keep theirs. A failed renewal is
retried with backoff while the current SVID is still valid.

Inbound (15006) accepts only mutual TLS 1.3 from workloads of the trust domain, then serves
HTTP/1.1 or HTTP/2 (by ALPN) to the local app on `--app-port` through the same request
handler as the edge, with `direction="inbound"` in metrics.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import random
import signal
import ssl
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import trio

from ca.spiffe import SpiffeId
from sidecar.admin import AdminState, serve_admin
from sidecar.authz import Decision, Policy, decide
from sidecar.config.compile import compile_snapshot
from sidecar.config.dump import describe
from sidecar.config.mesh import mesh_default_allow, outbound_config
from sidecar.config.model import ClusterSpec, ListenerKey, RouteAction
from sidecar.config.parse import Document, load_documents
from sidecar.config.snapshot import Snapshot
from sidecar.config.store import SnapshotStore
from sidecar.config.watch import ConfigWatch
from sidecar.entry import handshake_failed
from sidecar.errors import ConfigError
from sidecar.http.context import ProxyContext
from sidecar.http.http1 import serve_http1
from sidecar.identity.fetch import fetch_svid
from sidecar.identity.svid import IdentityError, Svid, SvidRequest
from sidecar.modes import outbound
from sidecar.modes.outbound import to_cluster
from sidecar.observe.accesslog import AccessLog
from sidecar.observe.metrics import Metrics
from sidecar.tcp.proxy import serve_tcp
from sidecar.transport import mtls
from sidecar.transport.idle import IdleTracker, run_sweeper
from sidecar.transport.io import Conn, Connector, connect_app, local_address_towards
from sidecar.transport.listen import Handler, accept_loop, open_listener
from sidecar.transport.tls import TlsHandshakeError
from sidecar.upstream.manager import ClusterManager

if TYPE_CHECKING:
    from sidecar.config.ingress import IngressListeners
    from sidecar.discovery.register import ConsulRegistration
    from sidecar.modes.edge import EdgeServer
    from sidecar.observe.tracing import TraceOptions, Tracer

SERVED = ("inbound", "edge")  # what `meshctl top` counts: requests served, not made

log = logging.getLogger("weft.sidecar")

DRAIN_TIMEOUT_S = 15.0
RENEW_JITTER = 0.05  # ± of the lifetime around the 2/3 mark
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(kw_only=True)
class SidecarOptions:
    service: str
    namespace: str = "default"
    version: str = ""
    app_port: int
    control_plane: str
    token: str
    ca_file: str | None = None
    ca_fingerprint: str | None = None
    inbound_address: str = "0.0.0.0"
    inbound_port: int = 15006
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    files: tuple[str, ...] = ()  # outbound routes and peers, as `meshctl edge` reads them
    default_allow: bool = True  # for services no ALLOW AuthorizationPolicy names
    upstreams: tuple[tuple[str, int], ...] = ()  # (service, local port): opaque tunnels
    # The services the app calls ("NAME" or "NAMESPACE/NAME"): the control plane then sends
    # only those (and what their routes need). Empty: every service in the mesh.
    calls: tuple[str, ...] = ()
    # Without `files`, the outbound side comes from the control plane's config watch:
    outbound_address: str = "127.0.0.1"
    outbound_port: int = 15001
    protocol: str = "HTTP"  # what the app speaks: HTTP | HTTP2 | GRPC | TCP
    advertise: str = ""  # the address peers reach the inbound port at (default: inferred)
    gateway: bool = False  # an edge gateway in the mesh: also serves the pushed Gateways
    discovery: str = ""  # consul://HOST:PORT: register with that Consul agent while ready
    consul_token: str = ""  # else CONSUL_HTTP_TOKEN
    trace: TraceOptions | None = None  # export spans (service fields filled in by the sidecar)
    trust_bundle: str | None = None  # CAs (PEM) for HTTPS the edge calls (remote JWKS)
    ratelimit_redis: str | None = None  # where global rate limits count (an edge)
    ratelimit_fail_closed: bool = False
    ingress: IngressListeners | None = None  # an edge in the mesh: where its Ingresses are served
    # Transparent interception (`meshctl init` redirects the namespace's TCP here): the
    # outbound port serves redirected connections by the address they were going to.
    intercept: bool = False
    outbound_policy: str = "allow-any"  # or registry-only: refuse addresses outside the mesh


# Only this sidecar says which errors it answered itself (http/forward.py): its app's
# answers lose the field.
UNMARK = {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["x-weft-error"]}}


def inbound_snapshot(opts: SidecarOptions, listener: ListenerKey) -> Snapshot:
    """Inbound routing: every request to the local app (compiled like any configuration)."""
    ns, app = opts.namespace, opts.service
    docs: list[dict[str, Any]] = [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "inbound", "namespace": ns},
         "spec": {"addresses": [{"type": "IPAddress", "value": listener.address}],
                  "listeners": [{"name": "inbound", "port": listener.port, "protocol": "HTTP"}]}},
        {"apiVersion": "weft.dev/v1alpha1", "kind": "Service",
         "metadata": {"name": app, "namespace": ns},
         "spec": {"ports": [{"port": opts.app_port, "protocol": opts.protocol}],
                  "endpoints": [{"address": "127.0.0.1", "port": opts.app_port,
                                 "version": opts.version}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "inbound", "namespace": ns},
         "spec": {"parentRefs": [{"name": "inbound"}],
                  "rules": [{"backendRefs": [{"name": app, "port": opts.app_port}],
                             "filters": [UNMARK]}]}},
        # The caller's sidecar retries elsewhere (what never reached the app is marked as
        # such); retrying here too would multiply tries. One local app: nothing to eject.
        {"apiVersion": "weft.dev/v1alpha1", "kind": "BackendTrafficPolicy",
         "metadata": {"name": "inbound", "namespace": ns},
         "spec": {"targetRef": {"kind": "Service", "name": app}, "retry": {"attempts": 0},
                  "outlierDetection": {"enabled": False}}},
    ]  # fmt: skip
    resources = load_documents(Document(d, f"inbound {i}") for i, d in enumerate(docs))
    return compile_snapshot(resources, version=1)


class Identity:
    """The SVID in force and the TLS contexts made from it (clients offer one ALPN protocol,
    the one the upstream cluster speaks)."""

    def __init__(self, svid: Svid) -> None:
        self.svid = svid
        self.received = datetime.datetime.now(datetime.UTC)
        self.server_ctx: ssl.SSLContext = mtls.server_context(svid)
        self.client_h1: ssl.SSLContext = mtls.client_context(svid, alpn=["http/1.1"])
        self.client_h2: ssl.SSLContext = mtls.client_context(svid, alpn=["h2"])
        self.client_tcp: ssl.SSLContext = mtls.client_context(svid, alpn=[])  # opaque tunnels


class SidecarServer:
    def __init__(self, opts: SidecarOptions, *, access_log: TextIO | None = None) -> None:
        self.opts = opts
        self.metrics = Metrics()
        self.access_log = AccessLog(access_log)
        self.access_log_sink = access_log
        self.outbound: EdgeServer | None = None
        self.renewals = 0
        self.upstream_ports: dict[str, int] = {}
        self.identity: Identity | None = None
        self.trust_pem = b""
        self.inbound_port = 0
        self.admin_port = 0
        self.draining = False
        self.refused = ""  # why the last configuration pushed was refused ("" in force)
        self.spiffe_id: SpiffeId | None = None
        self._route_address = "127.0.0.1"  # see advertise_address
        self.intercept_problem = ""  # why intercepted traffic is refused (outbound.captured)
        self.relaying: set[tuple[str, int]] = set()  # local ends of relayed connections
        self._ctx: ProxyContext | None = None
        self.watch: ConfigWatch | None = None
        self.consul: ConsulRegistration | None = None
        self.instance_id = uuid.uuid4().hex[:12]
        self.default_allow = opts.default_allow
        self._pushed: list[dict[str, Any]] = []  # the control plane's documents in force
        self._nursery: trio.Nursery | None = None
        self.configured = trio.Event()
        self.config_changed = trio.Event()  # set (and replaced) whenever a snapshot goes in force
        self.identity_changed = trio.Event()  # ... and whenever a new SVID does
        self.tracer: Tracer | None = None
        if opts.trace is not None:
            from sidecar.observe.tracing import Tracer

            trace = dataclasses.replace(
                opts.trace, service=opts.service, namespace=opts.namespace,
                version=opts.version, instance=self.instance_id,
            )  # fmt: skip
            self.tracer = Tracer(trace, self.metrics)

    async def run(
        self, *, task_status: trio.TaskStatus[SidecarServer] = trio.TASK_STATUS_IGNORED
    ) -> None:
        opts = self.opts
        trust = await trio.Path(opts.ca_file).read_bytes() if opts.ca_file else None
        svid = await fetch_svid(
            SvidRequest(
                control_plane=opts.control_plane, namespace=opts.namespace, service=opts.service,
                trust_pem=trust, ca_fingerprint=opts.ca_fingerprint, token=opts.token,
            )
        )  # fmt: skip
        self.spiffe_id = svid.identity
        self._install(svid)
        if not opts.advertise:
            where = opts.control_plane
            self._route_address = await trio.to_thread.run_sync(local_address_towards, where)
        inbound = open_listener(opts.inbound_address, opts.inbound_port)
        admin = open_listener(opts.admin_address, opts.admin_port)
        self.inbound_port = inbound.getsockname()[1]
        self.admin_port = admin.getsockname()[1]
        key = ListenerKey(address=opts.inbound_address, port=self.inbound_port)
        snap = inbound_snapshot(opts, key)
        async with trio.open_nursery() as nursery:
            idle = IdleTracker(idle_timeout_s=300.0, header_timeout_s=30.0)
            self._ctx = ctx = ProxyContext(
                store=SnapshotStore(snap),
                clusters=ClusterManager(connector=lambda spec: connect_app),
                metrics=self.metrics,
                access_log=self.access_log,
                background=nursery,
                idle=idle,
                service=opts.service,
                direction="inbound",
                authorize=self._authorize,
                identity=self.spiffe_id,
                tracer=self.tracer,
            )
            ctx.clusters.sync(snap.clusters, 0.0)
            nursery.start_soon(run_sweeper, idle)
            nursery.start_soon(self.access_log.run)
            if self.tracer is not None:
                nursery.start_soon(self.tracer.run)
            nursery.start_soon(accept_loop, inbound, functools.partial(self._inbound, key), nursery)
            state = AdminState(
                dump=self._config_dump,
                metrics=self.metrics,
                drain=self.drain,
                ready=self._ready,
                problem=lambda: self.refused or self.intercept_problem,
            )
            nursery.start_soon(accept_loop, admin, functools.partial(serve_admin, state), nursery)
            nursery.start_soon(self._renew)
            nursery.start_soon(self._watch_sigterm, nursery)
            self._nursery = nursery
            if opts.files:
                from sidecar.modes.edge import EDGE_ONLY, EdgeServer

                self.outbound = EdgeServer(
                    opts.files, admin_port=None, metrics=self.metrics, connector=self._connector,
                    direction=self._outbound_direction, service=opts.service,
                    access_log=self.access_log_sink, signals=False, tracer=self.tracer,
                    refused=EDGE_ONLY, serve=self._serve_hook,
                )  # fmt: skip
                await nursery.start(self.outbound.run)
            else:
                self.watch = ConfigWatch(
                    opts.control_plane, lambda: self._svid().bundle_pem, self._hello, self._apply,
                    stats=functools.partial(self.metrics.summary, SERVED),
                )  # fmt: skip
                nursery.start_soon(self.watch.run)
                await self.configured.wait()  # ready means identity and first configuration
            for service, port in opts.upstreams:
                sock = open_listener("127.0.0.1", port)
                self.upstream_ports[service] = sock.getsockname()[1]
                handler = functools.partial(outbound.upstream_port, self, service)
                nursery.start_soon(functools.partial(accept_loop, app=True), sock, handler, nursery)
            if opts.intercept and self.outbound is not None:
                self._capture_ipv6(nursery)
            if opts.discovery:
                self.consul = self._consul_registration()
                nursery.start_soon(self.consul.run)
            log.info("%s ready: inbound mTLS on port %d", self.spiffe_id, self.inbound_port)
            task_status.started(self)

    def _consul_registration(self) -> ConsulRegistration:
        """Registration with the local Consul agent (httpx loads only in this mode)."""
        from sidecar.discovery.consul import Registration, parse_url
        from sidecar.discovery.consul_client import ConsulClient
        from sidecar.discovery.register import ConsulRegistration

        opts = self.opts
        wildcard = opts.admin_address in ("0.0.0.0", "::")
        admin_host = self.advertise_address if wildcard else opts.admin_address
        if ":" in admin_host:
            admin_host = f"[{admin_host}]"
        reg = Registration(
            service=opts.service, namespace=opts.namespace, version=opts.version,
            protocol=opts.protocol, address=self.advertise_address, port=self.inbound_port,
            check_url=f"http://{admin_host}:{self.admin_port}/ready", identity=str(self.spiffe_id),
        )  # fmt: skip
        config = parse_url(opts.discovery, token=opts.consul_token)
        return ConsulRegistration(ConsulClient(config), reg)

    async def _watch_sigterm(self, nursery: trio.Nursery) -> None:
        """SIGTERM: drain the inbound side and wait for its requests; only then the
        outbound side, which carries the app's calls until then (an app answering its last
        requests may still call out); exit (all of it in at most 15 s)."""
        try:
            receiver = trio.open_signal_receiver(signal.SIGTERM)
        except (RuntimeError, ValueError):  # not the main thread (tests)
            return
        with receiver as signals:
            async for _ in signals:
                break
        log.info("SIGTERM: draining")
        self.drain(outbound=False)
        assert self._ctx is not None
        with trio.move_on_after(DRAIN_TIMEOUT_S):
            if self.consul is not None:  # out of Consul first, then the last requests
                await self.consul.done.wait()
            await self._ctx.idle.wait_empty()
            if self.outbound is not None:
                self.outbound.drain()
                await self.outbound.idle.wait_empty()
        nursery.cancel_scope.cancel()

    def _config_dump(self) -> dict[str, Any]:
        """/config_dump: the outbound configuration (from the control plane or files) and
        the inbound listener."""
        assert self._ctx is not None
        outbound = self.outbound.snapshot if self.outbound is not None else None
        return {"outbound": describe(outbound), "inbound": describe(self._ctx.store.current)}

    def _ready(self) -> bool:
        """Identity loaded, outbound configuration in force, not draining, and (with
        interception) its own traffic not intercepted."""
        return (self.identity is not None and self.outbound is not None and not self.draining
                and not self.intercept_problem)  # fmt: skip

    def _svid(self) -> Svid:
        assert self.identity is not None
        return self.identity.svid

    @property
    def advertise_address(self) -> str:
        """Where peers reach the inbound port: as told, else the inbound address, else (a
        wildcard) the address this host reaches the control plane from."""
        opts = self.opts
        return opts.advertise or (
            opts.inbound_address if opts.inbound_address not in ("0.0.0.0", "::")
            else self._route_address
        )  # fmt: skip

    def _hello(self) -> dict[str, Any]:
        opts = self.opts
        instance = {
            "id": self.instance_id, "namespace": opts.namespace, "service": opts.service,
            "version": opts.version, "address": self.advertise_address, "port": self.inbound_port,
            "protocol": opts.protocol, "app_port": opts.app_port,
        }  # fmt: skip
        svid = self._svid()
        hello = {
            "session": svid.session,
            "instance": instance,
            "expires": svid.not_after.isoformat(),
            "gateway": opts.gateway,
        }
        if opts.calls:
            hello["calls"] = sorted({*opts.calls, *(service for service, _ in opts.upstreams)})
        return {"hello": hello}

    async def _apply(self, version: int, resources: list[dict[str, Any]]) -> str | None:
        """A snapshot from the control plane: in force (None) or why not (NACKed)."""
        from sidecar.filters.global_ratelimit import global_limits
        from sidecar.filters.jwks import trust_context
        from sidecar.modes.edge import EdgeServer

        previous, self._pushed = self._pushed, resources
        try:
            if self.outbound is None:
                opts = self.opts
                outbound = EdgeServer(
                    (), admin_port=None, metrics=self.metrics, connector=self._connector,
                    direction=self._outbound_direction, service=opts.service,
                    access_log=self.access_log_sink, signals=False, source=self._compile,
                    bind=self._bind, tracer=self.tracer,
                    trust=trust_context(opts.trust_bundle),
                    ratelimit=global_limits(opts.ratelimit_redis,
                                            fail_closed=opts.ratelimit_fail_closed),
                    serve=self._serve_hook,
                )  # fmt: skip
                assert self._nursery is not None
                await self._nursery.start(outbound.run)
                self.outbound = outbound
            elif not self.outbound.reload():
                raise ConfigError(self.outbound.last_error)
        except ConfigError as exc:
            self._pushed = previous
            self.refused = f"configuration {version} from the control plane refused: {exc}"
            log.error("%s", self.refused)
            return str(exc)
        self.refused = ""
        self.default_allow = mesh_default_allow(resources, self.opts.default_allow)
        self.configured.set()
        self.config_changed.set()
        self.config_changed = trio.Event()
        log.info("configuration %d from the control plane in force", version)
        return None

    @property
    def _outbound_direction(self) -> str:
        """An edge gateway in the mesh serves clients from outside: its requests are the
        edge's (X-Forwarded-* set, a SERVER and a CLIENT span), not an app's calls out."""
        return "edge" if self.opts.gateway else "outbound"

    def _capture_ipv6(self, nursery: trio.Nursery) -> None:
        """REDIRECT sends IPv6 connections to ::1: the outbound port listens there too
        (where the namespace has IPv6)."""
        try:
            sock = open_listener("::1", self.outbound_port)
        except OSError as exc:
            log.info("no IPv6 capture: %s", exc.strerror)
            return
        handler = functools.partial(outbound.captured, self, self.outbound_key)
        nursery.start_soon(functools.partial(accept_loop, app=True), sock, handler, nursery)

    def _serve_hook(self, key: ListenerKey) -> Handler | None:
        """With interception, the outbound port serves connections by where they went."""
        if self.opts.intercept and key == self.outbound_key:
            return functools.partial(outbound.captured, self, key)
        return None

    def _bind(self, key: ListenerKey) -> tuple[str, int]:
        """Where a configured listener binds: the outbound one where the options say."""
        if key == self.outbound_key:
            return self.opts.outbound_address, self.opts.outbound_port
        return key.address, key.port

    @property
    def outbound_key(self) -> ListenerKey:
        """The outbound listener as configured (port 0 binds any port: tests)."""
        return ListenerKey(
            address=self.opts.outbound_address, port=self.opts.outbound_port or 15001
        )

    @property
    def outbound_port(self) -> int:
        """The outbound listener's bound port (mesh mode, once configured)."""
        assert self.outbound is not None
        key = self.outbound_key
        return self.outbound.bound_port(key.address, key.port)

    def _compile(self, version: int) -> Snapshot:
        out = outbound_config(self._pushed, self.outbound_key, self.opts.namespace)
        resources = load_documents(
            Document(d, f"control plane document {i}") for i, d in enumerate(out.documents, 1)
        )
        notes: list[str] = []
        if self.opts.gateway:  # an edge in the mesh serves the pushed Ingresses too
            from sidecar.config.ingress import IngressListeners, served

            extra, notes = served(resources, self.opts.ingress or IngressListeners(), "weft")
            resources += extra
        snap = compile_snapshot(resources, version=version)
        return dataclasses.replace(snap, mesh=out.names, warnings=snap.warnings + tuple(notes))

    def drain(self, *, outbound: bool = True) -> None:
        """Leave the endpoints (through the control plane or Consul) and stop the inbound
        side taking new work; `outbound`: the app's side too."""
        self.draining = True
        if self.consul is not None:
            self.consul.drain()
        if self.watch is not None and self._nursery is not None:
            self._nursery.start_soon(self.watch.send, {"drain": {}})
        if self._ctx is not None:
            self._ctx.draining.set()
            self._ctx.idle.close_idle()
        if outbound and self.outbound is not None:
            self.outbound.drain()

    def _connector(self, spec: ClusterSpec) -> Connector:
        """Upstreams are peer sidecars: mTLS, and the peer must be the cluster's service."""
        assert self.spiffe_id is not None
        expected = SpiffeId(self.spiffe_id.trust_domain, spec.namespace, spec.service)
        h2 = spec.protocol in ("HTTP2", "GRPC")

        async def connect(address: str, port: int, timeout_s: float) -> Conn:
            assert self.identity is not None
            ctx = self.identity.client_h2 if h2 else self.identity.client_h1
            return await mtls.connect(ctx, address, port, expected, timeout_s)

        return connect

    def _install(self, svid: Svid) -> None:
        self.identity = Identity(svid)
        self.identity_changed.set()
        self.identity_changed = trio.Event()
        self._expiry_gauge()
        log.info("SVID %s valid until %s", svid.identity, svid.not_after.isoformat())

    def _expiry_gauge(self) -> None:
        if self.identity is not None:
            left = self.identity.svid.not_after - datetime.datetime.now(datetime.UTC)
            self.metrics.gauges["weft_cert_expiry_seconds"] = max(0.0, left.total_seconds())

    async def _renew(self) -> None:
        failures = 0
        while True:
            assert self.identity is not None and self.spiffe_id is not None
            current = self.identity.svid
            at = current.renew_at(
                self.identity.received, random.uniform(-RENEW_JITTER, RENEW_JITTER)
            )
            while (wait := (at - datetime.datetime.now(datetime.UTC)).total_seconds()) > 0:
                await trio.sleep(min(wait, 10.0))
                self._expiry_gauge()
            # Renewal proves the current SVID; once it has expired (the control plane was
            # away too long) only the join token can still prove anything.
            expired = datetime.datetime.now(datetime.UTC) >= current.not_after
            request = SvidRequest(
                control_plane=self.opts.control_plane,
                namespace=self.opts.namespace,
                service=self.opts.service,
                trust_pem=current.bundle_pem,
                current=None if expired else current,
                token=self.opts.token if expired else "",
            )
            try:
                svid = await fetch_svid(request)
            except IdentityError as exc:
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                self.metrics.inc("weft_cert_renewal_failures_total")
                log.warning("SVID renewal failed (%s); retrying in %gs", exc, delay)
                await trio.sleep(delay)
                continue
            failures = 0
            self.renewals += 1
            self._install(svid)

    async def _inbound(self, key: ListenerKey, conn: Conn) -> None:
        assert self.identity is not None and self._ctx is not None
        ctx = self._ctx
        tconn = mtls.accept(self.identity.server_ctx, conn)
        reason = "timeout"
        with trio.move_on_after(ctx.store.current.limits.tls_handshake_timeout_s):
            try:
                await tconn.handshake()
                reason = ""
            except TlsHandshakeError as exc:
                reason = str(exc)
        peer = mtls.peer_identity(tconn) if not reason else None
        if peer is None:
            handshake_failed(ctx, reason or "no_spiffe_id")
            tconn.close()
            return
        log.debug("inbound connection from %s (%s), ALPN %s", peer, tconn.peer, tconn.alpn)
        if tconn.alpn == "h2":
            from sidecar.http.h2server import serve_http2

            await serve_http2(ctx, key, tconn, scheme="https", peer_id=peer)
        elif tconn.alpn == "http/1.1":
            await serve_http1(ctx, key, tconn, scheme="https", peer_id=peer)
        else:  # no ALPN: an opaque tunnel (a peer's --upstream port) to the app
            decision = decide(
                self._policies(), namespace=self.opts.namespace, service=self.opts.service,
                peer=peer, default_allow=self.default_allow,
            )  # fmt: skip
            if not decision.allowed:
                ctx.metrics.inc("weft_tcp_denied_total", (("reason", decision.reason),))
                tconn.close()
                return
            await serve_tcp(ctx, tconn, self._app_route(ctx))

    def _app_route(self, ctx: ProxyContext) -> RouteAction | None:
        """The inbound snapshot's route to the app, for opaque tunnels."""
        name = next(iter(ctx.store.current.clusters), None)
        return to_cluster(name, "inbound/tcp") if name is not None else None

    def _policies(self) -> tuple[Policy, ...]:
        snap = self.outbound.snapshot if self.outbound is not None else None
        return snap.authz if snap is not None else ()

    def _authorize(self, peer: SpiffeId | None, method: str, path: str) -> Decision:
        """AuthorizationPolicies from the sidecar's files, for this service."""
        return decide(
            self._policies(),
            namespace=self.opts.namespace, service=self.opts.service, peer=peer,
            method=method, path=path, default_allow=self.default_allow,
        )  # fmt: skip
