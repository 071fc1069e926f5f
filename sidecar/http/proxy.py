"""The downstream HTTP/1.1 connection: read requests, route them, forward, answer errors.

Theory of operation. One task per downstream connection runs requests one after another
(pipelined requests are answered in order because the next head is not looked at before
the previous response is written). Each request is routed on the snapshot current when
its head arrived and keeps that snapshot to the end, so a reload never changes a request
in flight. One cancel scope per connection carries the idle deadline, moved forward on
every read or write that makes progress; a connection that stalls is closed.
"""

from __future__ import annotations

import contextlib
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import trio

from sidecar.config.model import Backend, ListenerKey, RouteAction, Snapshot
from sidecar.config.store import SnapshotStore
from sidecar.errors import ProtocolError, UpstreamError
from sidecar.http.filters import redirect_location, rewritten_target, split_target
from sidecar.http.forward import Outcome, exchange
from sidecar.http.router import CompiledMatch, normalize_host
from sidecar.observe.accesslog import AccessLog
from sidecar.observe.metrics import Metrics
from sidecar.protocol.http1 import (
    END,
    End,
    RequestHead,
    RequestParser,
    ResponseHead,
    serialize_head,
    simple_response,
    strip_hop_by_hop,
)
from sidecar.transport.idle import IdleTracker, Tracked
from sidecar.transport.io import Conn, ConnectionLost, connect_tcp
from sidecar.upstream.cluster import ClusterManager

_INF = float("inf")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Bodies of requests answered locally are read and dropped up to this size so the
# connection stays usable; past it the connection is closed instead.
DISCARD_LIMIT = 256 * 1024
_ABSOLUTE = re.compile(r"^(https?)://([^/?#]*)([^#]*)", re.IGNORECASE)


class DownstreamClosed(Exception):
    """The client went away in the middle of a request."""


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


def _request_id(rng: random.Random) -> str:
    """A UUIDv4-shaped request id; ids need uniqueness, not secrecy (rng is seeded from os)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:32]}"


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, applied only when the path has dot segments or empty segments."""
    out: list[str] = []
    segments = path.split("/")
    for seg in segments[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg not in (".", ""):
            out.append(seg)
    trailing = segments[-1] in ("", ".", "..") and len(segments) > 2
    return "/" + "/".join(out) + ("/" if trailing and out else "")


async def serve_http1(ctx: ProxyContext, listener: ListenerKey, conn: Conn) -> None:
    """Serve one downstream connection until it closes, errs or idles out."""
    limits = ctx.store.current.limits
    parser = RequestParser(
        max_header_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        max_body_bytes=limits.max_request_body_bytes,
    )
    events = parser.events
    peer = conn.peer[0] if conn.peer else "-"
    scope = trio.CancelScope()
    tracked = Tracked(
        activity=lambda: conn.activity,
        in_head=lambda: parser.partial_head,
        cancel=scope.cancel,
    )
    ctx.idle.add(tracked, trio.current_time())
    handler = _Connection(ctx, listener, conn, parser, peer)
    try:
        with scope:
            while True:
                while not events:
                    data = await conn.recv()
                    if not data:
                        return
                    parser.feed(data)
                ev = events.popleft()
                if not isinstance(ev, RequestHead):  # cannot happen: bodies are consumed
                    return
                if not await handler.handle(ev):
                    return
        if scope.cancelled_caught and parser.partial_head:
            await _best_effort(conn, simple_response(408, b"request timeout\n", close=True))
    except ProtocolError as exc:
        await _best_effort(conn, simple_response(exc.status, f"{exc}\n".encode(), close=True))
    except (ConnectionLost, DownstreamClosed):
        pass
    finally:
        ctx.idle.discard(tracked)
        conn.close()


async def _best_effort(conn: Conn, data: bytes | bytearray) -> None:
    with trio.move_on_after(1.0):
        with contextlib.suppress(ConnectionLost):
            await conn.send_all(data)


class _Connection:
    """Per-connection request handling; one instance per downstream connection."""

    __slots__ = ("conn", "ctx", "listener", "parser", "peer", "snapshot")

    def __init__(
        self, ctx: ProxyContext, listener: ListenerKey, conn: Conn, parser: RequestParser, peer: str
    ) -> None:
        self.ctx = ctx
        self.listener = listener
        self.conn = conn
        self.parser = parser
        self.peer = peer
        self.snapshot: Snapshot | None = None  # the last snapshot that had our listener

    # -- body plumbing ------------------------------------------------------------------
    async def next_event(self) -> bytes | End:
        events = self.parser.events
        while not events:
            try:
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

    def buffered_body(self) -> tuple[list[bytes], bool, list[tuple[bytes, bytes]] | None]:
        """Body pieces already parsed, whether the body is complete, and its trailers."""
        events = self.parser.events
        pieces: list[bytes] = []
        while events:
            ev = events[0]
            if isinstance(ev, bytes):
                pieces.append(ev)
                events.popleft()
            elif isinstance(ev, End):
                events.popleft()
                return pieces, True, ev.trailers
            else:
                break
        return pieces, False, None

    async def discard_body(self, head: RequestHead) -> bool:
        """Drop the rest of a request body; False when the connection must close instead."""
        if not head.has_body:
            _, done, _ = self.buffered_body()
            return done or not head.has_body
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

    # -- one request --------------------------------------------------------------------
    async def handle(self, head: RequestHead) -> bool:
        """Answer one request; returns whether the connection may carry another."""
        ctx = self.ctx
        start_wall = time.time()
        start = trio.current_time()
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
        target = head.target
        authority = head.host
        scheme = "http"
        m = _ABSOLUTE.match(target) if not target.startswith("/") else None
        if m is not None:
            authority = m.group(2)
            target = m.group(3) or "/"
        elif not target.startswith("/") and not (target == "*" and head.method == "OPTIONS"):
            raise ProtocolError("request target must be an absolute path or absolute URI")
        path, query = split_target(target)
        if "/." in path or "//" in path:
            path = remove_dot_segments(path)
            target = f"{path}?{query}" if query else path
        host = normalize_host(authority)
        match: CompiledMatch | None = None
        if router is not None:
            match = router.route(
                host, path, head.method, _header_lookup(head.headers), _query_lookup(query)
            )
        outcome = Outcome(downstream_keep_alive=head.keep_alive)
        route_label = ""
        peer_label = ""
        detail = ""
        request_id = ""
        try:
            if match is None:
                outcome.status = 404
                detail = "no_route"
                keep = await self.local_reply(head, 404, b"no route\n")
                return keep
            action = match.action
            route_label = action.route
            if action.redirect is not None:
                location = redirect_location(
                    action.redirect,
                    scheme=scheme,
                    host=host,
                    listener_port=self._listener_port(host),
                    target=target,
                    matched_prefix=match.path_value if match.path_type == "PathPrefix" else None,
                )
                outcome.status = action.redirect.status_code
                detail = "redirect"
                return await self.local_reply(
                    head, outcome.status, b"", [(b"location", location.encode("latin-1"))]
                )
            backend = _pick_backend(action, ctx.rng)
            if backend is None or backend.cluster is None:
                outcome.status = 500
                detail = "invalid_backend"
                return await self.local_reply(head, 500, b"no valid backend for this route\n")
            cluster = ctx.clusters.get(backend.cluster)
            peer_label = backend.cluster
            stats = cluster.pick(ctx.rng, start) if cluster is not None else None
            if cluster is None or stats is None:
                outcome.status = 503
                detail = "no_healthy_upstream"
                return await self.local_reply(head, 503, b"no healthy upstream\n")
            request_id, up_head = self.upstream_head(
                head, target, authority, action, backend, match
            )
            if action.mirrors:
                self.mirror(action, up_head)
            endpoint = stats.endpoint
            pool = cluster.pools.get(endpoint)
            if pool is None:  # endpoint left in a reload after the pick
                outcome.status = 503
                detail = "no_healthy_upstream"
                return await self.local_reply(head, 503, b"no healthy upstream\n")
            if head.expect_continue and head.has_body:
                await self.conn.send_all(_CONTINUE)
            first, done, trailers = self.buffered_body()
            timeout_scope = trio.CancelScope(deadline=start + _timeout(action))
            stats.pending += 1
            try:
                with timeout_scope:
                    await exchange(
                        downstream=self.conn,
                        cluster=cluster,
                        pool=pool,
                        endpoint_key=endpoint.key,
                        address=endpoint.address,
                        port=endpoint.port,
                        head=head,
                        upstream_head=up_head,
                        first_body=first,
                        body_done=done,
                        trailers=trailers,
                        next_event=self.next_event,
                        on_response=_response_hook(action, backend),
                        outcome=outcome,
                        now=start,
                    )
            finally:
                stats.pending -= 1
            end = trio.current_time()
            stats.observe(end - start, end)
            if timeout_scope.cancelled_caught:
                detail = "upstream_timeout"
                if outcome.response_started:
                    return False
                outcome.status = 504
                return await self.local_reply(head, 504, b"upstream timed out\n", close=True)
            if not outcome.request_complete:
                return False
            return outcome.downstream_keep_alive and head.keep_alive
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
            return await self.local_reply(head, exc.status, body, close=True)
        finally:
            duration = trio.current_time() - start
            ctx.metrics.request(
                (ctx.direction, ctx.service, peer_label, route_label), outcome.status, duration
            )
            if ctx.access_log.enabled:
                ctx.access_log.record(
                    start=start_wall,
                    duration_s=duration,
                    downstream=self.peer,
                    method=head.method,
                    authority=authority,
                    path=head.target,
                    protocol=f"HTTP/{head.version}",
                    status=outcome.status,
                    bytes_in=outcome.bytes_in,
                    bytes_out=outcome.bytes_out,
                    route=route_label,
                    upstream=outcome.upstream,
                    request_id=request_id,
                    detail=detail,
                )

    def _listener_port(self, host: str) -> int:
        snapshot = self.snapshot or self.ctx.store.current
        router = snapshot.routers.get(self.listener)
        lst = router.listener_for(host) if router is not None else None
        return lst.port if lst is not None else self.listener.port

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
        await self.conn.send_all(
            simple_response(
                status, body, headers=headers, close=not keep, head_only=head.method == "HEAD"
            )
        )
        return keep

    def upstream_head(
        self,
        head: RequestHead,
        target: str,
        authority: str,
        action: RouteAction,
        backend: Backend,
        match: CompiledMatch,
    ) -> tuple[str, bytes]:
        headers = strip_hop_by_hop(head.headers, head.connection)
        request_id = ""
        xff = b""
        out: list[tuple[bytes, bytes]] = []
        for name, value in headers:
            lname = name.lower()
            if lname == b"x-request-id":
                request_id = value.decode("latin-1")
            elif lname == b"x-forwarded-for":
                xff = value
                continue
            elif lname in (b"x-forwarded-proto", b"x-forwarded-host", b"expect"):
                continue
            out.append((name, value))
        if not request_id:
            request_id = _request_id(self.ctx.rng)
            out.append((b"x-request-id", request_id.encode()))
        peer = self.peer.encode()
        out.append((b"x-forwarded-for", xff + b", " + peer if xff else peer))
        out.append((b"x-forwarded-proto", b"http"))
        out.append((b"x-forwarded-host", authority.encode("latin-1")))
        if action.rewrite is not None:
            rw = action.rewrite
            if rw.path_type is not None:
                prefix = match.path_value if match.path_type == "PathPrefix" else None
                target = rewritten_target(target, rw, prefix)
            if rw.hostname is not None:
                out = [(n, v) for n, v in out if n.lower() != b"host"]
                out.append((b"host", rw.hostname.encode()))
        if action.request_headers is not None:
            out = action.request_headers.apply(out)
        if backend.request_headers is not None:
            out = backend.request_headers.apply(out)
        if not any(n.lower() == b"host" for n, _ in out):
            out.append((b"host", authority.encode("latin-1")))
        if head.has_body:
            if head.content_length is not None and not head.chunked:
                out.append((b"content-length", b"%d" % head.content_length))
            else:
                out.append((b"transfer-encoding", b"chunked"))
        line = b"%b %b HTTP/1.1\r\n" % (head.method.encode(), target.encode("latin-1"))
        return request_id, bytes(serialize_head(line, out))

    def mirror(self, action: RouteAction, up_head: bytes) -> None:
        """Send a copy of a body-less request to each mirror, without waiting for it."""
        for mirror in action.mirrors:
            if mirror.cluster is None:
                continue
            if self.ctx.rng.random() * mirror.denominator >= mirror.numerator:
                continue
            cluster = self.ctx.clusters.get(mirror.cluster)
            if cluster is not None:
                self.ctx.background.start_soon(_send_mirror, self.ctx, cluster.spec.name, up_head)


async def _send_mirror(ctx: ProxyContext, cluster_name: str, up_head: bytes) -> None:
    cluster = ctx.clusters.get(cluster_name)
    stats = cluster.pick(ctx.rng, trio.current_time()) if cluster else None
    if cluster is None or stats is None:
        return
    with trio.move_on_after(cluster.spec.connect_timeout_s + 10.0):
        try:
            conn = await connect_tcp(stats.endpoint.address, stats.endpoint.port)
        except (OSError, UpstreamError):
            ctx.metrics.inc("weft_mirror_errors_total", (("cluster", cluster_name),))
            return
        try:
            await conn.send_all(up_head)
            while await conn.recv():
                pass
        except ConnectionLost:
            pass
        finally:
            conn.close()


def _timeout(action: RouteAction) -> float:
    t = _INF
    if action.request_timeout_s:
        t = action.request_timeout_s
    if action.backend_request_timeout_s:
        t = min(t, action.backend_request_timeout_s)
    return t


def _pick_backend(action: RouteAction, rng: random.Random) -> Backend | None:
    backends = action.backends
    if not backends:
        return None
    if len(backends) == 1:
        return backends[0] if backends[0].weight > 0 else None
    total = action.cumulative_weights[-1]
    if total <= 0:
        return None
    x = rng.random() * total
    for b, acc in zip(backends, action.cumulative_weights, strict=True):
        if x < acc:
            return b
    return backends[-1]


def _response_hook(
    action: RouteAction, backend: Backend
) -> Callable[[ResponseHead], list[tuple[bytes, bytes]]]:
    if action.response_headers is None and backend.response_headers is None:
        return _plain_headers

    def hook(resp: ResponseHead) -> list[tuple[bytes, bytes]]:
        headers = resp.headers
        if action.response_headers is not None:
            headers = action.response_headers.apply(headers)
        if backend.response_headers is not None:
            headers = backend.response_headers.apply(headers)
        return headers

    return hook


def _plain_headers(resp: ResponseHead) -> list[tuple[bytes, bytes]]:
    return resp.headers


def _header_lookup(headers: list[tuple[bytes, bytes]]) -> Callable[[], Mapping[str, str]]:
    cache: dict[str, str] | None = None

    def lookup() -> Mapping[str, str]:
        nonlocal cache
        if cache is None:
            cache = {}
            for name, value in headers:
                key = name.decode("latin-1").lower()
                v = value.decode("latin-1")
                cache[key] = f"{cache[key]},{v}" if key in cache else v
        return cache

    return lookup


def _query_lookup(query: str) -> Callable[[], Mapping[str, list[str]]]:
    cache: dict[str, list[str]] | None = None

    def lookup() -> Mapping[str, list[str]]:
        nonlocal cache
        if cache is None:
            cache = parse_qs(query, keep_blank_values=True) if query else {}
        return cache

    return lookup


__all__ = ["END", "ProxyContext", "serve_http1"]
