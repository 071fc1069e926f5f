"""The I/O shared by both ends of HTTP/2: one writer task per connection and
flow-controlled DATA.

Theory of operation. The connection's `H2Core` (protocol/h2core.py) queues frames in
memory; `H2Pump.kick` wakes the connection's one writer task, which sends everything queued
in one `send` (frames of many streams together, never interleaved by two tasks). A stream
sends DATA only within the peer's windows (`FlowStream.send_data`): when they are shut it
wakes the writer first (what is queued must leave, or the peer has nothing to acknowledge)
and waits for a WINDOW_UPDATE; and it waits while the writer has more than HIGH_WATER bytes
unsent, so a peer that stops reading stops whoever feeds the stream.
"""

from __future__ import annotations

import contextlib

import trio

from sidecar.protocol.h2core import H2Core, StreamClosed
from sidecar.transport.io import Conn, ConnectionLost
from sidecar.transport.signal import Signal

HIGH_WATER = 256 * 1024  # unsent bytes after which streams wait for the writer


class H2Pump:
    """The output side of one HTTP/2 connection."""

    def __init__(self, conn: Conn, h2conn: H2Core) -> None:
        self.conn = conn
        self.h2 = h2conn
        self.buffered = 0  # DATA bytes handed to h2 and not yet written
        self.unsent = 0  # bytes the writer holds because the peer does not read them
        self._wake = Signal()  # the writer's: frames are queued
        self._drained: trio.Event | None = None  # made when someone waits for a write
        # When a send fails the writer ends quietly (an exception from it would reach the
        # connection's nursery as an exception group): `lost` says why, and `scope`, the
        # connection's cancel scope, is cancelled so its reader stops too.
        self.lost: ConnectionLost | None = None
        self.scope = trio.CancelScope()

    def kick(self) -> None:
        self._wake.set()

    async def backpressure(self) -> None:
        if self.buffered > HIGH_WATER:
            await self._written()

    async def writer(self) -> None:
        try:
            await self._write()
        except ConnectionLost as exc:
            self.lost = exc
            self._wrote()  # nobody waits on a dead connection
            self.scope.cancel()

    async def _write(self) -> None:
        conn = self.conn
        while True:
            if not self.h2.out:
                await self._wake.wait()
            data = self.h2.data_to_send()
            if data:
                sent = conn.send_now(data)
                if sent < len(data):
                    self.unsent = len(data) - sent
                    await conn.send_rest(data, sent)
                    self.unsent = 0
                self.buffered = max(0, self.buffered - len(data))
            self._wrote()

    def _wrote(self) -> None:
        if self._drained is not None:
            self._drained.set()
            self._drained = None

    async def _written(self) -> None:
        """Until the writer's next pass ends (at once when the connection is lost)."""
        if self.lost is not None:
            return
        if self._drained is None:
            self._drained = trio.Event()
        await self._drained.wait()

    async def room_to_read(self) -> None:
        """Until the writer is no longer stuck on a peer that does not read. A peer
        flooding PING or SETTINGS frames without reading their ACKs would otherwise grow
        the queue of answers without bound: it is not read either while its answers wait,
        so TCP stops it."""
        if self.unsent:
            await self.flushed()

    async def flushed(self) -> None:
        """Until the writer has carried out everything queued so far."""
        self.kick()
        await self._written()

    async def flush_now(self) -> None:
        """Best effort, without the writer (the connection is ending)."""
        data = self.h2.data_to_send()
        if data:
            with trio.move_on_after(1.0), contextlib.suppress(ConnectionLost):
                await self.conn.send_all(data)


class FlowStream:
    """A stream that sends DATA within the peer's windows."""

    __slots__ = ("ended_local", "pump", "sid", "window")

    def __init__(self, pump: H2Pump, sid: int) -> None:
        self.pump = pump
        self.sid = sid
        self.window = Signal()  # set when the peer opens a window (or the stream dies)
        self.ended_local = False

    def failure(self) -> Exception | None:
        """What to raise when the stream can no longer send (None: it can)."""
        raise NotImplementedError

    def closed_error(self) -> Exception:
        raise NotImplementedError

    async def send_data(self, data: bytes, *, end: bool) -> None:
        pump = self.pump
        h2c = pump.h2
        view = memoryview(data)
        while True:
            error = self.failure()
            if error is not None:
                raise error
            try:
                window = min(h2c.local_flow_control_window(self.sid), h2c.max_outbound_frame_size)
            except StreamClosed:  # the stream, or the whole connection, is closed
                raise self.closed_error() from None
            n = min(window, len(view))
            if n <= 0 and view:
                pump.kick()  # what is queued must leave, or no window update ever comes
                await self.window.wait()
                continue
            last = n == len(view)
            try:
                h2c.send_data(self.sid, bytes(view[:n]), end_stream=end and last)
            except StreamClosed:
                raise self.closed_error() from None
            pump.buffered += n
            view = view[n:]
            if last:
                break
        self.ended_local = self.ended_local or end
        pump.kick()
        await pump.backpressure()
