"""Routes whose filters act on the response (compression, caching): the upstream's answer
passes through the filters' stages on its way to the downstream's writer.

Theory of operation. A filter that needs the response adds a stage to the Exchange: a
function that takes the writer the answer would go to (the `ResponseWriter` protocol:
start, data, end) and returns the writer to use instead. The handler then forwards through
`Staged`, which is the downstream in every respect but two: its `response_writer` is the
downstream's wrapped in the stages (in their order: transformations see the upstream's
answer first, then compression, then the cache, nearest the client), and
its `relay` — the path of HTTP/1.1 upstreams — parses the answer into writer calls instead
of relaying its bytes. Routes without such filters never reach this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.config.headerops import HeaderOps
from sidecar.http.downstream import Downstream, Relay, ResponseWriter
from sidecar.http.forward import response_parser
from sidecar.http.outcome import Outcome
from sidecar.protocol.http1 import End, RequestHead
from sidecar.protocol.response import ResponseHead, feed_response
from sidecar.protocol.wire import strip_hop_by_hop
from sidecar.tcp.relay import Counts
from sidecar.transport.io import Conn

Headers = list[tuple[bytes, bytes]]
Stage = tuple[int, Callable[[ResponseWriter], ResponseWriter]]  # (order, wrap)


class Staged:
    """A downstream whose answers go through `stages` (see the module's docstring)."""

    __slots__ = ("ds", "stages")

    def __init__(self, ds: Downstream, stages: list[Stage]) -> None:
        self.ds = ds
        self.stages = stages

    @property
    def relay(self) -> Relay:
        return relay_to_writer

    def response_writer(
        self, head: RequestHead, ops: tuple[HeaderOps, ...], outcome: Outcome
    ) -> ResponseWriter:
        writer: ResponseWriter = Sent(self.ds.response_writer(head, ops, outcome), outcome)
        for _, wrap in sorted(self.stages, key=_order, reverse=True):  # the client's side first
            writer = wrap(writer)
        return writer

    # -- the rest is the downstream's --------------------------------------------------
    def protocol(self, head: RequestHead) -> str:
        return self.ds.protocol(head)

    async def next_event(self) -> bytes | End:
        return await self.ds.next_event()

    def take_buffered_body(self, out: bytearray, chunked: bool) -> tuple[int, bool]:
        return self.ds.take_buffered_body(out, chunked)

    def limit_body(self, head: RequestHead, limit: int) -> None:
        self.ds.limit_body(head, limit)

    def unread(self, events: list[bytes | End]) -> None:
        self.ds.unread(events)

    async def send_continue(self) -> None:
        await self.ds.send_continue()

    async def tunnel(self, upstream: Conn, first: bytes) -> Counts:
        return await self.ds.tunnel(upstream, first)

    async def local_reply(
        self,
        head: RequestHead,
        status: int,
        body: bytes,
        headers: Headers | None = None,
        *,
        close: bool = False,
    ) -> bool:
        return await self.ds.local_reply(head, status, body, headers, close=close)


class Sent:
    """Nearest the client: records the status the stages actually sent (a cache's 200 for
    the upstream's 304, a transcoder's 404 for gRPC's NOT_FOUND), for metrics and the log."""

    __slots__ = ("next", "outcome")

    def __init__(self, writer: ResponseWriter, outcome: Outcome) -> None:
        self.next = writer
        self.outcome = outcome

    async def start(self, status: int, headers: Headers, *, end: bool) -> None:
        self.outcome.answered(status)
        await self.next.start(status, headers, end=end)

    async def data(self, data: bytes) -> None:
        await self.next.data(data)

    async def end(self, trailers: Headers | None) -> None:
        await self.next.end(trailers)


async def pause(writer: ResponseWriter) -> None:
    """Tell a stage the upstream has nothing more for now (a compressor flushes then: a
    stream's events go out as they come, a body that keeps coming is compressed whole)."""
    hook = getattr(writer, "pause", None)
    if hook is not None:
        await hook()


def _order(stage: Stage) -> int:
    return stage[0]


async def relay_to_writer(
    conn: Conn, downstream: Any, head: RequestHead, ops: tuple[HeaderOps, ...], outcome: Outcome
) -> bool:
    """An HTTP/1.1 upstream's answer as writer calls (`downstream.response_writer`);
    returns whether the upstream connection may be reused."""
    parser = response_parser(conn, head)
    events = parser.events
    writer: ResponseWriter | None = None
    keep_upstream = True
    while True:
        data = conn.recv_ready() if writer is not None else None
        if data is None:
            if writer is not None:  # the upstream paused: what the stages hold goes out
                await pause(writer)
            data = await conn.recv()
        if not feed_response(parser, data):
            keep_upstream = False
        while events:
            ev = events.popleft()
            if isinstance(ev, bytes):
                outcome.relayed(ev)
                assert writer is not None
                await writer.data(ev)
            elif isinstance(ev, ResponseHead):
                keep_upstream = ev.keep_alive
                outcome.response(ev.status, ev)
                # lower-case names: what an HTTP/2 writer sends as they are
                headers = [(n.lower(), v) for n, v in strip_hop_by_hop(ev.headers, ev.connection)]
                if ev.content_length is not None:
                    headers.append((b"content-length", b"%d" % ev.content_length))
                writer = downstream.response_writer(head, ops, outcome)
                if events and isinstance(events[0], End):  # no body: one head, ended
                    events.popleft()
                    await writer.start(ev.status, headers, end=True)
                    return keep_upstream and parser.reusable
                await writer.start(ev.status, headers, end=False)
            else:
                assert writer is not None
                await writer.end(None)  # HTTP/1.1 trailers are not forwarded (response.py)
                return keep_upstream and parser.reusable
