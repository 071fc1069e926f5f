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

from typing import Any, Protocol

import trio

from sidecar.errors import unwrap
from sidecar.http.filters import HeaderOps
from sidecar.http.forward import Outcome, RetryableStatus, proxy_error
from sidecar.protocol.http1 import End, RequestHead
from sidecar.upstream.h2client import (
    H2Pool,
    Response,
    Trailers,
    UpstreamRefused,
    UpstreamStream,
)

Headers = list[tuple[bytes, bytes]]


class ResponseWriter(Protocol):
    """A response leaving towards the downstream, whatever its protocol."""

    async def start(self, status: int, headers: Headers, *, end: bool) -> None: ...

    async def data(self, data: bytes) -> None: ...

    async def end(self, trailers: Headers | None) -> None: ...


async def exchange_h2(
    ds: Any,
    pool: H2Pool,
    nursery: trio.Nursery,
    address: str,
    port: int,
    head: RequestHead,
    headers: Headers,
    body: bytes,
    body_done: bool,
    ops: tuple[HeaderOps, ...],
    outcome: Outcome,
    connect_timeout_s: float,
) -> None:
    """Forward one request to an HTTP/2 upstream; UpstreamError while nothing was sent."""
    retried = False
    while True:
        client = await pool.connection(nursery, address, port, connect_timeout_s)
        stream = client.open(headers, end_stream=body_done and not body)
        try:
            if body_done:
                if body:
                    await stream.send_data(body, end=True)
                outcome.request_complete = True
                await _relay(stream, ds.response_writer(head, ops, outcome), outcome)
            else:
                try:
                    async with trio.open_nursery() as n:
                        n.start_soon(_send_body, stream, ds, body, outcome)
                        await _relay(stream, ds.response_writer(head, ops, outcome), outcome)
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
                outcome.replay = None  # request trailers are not kept for a replay
            stream.end(trailers)
            outcome.request_complete = True
            return
        outcome.bytes_in += len(ev)
        outcome.keep_for_replay(ev)
        await stream.send_data(ev, end=False)


async def _relay(stream: UpstreamStream, writer: ResponseWriter, outcome: Outcome) -> None:
    while True:
        ev = await stream.next_event()
        if isinstance(ev, Response):
            if ev.status >= 500:
                outcome.proxy_error = proxy_error(ev.headers)
            if outcome.hold is not None and (failure := outcome.hold(ev)) is not None:
                raise RetryableStatus(ev.status, failure)
            outcome.status = ev.status
            outcome.response_started = True
            events = stream.events
            if events and isinstance(events[0], Trailers) and events[0].headers is None:
                events.popleft()  # HEADERS with END_STREAM (gRPC's trailers-only answers)
                outcome.grpc_status = grpc_status(ev.headers)
                await writer.start(ev.status, ev.headers, end=True)
                return
            await writer.start(ev.status, ev.headers, end=False)
        elif isinstance(ev, bytes):
            outcome.bytes_out += len(ev)
            await writer.data(ev)
        else:
            if ev.headers:
                outcome.grpc_status = grpc_status(ev.headers)
            await writer.end(ev.headers)
            return


def grpc_status(headers: Headers) -> int:
    """The grpc-status field's code (-1: none, or not a number)."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else -1
    return -1
