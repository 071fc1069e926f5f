"""The downstream HTTP/1.1 connection: read requests, route them, forward, answer errors.

Theory of operation. One task per downstream connection runs requests one after another
(pipelined requests are answered in order because the next head is not looked at before
the previous response is written). Each request is routed on the snapshot current when
its head arrived and keeps that snapshot to the end, so a reload never changes a request
in flight. Idle and header timeouts are enforced by the shared sweeper (transport/idle.py)
through the connection's cancel scope; no deadline moves per request.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import trio

from sidecar.config.mesh import Destination, MeshNames, destination_host, mesh_unknown
from sidecar.config.model import Backend, ListenerKey, RouteAction, Snapshot
from sidecar.config.store import SnapshotStore
from sidecar.errors import DownstreamClosed, ProtocolError, UpstreamError
from sidecar.http.filters import HeaderOps, redirect_location
from sidecar.http.forward import (
    NOT_SENT_VALUE,
    PROXY_ERROR_HEADER,
    Http1Writer,
    Outcome,
    Relay,
    relay_http1,
)
from sidecar.http.pace import BodyPace, too_slow
from sidecar.http.request import (
    Forwarding,
    RequestIds,
    client_cert_line,
    h2_request_headers,
    parse_target,
    pick_backend,
    upstream_request,
)
from sidecar.http.router import normalize_host
from sidecar.http.tries import H2_PROTOCOLS, NoHealthyUpstream, Overloaded, Tries
from sidecar.observe.accesslog import AccessLog
from sidecar.observe.metrics import Metrics
from sidecar.protocol.grpc import GRPC_DEADLINE_EXCEEDED, grpc_timeout, is_grpc
from sidecar.protocol.http1 import (
    EDGE_KINDS,
    EDGE_TRACE_KINDS,
    MESH_KINDS,
    MESH_TRACE_KINDS,
    End,
    RequestHead,
    RequestParser,
)
from sidecar.protocol.wire import chunk, last_chunk, simple_response
from sidecar.tcp.relay import Counts, relay
from sidecar.transport.idle import IdleTracker, Tracked
from sidecar.transport.io import Conn, ConnectionLost
from sidecar.upstream.cluster import ClusterManager

if TYPE_CHECKING:  # HTTP/2 and TLS load on first use: a plain gateway stays small
    from ca.spiffe import SpiffeId
    from sidecar.authz import Decision
    from sidecar.http.forward_h2 import ResponseWriter
    from sidecar.http.terminate import ServerTls
    from sidecar.observe.tracing import Tracer

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Bodies of requests answered locally are read and dropped up to this size so the
# connection stays usable; past it the connection is closed instead.
DISCARD_LIMIT = 256 * 1024


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


async def serve_http1(
    ctx: ProxyContext,
    listener: ListenerKey,
    conn: Conn,
    *,
    scheme: str = "http",
    sni: str | None = None,
    initial: bytes = b"",
    peer_id: SpiffeId | None = None,
    destination: Destination | None = None,
) -> None:
    """Serve one downstream connection until it closes, errs or idles out. `sni` is the
    server name a TLS client asked for: requests for another listener get 421; `initial`
    holds bytes already read from the connection; `destination`: the mesh Service port
    the connection was made for (a sidecar's `--upstream` port), whatever Host says."""
    limits = ctx.store.current.limits
    edge = ctx.direction == "edge"
    if ctx.tracer is None:
        kinds = EDGE_KINDS if edge else MESH_KINDS
    else:
        kinds = EDGE_TRACE_KINDS if edge else MESH_TRACE_KINDS
    parser = RequestParser(
        max_header_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        max_body_bytes=limits.max_request_body_bytes,
        upgrades=limits.upgrades,
        kinds=kinds,
    )
    events = parser.events
    scope = trio.CancelScope()
    handler = _Http1(ctx, listener, conn, parser, scheme, sni, peer_id, destination)
    tracked = Tracked(
        activity=lambda: conn.activity,
        # the first head is timed from the connection's start (a silent client too)
        in_head=lambda: parser.partial_head or handler.snapshot is None,
        cancel=scope.cancel,
        busy=lambda: handler.busy or parser.partial_head,
    )
    ctx.idle.add(tracked, trio.current_time())
    try:
        with scope:
            if initial:
                parser.feed(initial)
            while True:
                while not events:
                    data = await conn.recv()
                    if not data:
                        return
                    parser.feed(data)
                head = events.popleft()
                if not isinstance(head, RequestHead):  # cannot happen: bodies are consumed
                    return
                handler.busy = True
                handler.pace = None
                if not await handler.handle(head, handler) or ctx.draining.is_set():
                    return
                handler.busy = False
        if scope.cancelled_caught and parser.partial_head:
            await _best_effort(conn, simple_response(408, b"request timeout\n", close=True))
    except ProtocolError as exc:
        read = next((e for e in events if isinstance(e, RequestHead)), None)
        log_refused(ctx, handler.peer_text, "HTTP/1.1", exc, *_named(read))
        await _best_effort(conn, simple_response(exc.status, f"{exc}\n".encode(), close=True))
    except (ConnectionLost, DownstreamClosed):
        pass
    finally:
        ctx.idle.discard(tracked)
        conn.close()


def _named(head: RequestHead | None) -> tuple[str, str, str]:
    """(method, authority, path) of a refused HTTP/1 request, as far as it was read."""
    if head is None:
        return "-", "", ""
    if head.method == "CONNECT":
        return head.method, head.target, ""
    return head.method, head.host, head.target


def log_refused(
    ctx: ProxyContext, peer: str, protocol: str, exc: ProtocolError,
    method: str = "-", authority: str = "", path: str = "",
) -> None:  # fmt: skip
    """A request refused before it could be routed (malformed, CONNECT, over a limit) is
    still a request answered: counted, and a line in the access log saying why."""
    ctx.metrics.request((ctx.direction, ctx.service, "", ""), exc.status, 0.0)
    if ctx.access_log.enabled:
        why = re.sub(r"\W+", "_", str(exc).lower()).strip("_")[:64]
        ctx.access_log.record(
            start=time.time(), duration_s=0.0, downstream=peer,
            method=method if _METHOD.match(method) else "-", authority=authority, path=path,
            protocol=protocol, status=exc.status, bytes_in=0, bytes_out=0, route="",
            upstream="", request_id="", detail=f"refused_{why}",
        )  # fmt: skip


_METHOD = re.compile(r"[A-Z]{1,20}\Z")


async def _best_effort(conn: Conn, data: bytes | bytearray) -> None:
    with trio.move_on_after(1.0), contextlib.suppress(ConnectionLost):
        await conn.send_all(data)


class Downstream(Protocol):
    """The protocol side of one request: how its body arrives and its answer leaves.

    HTTP/1.1 implements it per connection (`_Http1`), HTTP/2 per stream.
    """

    @property
    def relay(self) -> Relay: ...

    def protocol(self, head: RequestHead) -> str: ...

    async def next_event(self) -> bytes | End: ...

    def take_buffered_body(self, out: bytearray, chunked: bool) -> tuple[int, bool]: ...

    async def send_continue(self) -> None: ...

    def response_writer(
        self, head: RequestHead, ops: tuple[HeaderOps, ...], outcome: Outcome
    ) -> ResponseWriter: ...

    async def tunnel(self, upstream: Conn, first: bytes) -> Counts: ...

    async def local_reply(
        self,
        head: RequestHead,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool = False,
    ) -> bool: ...


class RequestHandler:
    """Routing, forwarding, metrics and logging of requests, whatever their protocol; one
    instance per downstream connection (it caches the connection's normalized Host)."""

    __slots__ = (
        "authority",
        "ctx",
        "destination",
        "fwd",
        "host",
        "listener",
        "mesh",
        "peer_id",
        "peer_text",
        "peer_uri",
        "port",
        "route_host",
        "scheme",
        "snapshot",
        "sni",
    )

    def __init__(
        self,
        ctx: ProxyContext,
        listener: ListenerKey,
        peer: tuple[str, int] | None,
        scheme: str,
        sni: str | None,
        peer_id: SpiffeId | None = None,
        destination: Destination | None = None,
    ) -> None:
        self.ctx = ctx
        self.destination = destination
        self.peer_id = peer_id  # the caller's verified SPIFFE ID (sidecar inbound)
        self.peer_uri = peer_id.uri if peer_id is not None else ""  # for spans and the log
        self.scheme = scheme
        self.sni = sni
        self.listener = listener
        self.peer_text = peer[0] if peer else "-"
        trace = ctx.tracer is not None
        if ctx.direction == "edge":
            self.fwd = Forwarding(self.peer_text.encode(), scheme.encode(), trace=trace)
        elif ctx.identity is not None and peer_id is not None:
            cert = client_cert_line(ctx.identity.uri, self.peer_uri)
            self.fwd = Forwarding(client_cert=cert, trace=trace)
        else:
            self.fwd = Forwarding(trace=trace)
        self.snapshot: Snapshot | None = None  # the last snapshot that had our listener
        self.authority: str | None = None
        self.host = ""
        self.mesh: MeshNames | None = None  # the snapshot's, when self.route_host was made
        self.route_host = ""  # what the route table is searched with
        self.port: int | None = None  # the mesh destination's port (redirects keep it)

    # -- one request --------------------------------------------------------------------
    async def handle(self, head: RequestHead, ds: Downstream) -> bool:
        """Answer one request; returns whether the connection may carry another."""
        ctx = self.ctx
        start = time.perf_counter()  # the data path's clock (pools, balancers, metrics)
        snapshot = ctx.store.current
        router = snapshot.routers.get(self.listener)
        if router is None and self.snapshot is not None:
            # Our listener left the configuration: finish on the last snapshot that had it
            # and close after this response so the client moves to the new listeners.
            snapshot = self.snapshot
            router = snapshot.routers.get(self.listener)
            head.keep_alive = False
        else:
            self.snapshot = snapshot
        if ctx.draining.is_set():
            head.keep_alive = False
        authority, target, path, query = parse_target(head, snapshot.limits)
        if authority != self.authority or snapshot.mesh is not self.mesh:
            # Clients repeat their Host: read it once per connection and configuration.
            self.authority, self.mesh = authority, snapshot.mesh
            self.host = self.route_host = normalize_host(authority)
            if self.mesh is not None and self.mesh.listener == self.listener:
                dest = self.destination or self.mesh.destination(authority)
                self.route_host = destination_host(dest) if dest is not None else ""
                self.port = dest[2] if dest is not None else None
        host = self.host
        match = None
        misdirected = False
        if router is not None:
            if self.sni is not None and self.sni != host:
                # A client may reuse a connection for another host its certificate covers;
                # only the listener the handshake chose may answer on it (RFC 9110 §15.5.20).
                misdirected = router.listener_for(host) is not router.listener_for(self.sni)
            if not misdirected:
                match = router.route(self.route_host, path, head.method, head.headers, query)
        outcome = Outcome(head.keep_alive)
        counted = False  # in the client's count of requests in flight
        route_label = peer_label = peer_service = detail = rid = ""
        retries = 0
        upstream_at = 0.0
        span = ctx.tracer.begin(head, ctx.direction) if ctx.tracer is not None else None
        trace = span.headers if span is not None else b""
        try:
            if misdirected:
                outcome.status = 421
                detail = "misdirected"
                return await ds.local_reply(head, 421, b"misdirected request\n")
            if ctx.authorize is not None:
                decision = ctx.authorize(self.peer_id, head.method, path)
                if not decision.allowed:
                    outcome.status = 403
                    detail = "denied"
                    why = decision.reason.encode("latin-1", "replace")
                    return await ds.local_reply(
                        head, 403, b"forbidden: " + why + b"\n", [(b"x-weft-denied", why)]
                    )
            if match is None:
                outcome.status = 404
                detail = "no_route"
                if not self.route_host:  # a mesh name that is not a service (or its port)
                    return await ds.local_reply(head, 404, mesh_unknown(self.authority or ""))
                return await ds.local_reply(head, 404, b"no route\n")
            action = match.action
            route_label = action.route
            if action.redirect is not None:
                lst = router.listener_for(host) if router is not None else None
                port = lst.port if lst is not None else self.listener.port
                location = redirect_location(
                    action.redirect,
                    scheme=self.scheme,
                    host=host,
                    listener_port=self.port or port,
                    target=target,
                    matched_prefix=match.path_value if match.path_type == "PathPrefix" else None,
                )
                outcome.status = action.redirect.status_code
                detail = "redirect"
                return await ds.local_reply(
                    head, outcome.status, b"", [(b"location", location.encode("latin-1"))]
                )
            backend = pick_backend(action, self.usable if action.split is not None else None)
            if backend is None or backend.cluster is None:
                outcome.status = 500
                detail = "invalid_backend"
                return await ds.local_reply(head, 500, b"no valid backend for this route\n")
            peer_label = backend.cluster
            cluster = ctx.clusters.get(backend.cluster)
            if cluster is None or not cluster.has_endpoints(start):
                raise NoHealthyUpstream(f"{backend.cluster} has no healthy endpoint")
            if snapshot.limits.max_requests_per_client:
                if not ctx.client_requests.enter(
                    self.peer_text, snapshot.limits.max_requests_per_client
                ):
                    raise Overloaded("client_requests", status=429)
                counted = True
            rid = head.request_id.decode("latin-1") if head.request_id else ctx.ids.new()
            if head.expect_continue and head.has_body:
                await ds.send_continue()
            spec = cluster.spec
            peer_service = spec.service
            policy = backend.retry or spec.retry
            tries = Tries(ctx, ds, head, cluster, backend, policy,
                          action.backend_request_timeout_s or policy.per_try_timeout_s,
                          outcome, start)  # fmt: skip
            deadline = action.request_timeout_s or spec.request_timeout_s
            grpc_deadline = grpc_timeout(head) if spec.protocol in H2_PROTOCOLS else None
            if grpc_deadline is not None and (deadline is None or grpc_deadline < deadline):
                deadline = grpc_deadline
            fields = None
            if spec.protocol in H2_PROTOCOLS:
                buffered = bytearray()
                outcome.bytes_in, body_done = ds.take_buffered_body(buffered, False)
                fields = h2_request_headers(
                    head, target, authority, action, backend, match, self.fwd, rid, trace
                )
                tries.prepare(buffered, body_done)
            else:
                request = upstream_request(
                    head, target, authority, action, backend, match, self.fwd, rid, trace
                )
                outcome.bytes_in, body_done = ds.take_buffered_body(request, head.chunked)
                if action.mirrors:
                    self.mirror(action, bytes(request) if body_done else None)
                tries.prepare(request, body_done)
            upstream_at = time.perf_counter()
            cluster.budget.request(upstream_at)
            cs = trio.CancelScope(relative_deadline=deadline) if deadline else None
            try:
                if cs is None:  # most routes: no cancel scope per request
                    await tries.run(fields)
                else:
                    with cs:
                        await tries.run(fields)
            finally:
                retries = tries.retries
            if outcome.tunnel is not None:  # 101: bytes both ways until either side ends
                upstream, first = outcome.tunnel
                try:
                    counts = await ds.tunnel(upstream, first)
                finally:
                    upstream.close()
                outcome.bytes_in += counts.up
                outcome.bytes_out += counts.down
                return False
            if cs is not None and cs.cancelled_caught:
                detail = "upstream_timeout"
                if outcome.response_started:
                    return False
                if grpc_deadline is not None:  # gRPC clients read the status from trailers
                    outcome.status = 200
                    outcome.grpc_status = 4  # DEADLINE_EXCEEDED
                    return await ds.local_reply(head, 200, b"", GRPC_DEADLINE_EXCEEDED)
                outcome.status = 504
                return await ds.local_reply(
                    head, 504, b"upstream timed out\n", [(PROXY_ERROR_HEADER, b"upstream_timeout")],
                    close=True,
                )  # fmt: skip
            return outcome.request_complete and outcome.downstream_keep_alive
        except ProtocolError as exc:  # the client broke framing or a limit mid-body
            detail = "downstream_protocol_error"
            if outcome.response_started:
                return False
            outcome.status = exc.status
            raise
        except UpstreamError as exc:
            detail = type(exc).__name__
            if outcome.response_started:
                return False
            outcome.status = exc.status
            body = f"upstream error: {exc}\n".encode("utf-8", "replace")
            # A caller's sidecar may retry what never reached the app, whatever its method.
            why = NOT_SENT_VALUE if exc.retryable else b"upstream_error"
            return await ds.local_reply(
                head, exc.status, body, [(PROXY_ERROR_HEADER, why)], close=True
            )
        except NoHealthyUpstream:
            detail = "no_healthy_upstream"
            outcome.status = 503
            return await ds.local_reply(
                head, 503, b"no healthy upstream\n", [(PROXY_ERROR_HEADER, b"no_healthy_upstream")]
            )
        except Overloaded as exc:  # a circuit-breaker limit: answer at once, queue nothing
            detail = f"overload_{exc.limit}"
            outcome.status = exc.status
            labels = (("cluster", peer_label), ("limit", exc.limit))
            ctx.metrics.inc("weft_overload_total", labels)
            why = exc.limit.encode()
            return await ds.local_reply(
                head, exc.status, b"overloaded: " + why + b"\n",
                [(b"x-weft-overload", why), (PROXY_ERROR_HEADER, b"overload")],
            )  # fmt: skip
        finally:
            if counted:
                ctx.client_requests.leave(self.peer_text)
            duration = time.perf_counter() - start
            if retries and not detail:
                detail = "retried"
            ctx.metrics.request(
                (ctx.direction, ctx.service, peer_label, route_label), outcome.status, duration
            )
            began = time.time() - duration
            if span is not None and span.sampled:
                assert ctx.tracer is not None
                client_id = span.client_id if upstream_at else 0  # no call: no CLIENT span
                ctx.tracer.finish(
                    (span.kind, span.trace_id, span.span_id, span.parent_id, client_id,
                     began, upstream_at - start if upstream_at else 0.0, duration,
                     head.method, match.template if match is not None else "", route_label,
                     self.scheme, authority, path, outcome.status, peer_service,
                     outcome.upstream, retries, head.version, self.peer_text,
                     self.peer_uri, detail, path[1:] if is_grpc(head) else "",
                     outcome.grpc_status),
                    2 if client_id else 1,
                )  # fmt: skip
            if ctx.access_log.enabled:
                ctx.access_log.record(
                    start=began,
                    duration_s=duration,
                    downstream=self.peer_text,
                    method=head.method,
                    authority=authority,
                    path=head.target,
                    protocol=ds.protocol(head),
                    status=outcome.status,
                    bytes_in=outcome.bytes_in,
                    bytes_out=outcome.bytes_out,
                    route=route_label,
                    upstream=outcome.upstream,
                    request_id=rid,
                    detail=detail,
                    retries=retries,
                    trace_id=f"{span.trace_id:032x}" if span is not None else "",
                    peer_identity=self.peer_uri,
                )

    def usable(self, backend: Backend) -> bool:
        """Can this backend of a split take traffic now (some endpoint is healthy)?"""
        cluster = self.ctx.clusters.get(backend.cluster) if backend.cluster else None
        return cluster is not None and cluster.healthy(time.perf_counter())

    def mirror(self, action: RouteAction, request: bytes | None) -> None:
        """Send a copy to each sampled mirror without waiting for it; a streaming body is
        not teed, so only requests whose whole body is in memory are mirrored."""
        for m in action.mirrors:
            if m.cluster is None:
                continue
            if request is None:
                self.ctx.metrics.inc("weft_mirror_skipped_total", (("cluster", m.cluster),))
                continue
            if self.ctx.rng.random() * m.denominator < m.numerator:
                self.ctx.background.start_soon(_send_mirror, self.ctx, m.cluster, request)


class _Http1(RequestHandler):
    """An HTTP/1.x connection: requests one after another on one byte stream."""

    __slots__ = ("busy", "conn", "pace", "parser")

    relay: Relay = staticmethod(relay_http1)

    def __init__(
        self,
        ctx: ProxyContext,
        listener: ListenerKey,
        conn: Conn,
        parser: RequestParser,
        scheme: str,
        sni: str | None,
        peer_id: SpiffeId | None = None,
        destination: Destination | None = None,
    ) -> None:
        super().__init__(ctx, listener, conn.peer, scheme, sni, peer_id, destination)
        self.conn = conn
        self.parser = parser
        self.busy = False  # in the middle of a request
        self.pace: BodyPace | None = None  # the body's deadline, once the proxy waits for it

    def protocol(self, head: RequestHead) -> str:
        return "HTTP/1.1" if head.version == "1.1" else "HTTP/1.0"

    async def send_continue(self) -> None:
        await self.conn.send_all(_CONTINUE)

    def response_writer(
        self, head: RequestHead, ops: tuple[HeaderOps, ...], outcome: Outcome
    ) -> ResponseWriter:
        return Http1Writer(self.conn, head, ops, outcome)

    async def tunnel(self, upstream: Conn, first: bytes) -> Counts:
        """After a 101: relay the new protocol, starting with what each side already sent."""
        return await relay(
            self.conn, upstream, to_upstream=self.parser.tunnel or b"", to_downstream=first
        )

    # -- body plumbing ------------------------------------------------------------------
    async def next_event(self) -> bytes | End:
        events = self.parser.events
        while not events:
            pace = self.pace
            limits = self.ctx.store.current.limits
            if pace is None:
                pace = self.pace = BodyPace(trio.current_time(), limits)
            try:
                if limits.body_timeout_s:
                    with trio.move_on_at(pace.deadline) as cs:
                        data = await self.conn.recv()
                    if cs.cancelled_caught:
                        raise too_slow()
                    pace.took(len(data))
                else:
                    data = await self.conn.recv()
            except ConnectionLost as exc:
                raise DownstreamClosed(str(exc)) from None
            if not data:
                raise DownstreamClosed("client closed the connection mid-request")
            self.parser.feed(data)
        ev = events.popleft()
        if not isinstance(ev, bytes | End):  # the parser emits a head only after an End
            raise ProtocolError("request ended without its body")
        return ev

    def take_buffered_body(self, out: bytearray, chunked: bool) -> tuple[int, bool]:
        """Append body already parsed to `out`; (bytes taken, whether the body is complete)."""
        events = self.parser.events
        taken = 0
        while events:
            ev = events[0]
            if isinstance(ev, bytes):
                events.popleft()
                taken += len(ev)
                out += chunk(ev) if chunked else ev
            elif isinstance(ev, End):
                events.popleft()
                if chunked:
                    out += last_chunk(ev.trailers)
                return taken, True
            else:
                break
        return taken, False

    async def discard_body(self, head: RequestHead) -> bool:
        """Drop the rest of a request body; False when the connection must close instead."""
        if not head.has_body:
            return self.take_buffered_body(bytearray(), False)[1]
        if head.expect_continue:
            return False  # the client waits for 100 before sending; we will not ask
        budget = DISCARD_LIMIT
        with trio.move_on_after(1.0):
            while True:
                ev = await self.next_event()
                if isinstance(ev, End):
                    return True
                budget -= len(ev)
                if budget < 0:
                    return False
        return False

    async def local_reply(
        self,
        head: RequestHead,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool = False,
    ) -> bool:
        keep = head.keep_alive and not close and await self.discard_body(head)
        if keep and head.version == "1.0":
            headers = [*(headers or ()), (b"connection", b"keep-alive")]
        await self.conn.send_all(
            simple_response(
                status, body, headers=headers, close=not keep, head_only=head.method == "HEAD"
            )
        )
        return keep


async def _send_mirror(ctx: ProxyContext, cluster_name: str, request: bytes) -> None:
    cluster = ctx.clusters.get(cluster_name)
    stats = cluster.pick(ctx.rng, time.perf_counter()) if cluster else None
    if cluster is None or stats is None:
        return
    with trio.move_on_after(cluster.spec.connect_timeout_s + 10.0):
        try:
            conn = await cluster.connect(
                stats.endpoint.address, stats.endpoint.port, cluster.spec.connect_timeout_s
            )
        except (OSError, UpstreamError):
            ctx.metrics.inc("weft_mirror_errors_total", (("cluster", cluster_name),))
            return
        try:
            await conn.send_all(request)
            while await conn.recv():
                pass
        except ConnectionLost:
            pass
        finally:
            conn.close()
