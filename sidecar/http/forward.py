"""One HTTP/1.1 exchange with an upstream: send the request, stream the response back.

Theory of operation. The request head, and as much of the body as the downstream parser
already holds, go out in one `send`; the rest of the body streams event by event, each
send completing before the next downstream read (back-pressure both ways, constant
memory). The response is read the same way: each upstream read is parsed and what it
yields goes downstream in one send before the next upstream read.

A pooled connection can die between two requests. When a reused connection fails before
any response byte arrived and the whole request is still in memory, the request is
replayed once on a new connection (never a request whose body was partly streamed).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from sidecar.config.model import IDEMPOTENT
from sidecar.errors import (
    DownstreamClosed,
    ProtocolError,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamProtocolError,
    WeftError,
)
from sidecar.http.filters import HeaderOps, dropped
from sidecar.protocol.http1 import End, RequestHead
from sidecar.protocol.response import ResponseHead, ResponseParser
from sidecar.protocol.wire import (
    PROTECTED,
    chunk,
    cut_lines,
    last_chunk,
    reason_phrase,
    serialize_head,
    spellings,
    strip_hop_by_hop,
)
from sidecar.transport.io import Conn, ConnectionLost
from sidecar.upstream.cluster import EndpointPool

Headers = list[tuple[bytes, bytes]]
# Produces the next downstream request event (body bytes or End).
NextEvent = Callable[[], Awaitable[bytes | End]]
# Streams the upstream's response to the downstream (its protocol's framing); returns
# whether the upstream connection may be reused.
Relay = Callable[[Conn, Any, RequestHead, "tuple[HeaderOps, ...]", "Outcome"], Awaitable[bool]]


class RetryableStatus(WeftError):
    """A response the retry policy takes instead of forwarding it (raised by a relay
    before anything reached the downstream; the budget has already paid for the retry).
    `failure` is what `Outcome.hold` said of it (upstream/retry.py's Failure)."""

    def __init__(self, status: int, failure: Any) -> None:
        self.status = status
        self.failure = failure
        super().__init__(f"status {status}")


class Outcome:
    """What happened to one request, for the caller's metrics and log."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "downstream_keep_alive",
        "grpc_status",
        "hold",
        "proxy_error",
        "replay",
        "replay_limit",
        "request_complete",
        "response_started",
        "status",
        "tunnel",
        "upstream",
    )

    def __init__(self, downstream_keep_alive: bool = True) -> None:
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.downstream_keep_alive = downstream_keep_alive
        self.request_complete = False
        self.response_started = False
        self.upstream = ""
        self.proxy_error = False  # a 5xx answered by a peer's sidecar, not its app
        self.grpc_status = -1  # from a gRPC answer's trailers (-1: none), for its span
        # after a 101: the upstream connection and the bytes it sent past the head
        self.tunnel: tuple[Conn, bytes] | None = None
        # a response head for which this returns a failure is not forwarded: RetryableStatus
        self.hold: Callable[[Any], Any] | None = None
        # a copy of a streamed request for a retry, while it stays within `replay_limit`
        self.replay: bytearray | None = None
        self.replay_limit = 0

    def keep_for_replay(self, data: bytes | bytearray) -> None:
        replay = self.replay
        if replay is not None:
            if len(replay) + len(data) > self.replay_limit:
                self.replay = None  # streamed past the buffer: never replayed
            else:
                replay += data


async def exchange(
    downstream: Any,
    pool: EndpointPool,
    address: str,
    port: int,
    head: RequestHead,
    request: bytearray,
    body_done: bool,
    next_event: NextEvent,
    response_ops: tuple[HeaderOps, ...],
    outcome: Outcome,
    connect_timeout_s: float,
    idle_timeout_s: float,
    now: float,
    relay: Relay,
) -> None:
    """Forward one request (`request` holds its head and any buffered body) and `relay`
    the response to `downstream`. Raises UpstreamError while nothing was sent downstream."""
    # A non-idempotent request on a connection the upstream closed could fail after it was
    # written and could not be replayed: for those, a closed connection is noticed first.
    conn = pool.take(now, idle_timeout_s, head.method not in IDEMPOTENT)
    reused = conn is not None
    while True:
        if conn is None:
            conn = await pool.connect(address, port, connect_timeout_s)
        written = False
        try:
            sent = conn.send_now(request)
            if sent < len(request):
                await conn.send_rest(request, sent)
            written = True
            if not body_done:
                await _stream_body(conn, head.chunked, next_event, outcome)
            outcome.request_complete = True
            keep_upstream = await relay(conn, downstream, head, response_ops, outcome)
        except (ConnectionLost, UpstreamClosed) as exc:
            conn.close()
            conn = None
            if reused and _replayable(head, body_done, written, outcome):
                reused = False  # a stale pooled connection: replay once on a new one
                continue
            if outcome.response_started:
                raise
            if not written:  # the upstream cannot have acted on a request it did not get
                raise UpstreamConnectError(f"upstream connection lost: {exc}") from None
            raise UpstreamClosed(f"upstream closed the connection: {exc}") from None
        except BaseException:
            conn.close()
            raise
        if keep_upstream:
            pool.give(conn, time.perf_counter())
        elif outcome.tunnel is None:
            conn.close()
        return


def _replayable(head: RequestHead, body_done: bool, written: bool, outcome: Outcome) -> bool:
    """May a request that failed on a reused connection be sent again on a new one?

    When the request could not even be written, always (the upstream cannot have acted on
    it, and what the body has not sent yet is still unread downstream). Otherwise, as Go's
    HTTP client decides, only idempotent requests that are all still in memory and had no
    response byte yet. A POST that reached an upstream which then closed is never sent
    twice.
    """
    if outcome.response_started:
        return False
    return not written or (body_done and head.method in IDEMPOTENT)


async def _stream_body(conn: Conn, chunked: bool, next_event: NextEvent, outcome: Outcome) -> None:
    while True:
        ev = await next_event()
        if isinstance(ev, End):
            if chunked:
                end = last_chunk(ev.trailers)
                outcome.keep_for_replay(end)
                await conn.send_all(end)
            return
        outcome.bytes_in += len(ev)
        data = chunk(ev) if chunked else ev
        outcome.keep_for_replay(data)
        await conn.send_all(data)


# Set by the proxy on the errors it answers itself (`x-weft-error: <why>`), so a caller's
# sidecar can tell them from its peer app's own 5xx answers (outlier detection ejects
# instances that cannot serve, not apps that report errors). `connect_failure`: the
# sidecar could not reach its app, the request was not processed, and the caller's
# sidecar may retry it whatever its method. A sidecar removes the field from what its app
# answers, so an app cannot claim either.
PROXY_ERROR_HEADER = b"x-weft-error"
NOT_SENT_VALUE = b"connect_failure"


def not_sent_marker(headers: Headers) -> bool:
    return any(n.lower() == PROXY_ERROR_HEADER and v == NOT_SENT_VALUE for n, v in headers)


def proxy_error(headers: Headers) -> bool:
    """Did a proxy (a peer's sidecar) answer this error, rather than the app?"""
    return any(n.lower() == PROXY_ERROR_HEADER for n, _ in headers)


def response_parser(conn: Conn, head: RequestHead) -> ResponseParser:
    """The connection's response parser (kept with it), ready for the answer to `head`."""
    parser = conn.proto
    if not isinstance(parser, ResponseParser):
        parser = conn.proto = ResponseParser()
    parser.start(head_request=head.method == "HEAD", upgrade=head.tunnel)
    return parser


def feed_response(parser: ResponseParser, data: bytes) -> bool:
    """Parse what the upstream sent (b"": it closed); False when the close ended the
    response (a close-delimited body), so the connection cannot be reused."""
    if data:
        try:
            parser.feed(data)
        except ProtocolError as exc:
            raise UpstreamProtocolError(str(exc)) from None
        return True
    if parser.feed_eof():
        return False
    raise UpstreamClosed("upstream closed before the response was complete")


def response_head(
    resp: ResponseHead, ops: tuple[HeaderOps, ...], chunked: bool, close: bool, http10: bool
) -> bytearray:
    """The downstream response head: the upstream's block minus hop-by-hop lines, with the
    filters' edits applied to it line by line; re-serialized from the parsed fields only
    when an edit would drop a framing or forwarding field."""
    reason = resp.reason or reason_phrase(resp.status)
    if resp.raw is not None and not any(op.touches(PROTECTED) for op in ops):
        # The upstream's block as it came, minus hop-by-hop lines and the lines the edits
        # drop, plus the lines they add (a field dropped by a later edit never appears).
        cut = resp.cut + resp.connection_named() if resp.connection else resp.cut
        added: list[tuple[bytes, bytes]] = []
        for op in ops:
            cut = cut + spellings(resp.raw, op.drop, resp.lower)
            added = [f for f in added if not dropped(f[0], op.drop)]
            added.extend(op.append)
        out = bytearray(b"HTTP/1.1 " + str(resp.status).encode() + b" " + reason + b"\r\n")
        out += cut_lines(resp.raw, cut) if cut else resp.raw
        for name, value in added:
            out += name + b": " + value + b"\r\n"
    else:
        headers = strip_hop_by_hop(resp.headers, resp.connection)
        for op in ops:
            headers = op.apply(headers)
        if resp.content_length is not None:
            headers.append((b"content-length", b"%d" % resp.content_length))
        out = serialize_head(b"HTTP/1.1 %d %b\r\n" % (resp.status, reason), headers)
        del out[-2:]
    if chunked:
        out += b"transfer-encoding: chunked\r\n"
    if close:
        out += b"connection: close\r\n"
    elif http10:  # an HTTP/1.0 client keeps the connection only when told so
        out += b"connection: keep-alive\r\n"
    out += b"\r\n"
    return out


async def relay_http1(
    conn: Conn,
    downstream: Any,
    head: RequestHead,
    ops: tuple[HeaderOps, ...],
    outcome: Outcome,
) -> bool:
    """Stream the response to an HTTP/1.x client (`downstream.conn`)."""
    downstream = downstream.conn
    parser = response_parser(conn, head)
    events = parser.events
    chunked_down = False
    keep_upstream = True
    while True:
        if not feed_response(parser, await conn.recv()):
            keep_upstream = False
        out = bytearray()
        finished = False
        while events:
            ev = events.popleft()
            if isinstance(ev, bytes):
                outcome.bytes_out += len(ev)
                out += chunk(ev) if chunked_down else ev
            elif isinstance(ev, ResponseHead):
                if ev.status >= 500:
                    outcome.proxy_error = proxy_error(ev.headers)
                if outcome.hold is not None and (failure := outcome.hold(ev)) is not None:
                    raise RetryableStatus(ev.status, failure)
                if ev.status == 101:  # the upstream took the Upgrade: HTTP ends here
                    outcome.status = 101
                    outcome.response_started = True
                    outcome.downstream_keep_alive = False
                    out += response_head(ev, ops, False, False, False)
                    del out[-2:]
                    out += b"connection: upgrade\r\nupgrade: %b\r\n\r\n" % ev.upgrade
                    await downstream.send_all(out)
                    outcome.tunnel = (conn, parser.tunnel)
                    return False
                keep_upstream = ev.keep_alive
                bodyless = head.method == "HEAD" or ev.status in (204, 304)
                if ev.content_length is None and not bodyless:
                    if head.version == "1.1":
                        chunked_down = True
                    else:
                        outcome.downstream_keep_alive = False  # close-delimited for HTTP/1.0
                outcome.status = ev.status
                out += response_head(
                    ev, ops, chunked_down, not outcome.downstream_keep_alive, head.version == "1.0"
                )
                outcome.response_started = True
            elif isinstance(ev, End):
                if chunked_down:
                    out += last_chunk(ev.trailers)
                finished = True
        if out:
            try:
                sent = downstream.send_now(out)
                if sent < len(out):
                    await downstream.send_rest(out, sent)
            except ConnectionLost:
                outcome.downstream_keep_alive = False
                return False
        if finished:
            return keep_upstream and parser.reusable


class Http1Writer:
    """A response from an HTTP/2 upstream, written to an HTTP/1.x client."""

    __slots__ = ("chunked", "conn", "head", "ops", "outcome")

    def __init__(
        self, conn: Conn, head: RequestHead, ops: tuple[HeaderOps, ...], outcome: Outcome
    ) -> None:
        self.conn = conn
        self.head = head
        self.ops = ops
        self.outcome = outcome
        self.chunked = False

    async def start(self, status: int, headers: Headers, *, end: bool) -> None:
        for op in self.ops:
            headers = op.apply(headers)
        head = self.head
        has_length = any(n.lower() == b"content-length" for n, _ in headers)
        bodyless = head.method == "HEAD" or status in (204, 304)
        if end and not has_length and not bodyless:
            headers = [*headers, (b"content-length", b"0")]
        elif not has_length and not bodyless:
            if head.version == "1.1":
                self.chunked = True
            else:
                self.outcome.downstream_keep_alive = False  # close-delimited for HTTP/1.0
        out = serialize_head(b"HTTP/1.1 %d %b\r\n" % (status, reason_phrase(status)), headers)
        del out[-2:]
        if self.chunked:
            out += b"transfer-encoding: chunked\r\n"
        if not self.outcome.downstream_keep_alive:
            out += b"connection: close\r\n"
        elif head.version == "1.0":
            out += b"connection: keep-alive\r\n"
        out += b"\r\n"
        await self._send(out)

    async def data(self, data: bytes) -> None:
        await self._send(chunk(data) if self.chunked else data)

    async def end(self, trailers: Headers | None) -> None:
        if self.chunked:
            await self._send(last_chunk(trailers))

    async def _send(self, data: bytes | bytearray) -> None:
        try:
            await self.conn.send_all(data)
        except ConnectionLost as exc:
            self.outcome.downstream_keep_alive = False
            raise DownstreamClosed(str(exc)) from None
