"""Forwarding to HTTP/2 upstreams: one stream per request on a shared connection.

Theory of operation. The request opens a stream on the endpoint's pool (`upstream/
h2client.py`); a request whose body is not all in memory streams it in a second task while
the response streams back, so bidirectional gRPC calls flow both ways at once. The response
goes to the downstream through its `ResponseWriter`: HTTP/1.1 clients get a chunked body
(with the trailers in the last chunk) when no length was given, HTTP/2 clients get frames
and trailers as they are. A stream the upstream refused before processing it is retried
once on another connection when the whole request is still in memory.
"""

from __future__ import annotations

from typing import Any

import trio

from sidecar.config.headerops import HeaderOps
from sidecar.config.model import Endpoint
from sidecar.errors import unwrap
from sidecar.http.downstream import ResponseWriter
from sidecar.http.outcome import Outcome
from sidecar.http.staged import Staged, pause
from sidecar.protocol.http1 import End, RequestHead
from sidecar.upstream.h2client import Response, Trailers, UpstreamRefused, UpstreamStream
from sidecar.upstream.pool import H2Pool

Headers = list[tuple[bytes, bytes]]


async def exchange_h2(
    *,
    downstream: Any,
    pool: H2Pool,
    nursery: trio.Nursery,
    endpoint: Endpoint,
    connect_timeout_s: float,
    head: RequestHead,
    headers: Headers,
    body: bytes,
    body_done: bool,
    ops: tuple[HeaderOps, ...],
    outcome: Outcome,
) -> None:
    """Forward one request to an HTTP/2 upstream; UpstreamError while nothing was sent."""
    retried = False
    staged = isinstance(downstream, Staged)
    while True:
        client = await pool.connection(nursery, endpoint.address, endpoint.port, connect_timeout_s)
        stream = client.open(headers, end_stream=body_done and not body)
        try:
            if body_done:
                if body:
                    await stream.send_data(body, end=True)
                outcome.request_sent()
                await _relay(stream, downstream.response_writer(head, ops, outcome), outcome,
                             staged)  # fmt: skip
            else:
                try:
                    async with trio.open_nursery() as n:
                        n.start_soon(_send_body, stream, downstream, body, outcome)
                        await _relay(
                            stream, downstream.response_writer(head, ops, outcome), outcome,
                            staged,
                        )  # fmt: skip
                        n.cancel_scope.cancel()  # the upstream answered before reading it all
                except BaseExceptionGroup as group:
                    raise unwrap(group) from None
        except UpstreamRefused:
            stream.close()
            if retried or not body_done or outcome.response_started:
                raise
            retried = True
            continue
        except BaseException:
            stream.cancel()
            raise
        if stream.ended_local:
            stream.close()
        else:
            stream.cancel()
        return


async def _send_body(stream: UpstreamStream, ds: Any, body: bytes, outcome: Outcome) -> None:
    if body:
        await stream.send_data(body, end=False)
    while True:
        ev = await ds.next_event()
        if isinstance(ev, End):
            trailers = [(n.lower(), v) for n, v in ev.trailers] if ev.trailers else None
            if trailers:
                outcome.trailers_sent()
            stream.end(trailers)
            outcome.request_sent()
            return
        outcome.sent(ev, ev)
        await stream.send_data(ev, end=False)


async def _relay(
    stream: UpstreamStream, writer: ResponseWriter, outcome: Outcome, staged: bool
) -> None:
    """`staged`: the writer is a route's response stages, told when the upstream pauses."""
    while True:
        if staged and not stream.events:
            await pause(writer)
        ev = await stream.next_event()
        if isinstance(ev, Response):
            outcome.response(ev.status, ev)
            events = stream.events
            if events and isinstance(events[0], Trailers) and events[0].headers is None:
                events.popleft()  # HEADERS with END_STREAM (gRPC's trailers-only answers)
                outcome.ended(ev.headers)
                await writer.start(ev.status, ev.headers, end=True)
                return
            await writer.start(ev.status, ev.headers, end=False)
        elif isinstance(ev, bytes):
            outcome.relayed(ev)
            await writer.data(ev)
        else:
            outcome.ended(ev.headers)
            await writer.end(ev.headers)
            return
