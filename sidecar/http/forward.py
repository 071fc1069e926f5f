"""One HTTP/1.1 exchange with an upstream: send the request, stream the response back.

Theory of operation. The request head, and as much of the body as the downstream parser
already holds, go out in one `send`; the rest of the body streams event by event, each
send completing before the next downstream read (back-pressure both ways, constant
memory). The response is read in the same way: each upstream read is parsed and the
resulting bytes go to the downstream in one send before the next upstream read.

A pooled connection can die between two requests. When a reused connection fails before
any response byte arrived and the whole request is still in memory, the request is
replayed once on a fresh connection (never a request whose body was partly streamed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from sidecar.errors import (
    ProtocolError,
    UpstreamClosed,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
)
from sidecar.protocol.http1 import (
    End,
    RequestHead,
    ResponseHead,
    ResponseParser,
    chunk,
    last_chunk,
    reason_phrase,
    serialize_head,
    strip_hop_by_hop,
)
from sidecar.transport.io import Conn, ConnectionLost, connect_tcp
from sidecar.upstream.cluster import Cluster, EndpointPool

Headers = list[tuple[bytes, bytes]]
# Produces the next downstream request event (body bytes or End); raises on EOF.
NextEvent = Callable[[], Awaitable[bytes | End]]
# Called once with the response head, before any response bytes are written; returns the
# headers to send downstream.
ResponseHook = Callable[[ResponseHead], Headers]


@dataclass(slots=True)
class Outcome:
    status: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    downstream_keep_alive: bool = True
    request_complete: bool = False
    response_started: bool = False
    upstream: str = ""


async def exchange(
    *,
    downstream: Conn,
    cluster: Cluster,
    pool: EndpointPool,
    endpoint_key: str,
    address: str,
    port: int,
    head: RequestHead,
    upstream_head: bytes,
    first_body: list[bytes],
    body_done: bool,
    trailers: Headers | None,
    next_event: NextEvent,
    on_response: ResponseHook,
    outcome: Outcome,
    now: float,
) -> None:
    """Forward one request; fills `outcome`. Raises UpstreamError before the response starts."""
    outcome.upstream = endpoint_key
    spec = cluster.spec
    chunked_up = head.chunked  # Content-Length bodies pass as they are
    out = bytearray(upstream_head)
    for piece in first_body:
        out += chunk(piece) if chunked_up else piece
        outcome.bytes_in += len(piece)
    if body_done and chunked_up:
        out += last_chunk(trailers)
    replayable = body_done
    conn = pool.take(now, spec.idle_timeout_s)
    reused = conn is not None
    attempts = 0
    while True:
        attempts += 1
        if conn is None:
            conn = await _connect(address, port, spec.connect_timeout_s)
        try:
            await _send_request(conn, out, head, body_done, chunked_up, next_event, outcome)
            outcome.request_complete = True
            keep_upstream = await _relay_response(conn, downstream, head, on_response, outcome)
        except (ConnectionLost, UpstreamClosed) as exc:
            conn.close()
            conn = None
            if reused and replayable and not outcome.response_started and attempts == 1:
                reused = False
                continue
            if outcome.response_started:
                raise
            raise UpstreamClosed(f"upstream closed the connection: {exc}") from None
        except BaseException:
            conn.close()
            raise
        if keep_upstream and outcome.request_complete:
            pool.give(conn, trio.current_time())
        else:
            conn.close()
        return


async def _connect(address: str, port: int, timeout_s: float) -> Conn:
    with trio.move_on_after(timeout_s):
        try:
            return await connect_tcp(address, port)
        except OSError as exc:
            raise UpstreamConnectError(f"connect {address}:{port}: {exc.strerror}") from None
    raise UpstreamConnectError(f"connect {address}:{port}: timed out after {timeout_s:g}s")


async def _send_request(
    conn: Conn,
    out: bytearray,
    head: RequestHead,
    body_done: bool,
    chunked_up: bool,
    next_event: NextEvent,
    outcome: Outcome,
) -> None:
    await conn.send_all(out)
    if body_done:
        return
    while True:
        ev = await next_event()
        if isinstance(ev, End):
            await conn.send_all(last_chunk(ev.trailers) if chunked_up else b"")
            return
        outcome.bytes_in += len(ev)
        await conn.send_all(chunk(ev) if chunked_up else ev)


async def _relay_response(
    conn: Conn,
    downstream: Conn,
    head: RequestHead,
    on_response: ResponseHook,
    outcome: Outcome,
) -> bool:
    """Stream the response; returns whether the upstream connection may be reused."""
    parser = conn.proto
    if not isinstance(parser, ResponseParser):
        parser = conn.proto = ResponseParser()
    parser.start(head_request=head.method == "HEAD")
    events = parser.events
    chunked_down = False
    keep_upstream = True
    client_11 = head.version == "1.1"
    while True:
        data = await conn.recv()
        if data:
            try:
                parser.feed(data)
            except ProtocolError as exc:
                raise UpstreamProtocolError(str(exc)) from None
        elif not parser.feed_eof():
            raise UpstreamClosed("upstream closed before the response was complete")
        else:
            keep_upstream = False
        out = bytearray()
        finished = False
        while events:
            ev = events.popleft()
            if isinstance(ev, ResponseHead):
                keep_upstream = ev.keep_alive
                headers = on_response(ev)
                headers = strip_hop_by_hop(headers, ev.connection)
                bodyless = head.method == "HEAD" or ev.status in (204, 304)
                if ev.content_length is not None:
                    headers.append((b"content-length", b"%d" % ev.content_length))
                elif not bodyless:
                    if client_11:
                        chunked_down = True
                        headers.append((b"transfer-encoding", b"chunked"))
                    else:
                        outcome.downstream_keep_alive = False
                if not outcome.downstream_keep_alive:
                    headers.append((b"connection", b"close"))
                outcome.status = ev.status
                reason = ev.reason or reason_phrase(ev.status)
                out += serialize_head(b"HTTP/1.1 %d %b\r\n" % (ev.status, reason), headers)
                outcome.response_started = True
            elif isinstance(ev, End):
                if chunked_down:
                    out += last_chunk(ev.trailers)
                finished = True
            elif isinstance(ev, bytes):
                outcome.bytes_out += len(ev)
                out += chunk(ev) if chunked_down else ev
        if out:
            try:
                await downstream.send_all(out)
            except ConnectionLost:
                outcome.downstream_keep_alive = False
                return False
        if finished:
            return keep_upstream and parser.done


__all__ = ["Outcome", "UpstreamError", "exchange"]
