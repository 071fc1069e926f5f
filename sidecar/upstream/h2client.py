"""HTTP/2 to upstreams (h2, cleartext prior knowledge): shared, multiplexed connections.

Theory of operation. An `H2Pool` per endpoint (upstream/pool.py) keeps a few of these
client connections; a request takes a stream on the first one with room under the
upstream's MAX_CONCURRENT_STREAMS and opens another connection only when all are full
(concurrent requests wait for one connect rather than each opening its own). Each
connection runs a reader and a writer task in the background nursery, like the downstream
side (`http/h2server.py`): the HTTP/2 core holds the state, the reader turns frames into
per-stream events, one writer sends what the core queues.

Flow control runs end to end here too: response DATA is acknowledged when the downstream
took it, request DATA is sent only within the upstream's windows. A GOAWAY stops new
streams on that connection (the next request opens another); streams at or below its
last-stream-id go on to their end (RFC 9113 §6.8: a server stopping gracefully finishes
them), streams above it were never processed and end with `UpstreamRefused`, which the
caller may retry elsewhere.
"""

from __future__ import annotations

from collections import deque

import trio

from sidecar.errors import StreamError, UpstreamClosed
from sidecar.protocol.h2core import (
    CANCEL,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Event,
    H2ConnectionError,
    H2Core,
    StreamClosed,
    error_name,
)
from sidecar.protocol.http2 import check_trailers
from sidecar.transport.h2pump import FlowStream, H2Pump
from sidecar.transport.io import Conn, ConnectionLost
from sidecar.transport.signal import Signal

Headers = list[tuple[bytes, bytes]]
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024


class UpstreamRefused(UpstreamClosed):
    """The upstream did not process the stream (REFUSED_STREAM or GOAWAY): safe to retry."""

    retryable = True


class Response:
    """The upstream's response head."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers


class Trailers:
    """The end of a response, with its trailers (possibly none)."""

    __slots__ = ("headers",)

    def __init__(self, headers: Headers | None) -> None:
        self.headers = headers


StreamEvent = Response | bytes | Trailers


class UpstreamStream(FlowStream):
    """One request's stream on an upstream connection."""

    __slots__ = ("conn", "ended_remote", "error", "events", "flow", "more")

    def __init__(self, conn: H2ClientConnection, sid: int) -> None:
        super().__init__(conn, sid)
        self.conn = conn
        self.events: deque[StreamEvent] = deque()
        self.flow: deque[int] = deque()  # flow-controlled length of each queued DATA
        self.more = Signal()
        self.error: UpstreamClosed | None = None
        self.ended_remote = False

    def failure(self) -> Exception | None:
        return self.error

    def closed_error(self) -> Exception:
        return UpstreamClosed("upstream closed the stream")

    def push(self, event: StreamEvent, flow: int = 0) -> None:
        self.events.append(event)
        if isinstance(event, bytes):
            self.flow.append(flow)
        elif isinstance(event, Trailers):
            self.ended_remote = True
        self.more.set()

    def fail(self, error: UpstreamClosed) -> None:
        self.error = error
        self.more.set()
        self.window.set()

    async def next_event(self) -> StreamEvent:
        while not self.events:
            if self.error is not None:
                raise self.error
            await self.more.wait()
        event = self.events.popleft()
        if isinstance(event, bytes):
            flow = self.flow.popleft()
            if flow:
                self.conn.h2.acknowledge_received_data(flow, self.sid)
                self.conn.kick()
        return event

    def end(self, trailers: Headers | None = None) -> None:
        """End the request, with trailers if the client sent some."""
        try:
            if trailers:
                self.conn.h2.send_headers(self.sid, trailers, end_stream=True)
            else:
                self.conn.h2.end_stream(self.sid)
        except StreamClosed:
            raise UpstreamClosed("upstream closed the stream") from None
        self.ended_local = True
        self.conn.kick()

    def cancel(self) -> None:
        """Give the stream up (the downstream went away or a deadline passed)."""
        self.conn.h2.reset_stream(self.sid, CANCEL)
        self.close()

    def close(self) -> None:
        conn = self.conn
        if conn.streams.pop(self.sid, None) is not None:
            for flow in self.flow:  # credit for DATA nobody will read
                conn.h2.acknowledge_received_data(flow, self.sid)
            conn.kick()
            if conn.goaway and not conn.streams:
                conn.close()  # its last stream: a connection going away is done


class H2ClientConnection(H2Pump):
    def __init__(self, conn: Conn) -> None:
        super().__init__(conn, H2Core(client=True, initial_window=STREAM_WINDOW))
        self.streams: dict[int, UpstreamStream] = {}
        self.closed = False
        self.goaway = False

    @property
    def available(self) -> bool:
        if self.closed or self.goaway:
            return False
        return len(self.streams) < self.h2.remote_max_streams

    def open(self, headers: Headers, *, end_stream: bool) -> UpstreamStream:
        if self.goaway:
            raise UpstreamRefused("upstream connection is going away")
        try:
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, headers, end_stream=end_stream)
        except StreamClosed as exc:  # the connection closed under us: try another
            self.goaway = True
            raise UpstreamRefused(f"upstream connection unusable: {exc}") from None
        stream = UpstreamStream(self, sid)
        self.streams[sid] = stream
        stream.ended_local = end_stream
        self.kick()
        return stream

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.h2.initiate_connection(CONNECTION_WINDOW)
        self.kick()
        error: UpstreamClosed = UpstreamClosed("upstream closed the connection")
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.writer)
                    task_status.started()
                    try:
                        await self._read()
                    except ConnectionLost as exc:
                        error = UpstreamClosed(f"upstream connection lost: {exc}")
                    nursery.cancel_scope.cancel()
        finally:
            self.closed = True
            if self.lost is not None:
                error = UpstreamClosed(f"upstream connection lost: {self.lost}")
            for stream in list(self.streams.values()):
                stream.fail(error)
            self.streams.clear()
            self.conn.close()

    async def _read(self) -> None:
        while True:
            data = await self.conn.recv()
            if not data:
                return
            try:
                events = self.h2.receive_data(data)
            except H2ConnectionError as exc:
                await self.flush_now()
                raise ConnectionLost(f"HTTP/2 protocol error from upstream: {exc}") from None
            for event in events:
                self._dispatch(event)
            self.kick()
            if self.goaway and not self.streams:
                return

    def _dispatch(self, event: Event) -> None:
        kind = event.kind
        sid = event.stream_id
        stream = self.streams.get(sid) if sid else None
        if kind == Event.HEADERS:
            if stream is not None:
                headers = event.headers
                status = int(headers[0][1])  # the core checked it is there, 3 digits
                fields = headers[1:]
                if not self._valid(stream, fields):
                    return
                stream.push(Response(status, fields))
                if event.ended:
                    stream.push(Trailers(None))
        elif kind == Event.DATA:
            if stream is not None:
                stream.push(event.data, event.flow)
                if event.ended:
                    stream.push(Trailers(None))
            else:
                self.h2.acknowledge_received_data(event.flow, sid)
        elif kind == Event.TRAILERS:
            if stream is not None and self._valid(stream, event.headers):
                stream.push(Trailers(event.headers))
        elif kind == Event.RESET:
            if stream is not None:
                code = event.code
                cls = UpstreamRefused if code == REFUSED_STREAM else UpstreamClosed
                stream.fail(cls(f"upstream reset the stream ({error_name(code)})"))
                self.streams.pop(sid, None)
        elif kind == Event.WINDOW:
            targets = [stream] if stream is not None else self.streams.values()
            for s in targets:
                s.window.set()
        elif kind == Event.GOAWAY:
            self.goaway = True
            last = event.last_stream_id
            for s in [s for s in self.streams.values() if s.sid > last]:
                s.fail(UpstreamRefused("upstream sent GOAWAY before this stream"))
                self.streams.pop(s.sid, None)

    def _valid(self, stream: UpstreamStream, fields: Headers) -> bool:
        """A response's fields as a downstream may receive them (RFC 9113 §8.2: lower-case
        names, no pseudo-header after the status, no connection-specific fields, no control
        bytes); otherwise the stream is reset and the request fails (502)."""
        try:
            check_trailers(fields)
        except StreamError as exc:
            self.h2.reset_stream(stream.sid, PROTOCOL_ERROR)
            stream.fail(UpstreamClosed(f"upstream sent a malformed response: {exc}"))
            self.streams.pop(stream.sid, None)
            return False
        return True

    def retire(self) -> None:
        """Take no new stream and close once the open ones have ended (the endpoint left
        the cluster: what it carries finishes, as after a server's GOAWAY)."""
        self.goaway = True
        if not self.streams:
            self.close()

    def close(self) -> None:
        self.scope.cancel()
