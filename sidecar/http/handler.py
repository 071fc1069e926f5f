"""One request, whatever its protocol: route it, run the route's filters, forward it
with retries, and record it (metrics, span, access log).

Theory of operation. Each request is routed on the snapshot current when its head arrived
and keeps that snapshot to the end, so a reload never changes a request in flight. The
protocol side (`Downstream`: an HTTP/1 connection or an HTTP/2 stream) supplies the body
and writes the answer; everything here is the same for both.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import trio

from sidecar.config.mesh import Destination, MeshNames, destination_host, mesh_unknown
from sidecar.config.model import Backend, ListenerKey
from sidecar.config.snapshot import Snapshot
from sidecar.errors import ProtocolError, ResponseAborted, UpstreamError
from sidecar.filters.chain import Exchange, LocalReply, client_address
from sidecar.filters.chain import run as run_filters
from sidecar.http.context import ProxyContext
from sidecar.http.downstream import Downstream
from sidecar.http.filters import redirect_location
from sidecar.http.mirror import mirror
from sidecar.http.outcome import NOT_SENT_VALUE, PROXY_ERROR_HEADER, Outcome
from sidecar.http.request import (
    Forwarding,
    client_cert_line,
    h2_request_headers,
    hex_digits,
    parse_target,
    pick_backend,
    upstream_request,
)
from sidecar.http.router import normalize_host
from sidecar.http.staged import Staged
from sidecar.http.tries import H2_PROTOCOLS, NoHealthyUpstream, Overloaded, Tries
from sidecar.protocol.grpc import GRPC_DEADLINE_EXCEEDED, grpc_timeout, is_grpc
from sidecar.protocol.http1 import End, RequestHead

if TYPE_CHECKING:  # HTTP/2 and TLS load on first use: a plain gateway stays small
    from ca.spiffe import SpiffeId


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
        *,
        client_cert: bytes = b"",
    ) -> None:
        """`client_cert`: at the edge, the X-Forwarded-Client-Cert line for the client
        certificate the TLS handshake verified."""
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
            self.fwd = Forwarding(self.peer_text.encode(), scheme.encode(), client_cert, trace)
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
        x: Exchange | None = None  # the request as filters see it (routes with filters)
        try:
            if misdirected:
                outcome.answered(421)
                detail = "misdirected"
                return await ds.local_reply(head, 421, b"misdirected request\n")
            if ctx.authorize is not None:
                decision = ctx.authorize(self.peer_id, head.method, path)
                if not decision.allowed:
                    outcome.answered(403)
                    detail = "denied"
                    why = decision.reason.encode("latin-1", "replace")
                    return await ds.local_reply(
                        head, 403, b"forbidden: " + why + b"\n", [(b"x-weft-denied", why)]
                    )
            if match is None:
                outcome.answered(404)
                detail = "no_route"
                if not self.route_host:  # a mesh name that is not a service (or its port)
                    return await ds.local_reply(head, 404, mesh_unknown(self.authority or ""))
                return await ds.local_reply(head, 404, b"no route\n")
            action = match.action
            route_label = action.route
            if action.filters:  # the rule's chain: it may answer, or edit what goes on
                client = client_address(self.peer_text, head.forwarded_for,
                                        snapshot.limits.trusted_hops)  # fmt: skip
                x = Exchange(head.method, authority, path, query, head.headers, client,
                             self.scheme, ctx=self.ctx, route=action, span=span)  # fmt: skip
                reply = run_filters(action.filters, x)
                if reply is not None and not isinstance(reply, LocalReply):
                    reply = await reply
                if reply is None and (x.max_body or x.body_check or x.body_rewrite):
                    reply = await _check_body(ds, head, x)
                if reply is not None:
                    detail = reply.detail
                    return await _reply(ds, head, outcome, reply)
                if x.target is not None:  # a filter changed the query or the path
                    target = x.target
                if x.forward_method is not None:  # (the log keeps the client's: x.method)
                    head.method = x.forward_method
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
                outcome.answered(action.redirect.status_code)
                detail = "redirect"
                return await ds.local_reply(
                    head, outcome.status, b"", [(b"location", location.encode("latin-1"))]
                )
            backend = pick_backend(action, self.usable if action.split is not None else None)
            if backend is None or backend.cluster is None:
                outcome.answered(500)
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
            ops = backend.request_ops
            if x is not None:
                ops = (*ops, *x.request_ops)
                tries.response_ops = (*tries.response_ops, *x.response_ops)
                if x.stages and not head.tunnel:  # filters that act on the answer
                    tries.ds = Staged(ds, x.stages)
            fields = None
            if spec.protocol in H2_PROTOCOLS:
                buffered = bytearray()
                outcome.bytes_in, body_done = ds.take_buffered_body(buffered, False)
                fields = h2_request_headers(
                    head, target, authority, action, ops, match, self.fwd, rid, trace
                )
                tries.prepare(buffered, body_done)
            else:
                request = upstream_request(
                    head, target, authority, action, ops, match, self.fwd, rid, trace
                )
                outcome.bytes_in, body_done = ds.take_buffered_body(request, head.chunked)
                if action.mirrors:
                    mirror(ctx, action, bytes(request) if body_done else None)
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
                outcome.tunnelled(counts.up, counts.down)
                return False
            if cs is not None and cs.cancelled_caught:
                detail = "upstream_timeout"
                if outcome.response_started:
                    return False
                if grpc_deadline is not None:  # gRPC clients read the status from trailers
                    outcome.answered(200, grpc_status=4)  # DEADLINE_EXCEEDED
                    return await ds.local_reply(head, 200, b"", GRPC_DEADLINE_EXCEEDED)
                if (stale := _fallback(x)) is not None:
                    detail = stale.detail
                    return await _reply(ds, head, outcome, stale)
                outcome.answered(504)
                return await ds.local_reply(
                    head, 504, b"upstream timed out\n", [(PROXY_ERROR_HEADER, b"upstream_timeout")],
                    close=True,
                )  # fmt: skip
            return outcome.request_complete and outcome.downstream_keep_alive
        except ResponseAborted:
            detail = "filter_error"
            return False
        except ProtocolError as broken:  # the client broke framing or a limit mid-body
            detail = "body_too_large" if broken.status == 413 else "downstream_protocol_error"
            if outcome.response_started:
                return False
            outcome.answered(broken.status)
            raise
        except UpstreamError as exc:
            detail = type(exc).__name__
            if outcome.response_started:
                return False
            if (stale := _fallback(x)) is not None:
                detail = stale.detail
                return await _reply(ds, head, outcome, stale)
            outcome.answered(exc.status)
            body = f"upstream error: {exc}\n".encode("utf-8", "replace")
            # A caller's sidecar may retry what never reached the app, whatever its method.
            why = NOT_SENT_VALUE if exc.retryable else b"upstream_error"
            return await ds.local_reply(
                head, exc.status, body, [(PROXY_ERROR_HEADER, why)], close=True
            )
        except NoHealthyUpstream:
            detail = "no_healthy_upstream"
            if (stale := _fallback(x)) is not None:
                detail = stale.detail
                return await _reply(ds, head, outcome, stale)
            outcome.answered(503)
            return await ds.local_reply(
                head, 503, b"no healthy upstream\n", [(PROXY_ERROR_HEADER, b"no_healthy_upstream")]
            )
        except Overloaded as over:  # a circuit-breaker limit: answer at once, queue nothing
            detail = f"overload_{over.limit}"
            outcome.answered(over.status)
            labels = (("cluster", peer_label), ("limit", over.limit))
            ctx.metrics.inc("weft_overload_total", labels)
            why = over.limit.encode()
            return await ds.local_reply(
                head, over.status, b"overloaded: " + why + b"\n",
                [(b"x-weft-overload", why), (PROXY_ERROR_HEADER, b"overload")],
            )  # fmt: skip
        finally:
            if x is not None and x.done is not None:
                for hook in x.done:
                    hook()
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
                     x.method if x is not None else head.method,
                     match.template if match is not None else "", route_label,
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
                    method=x.method if x is not None else head.method,
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
                    trace_id=hex_digits(span.trace_id, 32) if span is not None else "",
                    peer_identity=self.peer_uri,
                )

    def usable(self, backend: Backend) -> bool:
        """Can this backend of a split take traffic now (some endpoint is healthy)?"""
        cluster = self.ctx.clusters.get(backend.cluster) if backend.cluster else None
        return cluster is not None and cluster.healthy(time.perf_counter())


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


async def _reply(ds: Downstream, head: RequestHead, outcome: Outcome, reply: LocalReply) -> bool:
    """Answer with a filter's reply (counted as the proxy's own answer)."""
    outcome.answered(reply.status)
    return await ds.local_reply(head, reply.status, reply.body, list(reply.headers))


def _fallback(x: Exchange | None) -> LocalReply | None:
    """What a filter answers when the upstream could not (a cache's stale entry)."""
    return x.fallback() if x is not None and x.fallback is not None else None


async def _check_body(ds: Downstream, head: RequestHead, x: Exchange) -> LocalReply | None:
    """A route's body rules: its size limit from here on, and a rewrite (decoding,
    transcoding) and a check of the whole body (read, then put back to be forwarded as it
    came or rewritten). `x.body_always`: the rewrite makes a body for a request without one."""
    if x.max_body:
        ds.limit_body(head, x.max_body)
    if x.body_check is None and x.body_rewrite is None:
        return None
    body = bytearray()
    reads = head.has_body or (x.body_always and x.body_rewrite is not None)
    if not reads:  # nothing to read, nothing to put back
        return x.body_check(b"") if x.body_check is not None else None
    if head.expect_continue:
        await ds.send_continue()
        head.expect_continue = False
    while not isinstance(ev := await ds.next_event(), End):
        body += ev
    data = bytes(body)
    reply = None
    if x.body_rewrite is not None:
        rewritten = x.body_rewrite(data)
        if isinstance(rewritten, LocalReply):
            reply = rewritten
        else:
            data = rewritten
            head.content_length, head.chunked = len(data), False
            head.raw = None  # the fields are rebuilt, with the new length
    if reply is None and x.body_check is not None:
        reply = x.body_check(data)
    # forwarded as if not read yet; or, refused, read to its end
    ds.unread([data, ev] if reply is None and data else [ev])
    return reply
