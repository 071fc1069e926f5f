"""One try of a request with an upstream: send the request, stream the response back.

`exchange` is the one seam the tries call, for HTTP/1.1 and HTTP/2 upstreams alike (the
HTTP/2 side is http/forward_h2.py); the connections come from the cluster's `Pools`.

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
from collections.abc import Coroutine
from typing import Any

import trio

from sidecar.config.headerops import HeaderOps, dropped
from sidecar.config.model import IDEMPOTENT, ClusterSpec, Endpoint
from sidecar.errors import (
    DownstreamClosed,
    UpstreamClosed,
    UpstreamConnectError,
)
from sidecar.http.downstream import NextEvent
from sidecar.http.outcome import Outcome
from sidecar.protocol.http1 import End, RequestHead
from sidecar.protocol.response import ResponseHead, ResponseParser, feed_response
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
from sidecar.upstream.pool import Pools

Headers = list[tuple[bytes, bytes]]


def exchange(
    *,
    downstream: Any,
    pools: Pools,
    endpoint: Endpoint,
    spec: ClusterSpec,
    head: RequestHead,
    request: bytes | bytearray,
    body_done: bool,
    h2_fields: Headers | None,
    response_ops: tuple[HeaderOps, ...],
    outcome: Outcome,
    nursery: trio.Nursery,
    now: float,
) -> Coroutine[Any, Any, None]:
    """One try of a request with `endpoint` of the cluster `spec`, over HTTP/2 when its
    fields were built for it (`h2_fields`), else HTTP/1.1; `request` holds the head and
    body so far (HTTP/1.1) or the body so far (HTTP/2). The coroutine raises
    UpstreamError while nothing was sent downstream. (Returned, not awaited here: the
    caller's await is the only frame.)"""
    if h2_fields is not None:
        from sidecar.http.forward_h2 import exchange_h2  # loaded on a first HTTP/2 upstream

        return exchange_h2(
            downstream=downstream, pool=pools.multiplexed(endpoint.key), nursery=nursery,
            endpoint=endpoint, connect_timeout_s=spec.connect_timeout_s, head=head,
            headers=h2_fields, body=bytes(request), body_done=body_done, ops=response_ops,
            outcome=outcome,
        )  # fmt: skip
    return _exchange_h1(
        downstream=downstream, pools=pools, endpoint=endpoint, spec=spec, head=head,
        request=request if isinstance(request, bytearray) else bytearray(request),
        body_done=body_done, response_ops=response_ops, outcome=outcome, now=now,
    )  # fmt: skip


async def _exchange_h1(
    *,
    downstream: Any,
    pools: Pools,
    endpoint: Endpoint,
    spec: ClusterSpec,
    head: RequestHead,
    request: bytearray,
    body_done: bool,
    response_ops: tuple[HeaderOps, ...],
    outcome: Outcome,
    now: float,
) -> None:
    """Forward one request to an HTTP/1.1 upstream and relay the response downstream
    (`downstream.relay`, in the downstream's protocol)."""
    key = endpoint.key
    # A non-idempotent request on a connection the upstream closed could fail after it was
    # written and could not be replayed: for those, a closed connection is noticed first.
    conn = pools.take(key, now, spec.idle_timeout_s, head.method not in IDEMPOTENT)
    reused = conn is not None
    while True:
        if conn is None:
            conn = await pools.connect(endpoint.address, endpoint.port, spec.connect_timeout_s)
        written = False
        try:
            sent = conn.send_now(request)
            if sent < len(request):
                await conn.send_rest(request, sent)
            written = True
            if not body_done:
                await _stream_body(conn, head.chunked, downstream.next_event, outcome)
            outcome.request_sent()
            keep_upstream = await downstream.relay(conn, downstream, head, response_ops, outcome)
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
            pools.give(key, conn, time.perf_counter())
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
                outcome.sent(b"", end)
                await conn.send_all(end)
            return
        data = chunk(ev) if chunked else ev
        outcome.sent(ev, data)
        await conn.send_all(data)


def response_parser(conn: Conn, head: RequestHead) -> ResponseParser:
    """The connection's response parser (kept with it), ready for the answer to `head`."""
    parser = conn.proto
    if not isinstance(parser, ResponseParser):
        parser = conn.proto = ResponseParser()
    parser.start(head_request=head.method == "HEAD", upgrade=head.tunnel)
    return parser


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
                outcome.relayed(ev)
                out += chunk(ev) if chunked_down else ev
            elif isinstance(ev, ResponseHead):
                outcome.response(ev.status, ev)
                if ev.status == 101:  # the upstream took the Upgrade: HTTP ends here
                    out += response_head(ev, ops, False, False, False)
                    del out[-2:]
                    out += b"connection: upgrade\r\nupgrade: %b\r\n\r\n" % ev.upgrade
                    outcome.upgraded(conn, parser.tunnel)  # no keep-alive, even if this fails
                    await downstream.send_all(out)
                    return False
                keep_upstream = ev.keep_alive
                bodyless = head.method == "HEAD" or ev.status in (204, 304)
                if ev.content_length is None and not bodyless:
                    if head.version == "1.1":
                        chunked_down = True
                    else:
                        outcome.close_downstream()  # close-delimited for HTTP/1.0
                out += response_head(
                    ev, ops, chunked_down, not outcome.downstream_keep_alive, head.version == "1.0"
                )
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
                outcome.close_downstream()
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
                self.outcome.close_downstream()  # close-delimited for HTTP/1.0
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
            self.outcome.close_downstream()
            raise DownstreamClosed(str(exc)) from None
