"""The downstream HTTP/1.1 connection: read requests one after another and hand each to
the request handler.

Theory of operation. One task per downstream connection runs requests one after another
(pipelined requests are answered in order because the next head is not looked at before
the previous response is written). Idle and header timeouts are enforced by the shared
sweeper (transport/idle.py) through the connection's cancel scope; no deadline moves per
request.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import trio

from sidecar.config.headerops import HeaderOps
from sidecar.config.mesh import Destination
from sidecar.config.model import ListenerKey
from sidecar.errors import DownstreamClosed, ProtocolError
from sidecar.http.context import ProxyContext
from sidecar.http.downstream import Relay, ResponseWriter
from sidecar.http.forward import Http1Writer, relay_http1
from sidecar.http.handler import RequestHandler, log_refused
from sidecar.http.outcome import Outcome
from sidecar.http.pace import DISCARD_LIMIT, DISCARD_S, BodyPace, too_slow
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
from sidecar.transport.idle import Tracked
from sidecar.transport.io import Conn, ConnectionLost

if TYPE_CHECKING:  # HTTP/2 and TLS load on first use: a plain gateway stays small
    from ca.spiffe import SpiffeId

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
    client_cert: bytes = b"",
) -> None:
    """Serve one downstream connection until it closes, errs or idles out. `sni` is the
    server name a TLS client asked for: requests for another listener get 421; `initial`
    holds bytes already read from the connection; `destination`: the mesh Service port
    the connection was made for (a sidecar's `--upstream` port), whatever Host says;
    `client_cert`: the X-Forwarded-Client-Cert line for a client certificate the edge
    verified."""
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
    handler = _Http1(ctx, listener, conn, parser, scheme, sni, peer_id, destination, client_cert)
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


async def _best_effort(conn: Conn, data: bytes | bytearray) -> None:
    with trio.move_on_after(1.0), contextlib.suppress(ConnectionLost):
        await conn.send_all(data)


class _Http1(RequestHandler):
    """An HTTP/1.x connection: requests one after another on one byte stream."""

    __slots__ = ("busy", "conn", "pace", "parser")

    @property
    def relay(self) -> Relay:
        return relay_http1

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
        client_cert: bytes = b"",
    ) -> None:
        super().__init__(
            ctx, listener, conn.peer, scheme, sni, peer_id, destination, client_cert=client_cert
        )
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

    def limit_body(self, head: RequestHead, limit: int) -> None:
        self.parser.limit_body(head, limit)

    def unread(self, events: list[bytes | End]) -> None:
        self.parser.events.extendleft(reversed(events))

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
        with trio.move_on_after(DISCARD_S):
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
