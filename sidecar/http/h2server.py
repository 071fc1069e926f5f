"""HTTP/2 downstream connections: one task reads frames, one writes, one per stream.

Theory of operation. The reader feeds bytes to the connection's `H2Core` (protocol/h2core.py)
and turns its events into stream state
(body chunks, ends, resets, window updates). Each request runs in its own task through the
shared `RequestHandler` (routing, forwarding, metrics and logs are the HTTP/1 ones): it
reads its body with `next_event` and answers through the core. Frames are written by a
single writer task, woken whenever the core has something to send, so the frames of many
streams leave in one send and no two tasks ever interleave bytes on the socket.

Flow control is end to end. A request body's DATA is acknowledged (its window re-opened)
only when the stream's task takes it to send upstream, so a slow upstream slows the client
and at most the advertised windows are buffered. A response's DATA goes out only within the
client's windows, and a stream waits while the writer has more than HIGH_WATER bytes
unsent, so a client that stops reading stops the upstream reads too.

Shutdown. On drain (or when a reload removed the listener) the connection sends GOAWAY
naming the last stream it took, refuses later streams (REFUSED_STREAM: clients retry them
elsewhere), lets the open ones finish and then closes. A client's GOAWAY, or a protocol
error (the core sends GOAWAY), ends the connection.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque

import outcome
import trio

from ca.spiffe import SpiffeId
from sidecar.config.headerops import HeaderOps
from sidecar.config.mesh import Destination
from sidecar.config.model import ListenerKey
from sidecar.errors import DownstreamClosed, ProtocolError, StreamError
from sidecar.http.context import ProxyContext
from sidecar.http.downstream import Relay
from sidecar.http.forward import response_parser
from sidecar.http.handler import RequestHandler, log_refused
from sidecar.http.outcome import Outcome
from sidecar.http.pace import DISCARD_LIMIT, DISCARD_S, BodyPace, too_slow
from sidecar.protocol.grpc import is_grpc
from sidecar.protocol.h2core import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    Event,
    H2ConnectionError,
    H2Core,
    StreamClosed,
)
from sidecar.protocol.http1 import END, End, RequestHead
from sidecar.protocol.http2 import (
    CONNECTION_SPECIFIC,
    check_trailers,
    local_headers,
    request_head,
    response_headers,
)
from sidecar.protocol.resets import ResetBudget
from sidecar.protocol.response import ResponseHead, feed_response
from sidecar.protocol.wire import decimal
from sidecar.tcp.relay import Counts
from sidecar.transport.h2pump import FlowStream, H2Pump
from sidecar.transport.idle import Tracked
from sidecar.transport.io import Conn, ConnectionLost
from sidecar.transport.signal import Signal

log = logging.getLogger("weft.h2")
STREAM_WINDOW = 256 * 1024  # what a client may send on one stream before we ask for more
CONNECTION_WINDOW = 1024 * 1024  # ... and on all streams together
MAX_CONCURRENT_STREAMS = 100
READ_SLICE = 8 * 1024  # bytes handed to the core at once (see _read)
PARKED_WORKERS = MAX_CONCURRENT_STREAMS  # stream tasks kept waiting for the next streams

Headers = list[tuple[bytes, bytes]]


class H2Stream(FlowStream):
    """One request/response exchange on an HTTP/2 connection (a `Downstream`)."""

    __slots__ = (
        "body", "body_left", "more", "pace", "received", "request_ended", "reset_code", "scope",
        "too_large",
    )  # fmt: skip

    def __init__(self, conn: Http2Connection, sid: int, max_body_bytes: int = 0) -> None:
        super().__init__(conn, sid)
        self.body: deque[tuple[bytes, int] | End] = deque()
        self.more = Signal()  # set when body arrives, ends, or the stream is reset
        self.scope = trio.CancelScope()
        self.reset_code: int | None = None
        self.request_ended = False
        # --max-request-body-bytes, as on HTTP/1: what may still arrive (None: no limit)
        self.body_left = max_body_bytes or None
        self.received = 0  # body bytes so far
        self.too_large = False
        self.pace: BodyPace | None = None  # the body's deadline (http/pace.py)

    def failure(self) -> Exception | None:
        return (
            DownstreamClosed("stream reset by the client") if self.reset_code is not None else None
        )

    def closed_error(self) -> Exception:
        return DownstreamClosed("stream closed")

    # -- events from the reader ---------------------------------------------------------
    def feed(self, data: bytes, flow: int) -> None:
        if self.pace is not None:
            self.pace.took(len(data))
        self.received += len(data)
        if self.body_left is not None:
            self.body_left -= len(data)
            if self.body_left < 0 or self.too_large:
                self.too_large = True  # the handler answers 413 (or resets) at next read
                self._ack(flow)
                self.body.clear()
                self.more.set()
                return
        self.body.append((data, flow))
        self.more.set()

    def limit_body(self, head: RequestHead, limit: int) -> None:
        """Hold the body to `limit` bytes (a route's) from here on as it streams;
        ProtocolError (413) when it is over already."""
        left = limit - self.received
        if (head.content_length or 0) > limit or left < 0:
            self.too_large = True
            raise self._over_limit()
        self.body_left = left if self.body_left is None else min(self.body_left, left)

    def unread(self, events: list[bytes | End]) -> None:
        """Put body events back in front (a body read whole to be checked, then forwarded)."""
        self.body.extendleft(reversed([(e, 0) if isinstance(e, bytes) else e for e in events]))
        self.more.set()

    def _over_limit(self) -> ProtocolError:
        return ProtocolError("request body over the limit", status=413)

    def finish(self, trailers: Headers | None) -> None:
        self.request_ended = True
        self.body.append(End(trailers) if trailers else END)
        self.more.set()

    def was_reset(self, code: int) -> None:
        self.reset_code = code
        self.more.set()
        self.window.set()
        self.scope.cancel()

    # -- Downstream ---------------------------------------------------------------------
    @property
    def relay(self) -> Relay:
        return relay_h2

    def protocol(self, head: RequestHead) -> str:
        return "HTTP/2"

    async def send_continue(self) -> None:
        return None  # HTTP/2 clients do not wait for 100 Continue

    def response_writer(
        self, head: RequestHead, ops: tuple[HeaderOps, ...], outcome: Outcome
    ) -> H2Writer:
        return H2Writer(self, ops)

    async def next_event(self) -> bytes | End:
        while not self.body:
            if self.reset_code is not None:
                raise DownstreamClosed("stream reset by the client")
            if self.too_large:
                raise self._over_limit()
            if self.pace is None:
                await self.more.wait()
                continue
            with trio.move_on_at(self.pace.deadline) as cs:
                await self.more.wait()
            if cs.cancelled_caught:
                raise too_slow()
        item = self.body.popleft()
        if isinstance(item, End):
            return item
        data, flow = item
        self._ack(flow)
        return data

    def take_buffered_body(self, out: bytearray, chunked: bool) -> tuple[int, bool]:
        if self.too_large:
            raise self._over_limit()
        taken = 0
        body = self.body
        while body:
            item = body.popleft()
            if isinstance(item, End):
                if chunked:
                    out += b"0\r\n\r\n"
                return taken, True
            data, flow = item
            self._ack(flow)
            taken += len(data)
            if chunked:
                out += b"%x\r\n%b\r\n" % (len(data), data)
            else:
                out += data
        return taken, False

    async def local_reply(
        self,
        head: RequestHead,
        status: int,
        body: bytes,
        headers: Headers | None = None,
        *,
        close: bool = False,
    ) -> bool:
        body_out = b"" if head.method == "HEAD" else body
        self.send_headers(local_headers(status, body, headers), end=not body_out)
        if body_out:
            await self.send_data(body_out, end=True)
        if not self.request_ended and not self.too_large and self.reset_code is None:
            await self._discard()
        return True

    async def _discard(self) -> None:
        """Read what is left of a small body the answer did not need, so the stream ends
        without a reset: clients still sending one (curl) report a reset after the answer
        as an error. Past DISCARD_LIMIT bytes or DISCARD_S, the reset (RFC 9113 §8.1)."""
        budget = DISCARD_LIMIT
        with trio.move_on_after(DISCARD_S), contextlib.suppress(ProtocolError, DownstreamClosed):
            while budget >= 0:
                ev = await self.next_event()
                if isinstance(ev, End):
                    return
                budget -= len(ev)

    # -- sending --------------------------------------------------------------------------
    def send_headers(self, headers: Headers, *, end: bool) -> None:
        if self.reset_code is not None:
            raise DownstreamClosed("stream reset by the client")
        try:
            self.pump.h2.send_headers(self.sid, headers, end_stream=end)
        except StreamClosed:  # the client reset the stream or the connection closed
            raise DownstreamClosed("stream closed") from None
        self.ended_local = end
        self.pump.kick()

    async def tunnel(self, upstream: Conn, first: bytes) -> Counts:
        raise ProtocolError("Upgrade is an HTTP/1.1 mechanism", status=400)  # never reached

    def send_trailers(self, trailers: Headers) -> None:
        if self.reset_code is not None:
            raise DownstreamClosed("stream reset by the client")
        try:
            self.pump.h2.send_headers(self.sid, trailers, end_stream=True)
        except StreamClosed:
            raise DownstreamClosed("stream closed") from None
        self.ended_local = True
        self.pump.kick()

    def _ack(self, flow: int) -> None:
        if flow:
            self.pump.h2.acknowledge_received_data(flow, self.sid)
            self.pump.kick()

    def close(self) -> None:
        """After the handler: reset what was left half-done (and return unread credit)."""
        h2c = self.pump.h2
        for item in self.body:
            if not isinstance(item, End):
                h2c.acknowledge_received_data(item[1], self.sid)
        self.body.clear()
        if self.reset_code is None and (not self.ended_local or not self.request_ended):
            # An unfinished answer is an error; an unread request body after a complete
            # answer is not (RFC 9113 §8.1: stop it with NO_ERROR).
            h2c.reset_stream(self.sid, NO_ERROR if self.ended_local else INTERNAL_ERROR)
        self.pump.kick()


class H2Writer:
    """A response from an HTTP/2 upstream to an HTTP/2 client: frames and trailers as they are."""

    __slots__ = ("ops", "stream")

    def __init__(self, stream: H2Stream, ops: tuple[HeaderOps, ...]) -> None:
        self.stream = stream
        self.ops = ops

    async def start(self, status: int, headers: Headers, *, end: bool) -> None:
        out = [(b":status", decimal(status))]
        if self.ops:  # what a route adds may be in any case, or connection-specific
            for op in self.ops:
                headers = op.apply(headers)
            out.extend((n.lower(), v) for n, v in headers if n.lower() not in CONNECTION_SPECIFIC)
        else:  # an HTTP/2 upstream's fields, checked on arrival (upstream/h2client.py)
            out.extend(headers)
        self.stream.send_headers(out, end=end)

    async def data(self, data: bytes) -> None:
        await self.stream.send_data(data, end=False)

    async def end(self, trailers: Headers | None) -> None:
        if trailers:
            self.stream.send_trailers(trailers)
        else:
            await self.stream.send_data(b"", end=True)


class Http2Connection(H2Pump):
    """One downstream HTTP/2 connection."""

    def __init__(
        self,
        ctx: ProxyContext,
        listener: ListenerKey,
        conn: Conn,
        *,
        scheme: str,
        sni: str | None,
        peer_id: SpiffeId | None = None,
        destination: Destination | None = None,
        client_cert: bytes = b"",
    ) -> None:
        self.ctx = ctx
        self.handler = RequestHandler(
            ctx, listener, conn.peer, scheme, sni, peer_id, destination, client_cert=client_cert
        )
        # What arrives is validated by request_head (protocol/http2.py): a malformed request
        # resets its own stream. What we send is built valid.
        core = H2Core(
            client=False,
            max_concurrent_streams=MAX_CONCURRENT_STREAMS,
            initial_window=STREAM_WINDOW,
            max_header_list_size=ctx.store.current.limits.max_header_bytes,
        )
        super().__init__(conn, core)
        self.listener = listener
        self.streams: dict[int, H2Stream] = {}
        self.closing = False
        self.peer_gone = False  # nothing more can be sent: flush and close
        self.resets = ResetBudget(trio.current_time())
        self._reset_now: set[int] = set()  # streams the client reset in the current read
        self._idle = trio.Event()  # set when the last stream ends while closing
        self._parked: list[trio.lowlevel.Task] = []  # workers waiting for a stream

    async def run(self, initial: bytes = b"") -> None:
        self.h2.initiate_connection(CONNECTION_WINDOW)
        self.kick()
        scope = self.scope
        tracked = Tracked(
            activity=lambda: self.conn.activity,
            # until its first request, a connection is timed like a head (PINGs and
            # SETTINGS do not keep a connection that asks for nothing open)
            in_head=lambda: self.handler.snapshot is None,
            cancel=scope.cancel,
            busy=lambda: True,  # a drain ends it with GOAWAY once its streams are done
        )
        self.ctx.idle.add(tracked, trio.current_time())
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.writer)
                    nursery.start_soon(self._drain_on, self.ctx.draining, nursery)
                    with contextlib.suppress(ConnectionLost):  # inside: not as a group
                        await self._read(nursery, initial)
                    nursery.cancel_scope.cancel()
        finally:
            self.ctx.idle.discard(tracked)
            self.conn.close()

    async def _read(self, nursery: trio.Nursery, initial: bytes) -> None:
        data = initial
        while True:
            # A large read is handed to h2 in slices, with a checkpoint between them: a
            # client that packs a read with cheap frames (rapid reset) cannot hold the
            # event loop for the whole of it, and is cut off as soon as it is told GOAWAY.
            for at in range(0, len(data), READ_SLICE):
                if at:
                    await trio.lowlevel.checkpoint()
                try:
                    events = self.h2.receive_data(data[at : at + READ_SLICE])
                except H2ConnectionError as exc:  # the core queued GOAWAY with the error
                    log.debug("HTTP/2 protocol error from %s: %s; connection closed",
                              self.conn.peer, exc)  # fmt: skip
                    await self.flush_now()
                    return
                # a stream opened and reset in the same read is never started
                self._reset_now = {e.stream_id for e in events if e.kind == Event.RESET}
                for event in events:
                    self._dispatch(nursery, event)
                self.kick()
                if self.peer_gone:
                    await self.flush_now()
                    return
                await self.room_to_read()
            data = await self.conn.recv()
            if not data:
                return

    def _calm_down(self) -> None:
        """Rapid reset (protocol/resets.py): GOAWAY ENHANCE_YOUR_CALM, then close."""
        log.warning("HTTP/2 client %s reset streams faster than allowed; connection closed",
                    self.conn.peer)  # fmt: skip
        self.h2.close_connection(ENHANCE_YOUR_CALM)
        self.peer_gone = True

    async def _drain_on(self, event: trio.Event, nursery: trio.Nursery) -> None:
        """When `event` is set: GOAWAY, let open streams finish, flush, close."""
        await event.wait()
        self.goaway()
        if self.streams:
            await self._idle.wait()
        await self.flushed()
        nursery.cancel_scope.cancel()

    def goaway(self) -> None:
        """Stop taking streams: a GOAWAY naming the last one we took (RFC 9113 §6.8)."""
        if self.closing:
            return
        self.closing = True
        self.h2.send_goaway(NO_ERROR, self.h2.highest_inbound_stream_id)
        self.kick()

    def _dispatch(self, nursery: trio.Nursery, event: Event) -> None:
        if self.peer_gone:  # after a GOAWAY of ours: the rest of the batch is not served
            return
        kind = event.kind
        if kind == Event.HEADERS:
            self._open(nursery, event)
            return
        stream = self.streams.get(event.stream_id)
        if kind == Event.DATA:
            if stream is not None:
                stream.feed(event.data, event.flow)
                if event.ended:
                    stream.finish(None)
            else:  # a stream we stopped reading: free the credit
                self.h2.acknowledge_received_data(event.flow, event.stream_id)
        elif kind == Event.TRAILERS:
            if stream is not None:
                try:
                    check_trailers(event.headers)
                except StreamError:
                    self._reset(stream, PROTOCOL_ERROR)
                    return
                stream.finish(event.headers)
        elif kind == Event.RESET:
            if stream is not None:
                stream.was_reset(event.code)
            if (
                event.remote
                and (stream is not None or event.stream_id in self._reset_now)
                and not self.resets.spend(trio.current_time())
            ):
                self._calm_down()
        elif kind == Event.WINDOW:
            if stream is not None:
                stream.window.set()
            else:
                for each in self.streams.values():
                    each.window.set()
        elif kind == Event.GOAWAY:  # the client is going away: nothing more is served
            self.peer_gone = True

    def _open(self, nursery: trio.Nursery, event: Event) -> None:
        sid = event.stream_id
        if self.closing:
            self.h2.reset_stream(sid, REFUSED_STREAM)
            return
        if self.listener not in self.ctx.store.current.routers:
            # A reload removed our listener: this stream finishes on the last snapshot that
            # had it (as HTTP/1 does), and the client is told to go elsewhere for the next.
            self.goaway()
        if sid in self._reset_now:  # opened and reset in one read: nothing to serve
            return
        limits = self.ctx.store.current.limits
        stream = H2Stream(self, sid, limits.max_request_body_bytes)
        self.streams[sid] = stream
        ended = event.ended
        if ended:
            stream.finish(None)
        try:
            head = request_head(
                event.headers,
                end_stream=ended,
                max_headers=limits.max_headers,
                max_body_bytes=limits.max_request_body_bytes,
            )
        except StreamError as malformed:
            log.debug("HTTP/2 stream %d from %s malformed: %s", sid, self.conn.peer, malformed)
            self._reset(stream, PROTOCOL_ERROR)
            self._done(stream)
            return
        except ProtocolError as exc:
            got = {n: v.decode("latin-1") for n, v in event.headers if n[:1] == b":"}
            log_refused(self.ctx, self.handler.peer_text, "HTTP/2", exc, got.get(b":method", "-"),
                        got.get(b":authority", ""), got.get(b":path", ""))  # fmt: skip
            nursery.start_soon(self._refuse, stream, exc)
            return
        if not ended and limits.body_timeout_s and not is_grpc(head):
            stream.pace = BodyPace(trio.current_time(), limits)
        if self._parked:  # a worker that finished a stream takes this one
            trio.lowlevel.reschedule(self._parked.pop(), outcome.Value((stream, head)))
        else:
            nursery.start_soon(self._worker, stream, head)

    async def _worker(self, stream: H2Stream, head: RequestHead) -> None:
        """Serve streams one after another: after each, wait parked for the next (a task
        costs more to start than to wake), up to PARKED_WORKERS waiting per connection."""
        task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:  # the connection is ending
            self._parked.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            await self._serve(stream, head)
            if len(self._parked) >= PARKED_WORKERS or self.closing:
                return
            self._parked.append(task)
            stream, head = await trio.lowlevel.wait_task_rescheduled(abort)

    async def _serve(self, stream: H2Stream, head: RequestHead) -> None:
        """Run one request; whatever it raises ends this stream only."""
        refused = None
        try:
            with stream.scope:
                await self.handler.handle(head, stream)
        except ProtocolError as exc:
            refused = exc
        except DownstreamClosed:
            pass
        except Exception:  # a bug in one stream must not take the connection's others down
            log.exception("HTTP/2 stream %d failed; reset", stream.sid)
        if refused is not None and not stream.ended_local and stream.reset_code is None:
            await self._refuse(stream, refused)
        else:
            self._done(stream)

    async def _refuse(self, stream: H2Stream, exc: ProtocolError) -> None:
        """Answer a request the proxy refuses (its status, a one-line reason)."""
        log.debug("HTTP/2 stream %d from %s refused (%d): %s", stream.sid, self.conn.peer,
                 exc.status, exc)  # fmt: skip
        stream.scope = trio.CancelScope()  # a scope is entered once; the handler's is spent
        with stream.scope, contextlib.suppress(DownstreamClosed):
            body = f"{exc}\n".encode()
            stream.send_headers(local_headers(exc.status, body), end=False)
            await stream.send_data(body, end=True)
        self._done(stream)

    def _reset(self, stream: H2Stream, code: int) -> None:
        """A stream error: reset this stream, keep the connection (RFC 9113 §5.4.2)."""
        self.h2.reset_stream(stream.sid, code)
        stream.was_reset(code)

    def _done(self, stream: H2Stream) -> None:
        stream.close()
        self.streams.pop(stream.sid, None)
        if self.closing and not self.streams:
            self._idle.set()


async def relay_h2(
    conn: Conn,
    stream: H2Stream,
    head: RequestHead,
    ops: tuple[HeaderOps, ...],
    outcome: Outcome,
) -> bool:
    """Stream an HTTP/1.1 upstream response to an HTTP/2 stream."""
    parser = response_parser(conn, head)
    events = parser.events
    keep_upstream = True
    while True:
        if not feed_response(parser, await conn.recv()):
            keep_upstream = False
        pending: Headers | None = None
        finished = False
        while events:
            ev = events.popleft()
            if isinstance(ev, ResponseHead):
                keep_upstream = ev.keep_alive
                outcome.response(ev.status, ev)
                pending = response_headers(ev, ops)
            elif isinstance(ev, bytes):
                if pending is not None:
                    stream.send_headers(pending, end=False)
                    pending = None
                outcome.relayed(ev)
                await stream.send_data(ev, end=False)
            else:
                if pending is not None:
                    stream.send_headers(pending, end=True)
                    pending = None
                else:
                    await stream.send_data(b"", end=True)
                finished = True
        if pending is not None:
            stream.send_headers(pending, end=False)
        if finished:
            return keep_upstream and parser.reusable


async def serve_http2(
    ctx: ProxyContext,
    listener: ListenerKey,
    conn: Conn,
    *,
    initial: bytes = b"",
    scheme: str = "http",
    sni: str | None = None,
    peer_id: SpiffeId | None = None,
    destination: Destination | None = None,
    client_cert: bytes = b"",
) -> None:
    await Http2Connection(
        ctx, listener, conn, scheme=scheme, sni=sni, peer_id=peer_id, destination=destination,
        client_cert=client_cert,
    ).run(initial)  # fmt: skip
