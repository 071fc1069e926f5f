"""The HTTP/2 connection state machine (RFC 9113), sans I/O, for both ends of the proxy.

Theory of operation. `H2Core` takes the bytes a peer sent (`receive_data`) and returns
`Event`s; what the proxy sends (`send_headers`, `send_data`, `reset_stream`, window
acknowledgements) is framed into `data_to_send`. It owns what the protocol owns: the
preface, frame sizes, the header block and its CONTINUATIONs, HPACK (protocol/hpackcodec.py),
stream states and identifiers, SETTINGS, PING, both directions' flow-control windows and
the content-length of a message against its DATA. Field validation is the caller's
(protocol/http2.py), so a malformed request resets its own stream only.

Errors are the RFC's: a connection error queues GOAWAY with its code and raises
`H2ConnectionError` (the caller flushes and closes); a stream error queues RST_STREAM and
reports the stream as reset (`Event.RESET`, `remote` false), the connection going on.
Streams the proxy reset are remembered for a while (`RECENTLY_CLOSED`) so the frames the
peer had in flight are dropped quietly, their DATA still credited to the connection.

One `Event` class with a `kind` (no class per event) and integer codes keep the compiled
hot path to attribute reads: a GET costs one frame parse, one HPACK decode and one event.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

from sidecar.protocol.hpackcodec import Decoder, Encoder, HeaderListTooLarge, HpackError

Headers = list[tuple[bytes, bytes]]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (§6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
# Flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# Error codes (§7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
SETTINGS_TIMEOUT, STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x4, 0x5, 0x6, 0x7
CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x9, 0xA, 0xB
INADEQUATE_SECURITY, HTTP_1_1_REQUIRED = 0xC, 0xD
ERROR_NAMES = (
    "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
    "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
    "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
)  # fmt: skip

# Settings (§6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
DEFAULT_FRAME = 16384
MAX_FRAME = 2**24 - 1
RECENTLY_CLOSED = 1024  # closed streams remembered (how they closed)
MAX_CONTINUATIONS = 256  # CONTINUATION frames in one header block

# How a stream closed (for frames that arrive after)
_ENDED, _RESET_SENT, _RESET_RECEIVED = 0, 1, 2

_HEAD = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id


def error_name(code: int) -> str:
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else str(code)


class H2ConnectionError(Exception):
    """The peer broke the protocol: GOAWAY with `code` is queued; close the connection."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{error_name(code)}: {message}")
        self.code = code


class StreamClosed(Exception):
    """Sending on a stream that is closed (or was never opened)."""


class _StreamError(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class Event:
    """Something the peer did. `kind` says what; the other fields apply as noted."""

    HEADERS: Final = 1  # a request (server) or response (client) head: headers, ended
    DATA: Final = 2  # data, flow (octets to acknowledge), ended
    TRAILERS: Final = 3  # headers; ends the stream
    RESET: Final = 4  # the stream is gone: code, remote (the peer's RST_STREAM, not ours)
    WINDOW: Final = 5  # the peer opened a window (stream_id 0: the connection's, or new SETTINGS)
    GOAWAY: Final = 6  # code, last_stream_id

    __slots__ = ("code", "data", "ended", "flow", "headers", "kind", "last_stream_id",
                 "remote", "stream_id")  # fmt: skip

    def __init__(self, kind: int, stream_id: int) -> None:
        self.kind = kind
        self.stream_id = stream_id
        self.headers: Headers = []
        self.data = b""
        self.flow = 0
        self.ended = False
        self.code = 0
        self.remote = False
        self.last_stream_id = 0


class _Stream:
    __slots__ = ("expected", "got_head", "local_ended", "received", "recv_window",
                 "remote_ended", "send_window", "sid", "unacked")  # fmt: skip

    def __init__(self, sid: int, send_window: int, recv_window: int) -> None:
        self.sid = sid
        self.send_window = send_window
        self.recv_window = recv_window  # what the peer may still send
        self.unacked = 0  # received and consumed, not yet returned in a WINDOW_UPDATE
        self.got_head = False
        self.remote_ended = False
        self.local_ended = False
        self.expected = -1  # content-length (-1: none)
        self.received = 0


class H2Core:
    """One HTTP/2 connection's protocol state (client or server side)."""

    def __init__(
        self,
        *,
        client: bool,
        max_concurrent_streams: int = 100,
        initial_window: int = DEFAULT_WINDOW,
        max_header_list_size: int = 0,
    ) -> None:
        self.client = client
        self.out = bytearray()
        self._in = bytearray()
        self.encoder = Encoder()
        self.decoder = Decoder(max_header_list_size)
        # ours
        self.local_max_streams = max_concurrent_streams
        self.local_window = initial_window
        self.local_max_list = max_header_list_size
        # the peer's
        self.remote_max_streams = 2**31
        self.remote_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_FRAME
        # the connection's windows
        self.send_window = DEFAULT_WINDOW
        self.recv_window = DEFAULT_WINDOW  # what the peer may still send
        self.recv_target = DEFAULT_WINDOW  # what we keep open for it
        self.recv_unacked = 0
        self.streams: dict[int, _Stream] = {}
        self.closed: dict[int, int] = {}  # recently closed stream id -> how
        self._closed_order: deque[int] = deque()  # the same ids, oldest first
        self.highest_inbound_stream_id = 0
        self.next_stream_id = 1 if client else 2
        self._preface = not client  # a server waits for the client's preface
        self._settings_seen = False
        self._block_sid = 0  # a header block in progress (0: none)
        self._block = bytearray()
        self._block_end_stream = False
        self._block_frames = 0
        self._block_self_dependent = False
        self.dead = False  # a connection error was sent

    # -- set-up ------------------------------------------------------------------------
    def initiate_connection(self, connection_window: int = DEFAULT_WINDOW) -> None:
        """Our preface: SETTINGS (and the client's magic), then the connection window."""
        if self.client:
            self.out += PREFACE
        settings = bytearray()
        settings += struct.pack(">HI", MAX_CONCURRENT_STREAMS, self.local_max_streams)
        settings += struct.pack(">HI", INITIAL_WINDOW_SIZE, self.local_window)
        if self.local_max_list:
            settings += struct.pack(">HI", MAX_HEADER_LIST_SIZE, self.local_max_list)
        if self.client:  # no server push: a PUSH_PROMISE is a connection error
            settings += struct.pack(">HI", ENABLE_PUSH, 0)
        self._frame(SETTINGS, 0, 0, bytes(settings))
        if connection_window > DEFAULT_WINDOW:
            self._frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", connection_window - DEFAULT_WINDOW))
            self.recv_window = self.recv_target = connection_window

    # -- receiving ---------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        if self.dead:
            return []
        events: list[Event] = []
        buf = self._in
        buf += data
        pos = 0
        try:
            if self._preface:
                n = min(len(buf), len(PREFACE))
                if buf[:n] != PREFACE[:n]:
                    raise H2ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                if n < len(PREFACE):
                    return events
                self._preface = False
                pos = len(PREFACE)
            end = len(buf)
            while end - pos >= 9:
                high, low, ftype, flags, sid = _HEAD.unpack_from(buf, pos)
                length = (high << 16) | low
                if length > DEFAULT_FRAME:  # what we advertise (SETTINGS_MAX_FRAME_SIZE)
                    raise H2ConnectionError(FRAME_SIZE_ERROR, f"frame of {length} octets")
                if end - pos - 9 < length:
                    break
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                self._receive_frame(ftype, flags, sid & 0x7FFFFFFF, payload, events)
        except H2ConnectionError as exc:
            self._connection_error(exc.code)
            raise
        finally:
            del buf[:pos]
        return events

    def _connection_error(self, code: int) -> None:
        self.dead = True
        self._in.clear()
        self.send_goaway(code, self.highest_inbound_stream_id)

    def _receive_frame(
        self, ftype: int, flags: int, sid: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._block_sid and ftype != CONTINUATION:
            raise H2ConnectionError(PROTOCOL_ERROR, "header block interrupted")
        if not self._settings_seen and ftype != SETTINGS:
            raise H2ConnectionError(PROTOCOL_ERROR, "the first frame was not SETTINGS")
        try:
            if ftype == DATA:
                self._data(flags, sid, payload, events)
            elif ftype == HEADERS:
                self._headers(flags, sid, payload, events)
            elif ftype == CONTINUATION:
                self._continuation(flags, sid, payload, events)
            elif ftype == WINDOW_UPDATE:
                self._window_update(sid, payload, events)
            elif ftype == RST_STREAM:
                self._rst_stream(sid, payload, events)
            elif ftype == SETTINGS:
                self._settings(flags, sid, payload, events)
            elif ftype == PING:
                self._ping(flags, sid, payload)
            elif ftype == PRIORITY:
                self._priority(sid, payload)
            elif ftype == GOAWAY:
                self._goaway(sid, payload, events)
            elif ftype == PUSH_PROMISE:
                raise H2ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE is not enabled")
            # other types are extensions: ignored (§5.5)
        except _StreamError as exc:
            self._stream_error(sid, exc.code, events)

    def _stream_error(self, sid: int, code: int, events: list[Event]) -> None:
        """RST_STREAM with `code`; the stream, if open, is reported reset."""
        self._frame(RST_STREAM, 0, sid, struct.pack(">I", code))
        stream = self.streams.get(sid)
        if stream is not None:
            self._close(stream, _RESET_SENT)
            event = Event(Event.RESET, sid)
            event.code = code
            events.append(event)

    def _idle(self, sid: int) -> bool:
        """Whether `sid` names a stream neither side has opened yet (§5.1)."""
        if (sid % 2 == 1) == self.client:  # ours
            return sid >= self.next_stream_id
        return sid > self.highest_inbound_stream_id

    def _padding(self, flags: int, payload: bytes) -> tuple[int, int]:
        """Where the content of a padded frame starts and ends."""
        if not flags & PADDED:
            return 0, len(payload)
        if not payload or payload[0] >= len(payload):
            raise H2ConnectionError(PROTOCOL_ERROR, "padding as long as the frame")
        return 1, len(payload) - payload[0]

    def _data(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        start, end = self._padding(flags, payload)
        flow = len(payload)
        if flow > self.recv_window:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA over the connection window")
        self.recv_window -= flow
        stream = self.streams.get(sid)
        if stream is None or stream.remote_ended or not stream.got_head:
            self._credit(flow)  # the connection's share comes back at once
            if stream is None and self._idle(sid):
                raise H2ConnectionError(PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            if stream is None and self.closed.get(sid) == _RESET_SENT:
                return  # in flight when we reset it
            raise _StreamError(STREAM_CLOSED)
        if flow > stream.recv_window:
            self._credit(flow)
            raise _StreamError(FLOW_CONTROL_ERROR)
        stream.recv_window -= flow
        data = payload[start:end] if start or end != flow else payload
        stream.received += len(data)
        ended = bool(flags & END_STREAM)
        if stream.expected >= 0 and (
            stream.received > stream.expected or (ended and stream.received != stream.expected)
        ):
            self._credit(flow)
            raise _StreamError(PROTOCOL_ERROR)  # content-length against DATA (§8.1.1)
        event = Event(Event.DATA, sid)
        event.data = data
        event.flow = flow
        event.ended = ended
        events.append(event)
        if ended:
            self._remote_end(stream)

    def _headers(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = self._padding(flags, payload)
        self._block_self_dependent = False
        if flags & PRIORITY_FLAG:
            if end - start < 5:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            dependency = int.from_bytes(payload[start : start + 4], "big") & 0x7FFFFFFF
            self._block_self_dependent = dependency == sid
            start += 5
        self._block_sid = sid
        self._block = bytearray(payload[start:end])
        self._block_end_stream = bool(flags & END_STREAM)
        self._block_frames = 0
        if flags & END_HEADERS:
            self._block_done(events)

    def _continuation(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if not self._block_sid or sid != self._block_sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block")
        self._block += payload
        self._block_frames += 1
        limit = 2 * self.local_max_list + DEFAULT_FRAME if self.local_max_list else 1 << 20
        if self._block_frames > MAX_CONTINUATIONS or len(self._block) > limit:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._block_done(events)

    def _block_done(self, events: list[Event]) -> None:
        sid, block, ended = self._block_sid, bytes(self._block), self._block_end_stream
        self._block_sid = 0
        self._block = bytearray()
        try:  # decoded whatever becomes of the stream: HPACK's state is the connection's
            headers = self.decoder.decode(block)
        except HpackError as exc:
            raise H2ConnectionError(COMPRESSION_ERROR, str(exc)) from None
        except HeaderListTooLarge as too_large:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, str(too_large)) from None
        stream = self.streams.get(sid)
        if stream is not None:
            self._later_block(stream, headers, ended, events)
            return
        if self.client:  # a server opens no streams (push is off)
            if self.closed.get(sid) == _RESET_SENT:
                return
            if self._idle(sid) or sid not in self.closed:
                raise H2ConnectionError(PROTOCOL_ERROR, f"HEADERS on unknown stream {sid}")
            raise _StreamError(STREAM_CLOSED)
        if sid % 2 == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, f"even stream id {sid} from a client")
        if sid <= self.highest_inbound_stream_id:
            how = self.closed.get(sid)
            if how == _RESET_SENT:
                return
            if how is None:
                raise H2ConnectionError(PROTOCOL_ERROR, f"stream id {sid} went backwards")
            raise H2ConnectionError(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
        self.highest_inbound_stream_id = sid
        if self._block_self_dependent:
            self._remember(sid, _RESET_SENT)
            raise _StreamError(PROTOCOL_ERROR)
        if len(self.streams) >= self.local_max_streams:
            self._remember(sid, _RESET_SENT)
            raise _StreamError(REFUSED_STREAM)
        stream = _Stream(sid, self.remote_window, self.local_window)
        self.streams[sid] = stream
        self._head(stream, headers, ended, events)

    def _head(self, stream: _Stream, headers: Headers, ended: bool, events: list[Event]) -> None:
        stream.got_head = True
        for name, value in headers:
            if name == b"content-length" and value.isdigit():
                stream.expected = int(value)
        if ended and stream.expected > 0:
            raise _StreamError(PROTOCOL_ERROR)  # a length with no DATA to carry it
        event = Event(Event.HEADERS, stream.sid)
        event.headers = headers
        event.ended = ended
        events.append(event)
        if ended:
            self._remote_end(stream)

    def _later_block(
        self, stream: _Stream, headers: Headers, ended: bool, events: list[Event]
    ) -> None:
        """A header block on a stream that has one: a response after 1xx, or trailers."""
        if stream.remote_ended:
            raise _StreamError(STREAM_CLOSED)
        if self.client and not stream.got_head:
            status = headers[0][1] if headers and headers[0][0] == b":status" else b""
            if len(status) != 3 or not status.isdigit():
                raise _StreamError(PROTOCOL_ERROR)  # a response starts with its status
            if status[:1] == b"1" and status != b"101":
                if ended:
                    raise _StreamError(PROTOCOL_ERROR)
                return  # informational: the final response follows
            self._head(stream, headers, ended, events)
            return
        if not ended:
            raise _StreamError(PROTOCOL_ERROR)  # trailers end the stream (§8.1)
        if stream.expected >= 0 and stream.received != stream.expected:
            raise _StreamError(PROTOCOL_ERROR)
        event = Event(Event.TRAILERS, stream.sid)
        event.headers = headers
        event.ended = True
        events.append(event)
        self._remote_end(stream)

    def _window_update(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            events.append(Event(Event.WINDOW, 0))
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid):
                raise H2ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return  # closed: allowed for a while (§5.1)
        if increment == 0:
            raise _StreamError(PROTOCOL_ERROR)
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise _StreamError(FLOW_CONTROL_ERROR)
        events.append(Event(Event.WINDOW, sid))

    def _rst_stream(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid):
                raise H2ConnectionError(PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            return
        self._close(stream, _RESET_RECEIVED)
        event = Event(Event.RESET, sid)
        event.code = int.from_bytes(payload, "big")
        event.remote = True
        events.append(event)

    def _settings(self, flags: int, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        self._settings_seen = True
        for at in range(0, len(payload), 6):
            code, value = struct.unpack_from(">HI", payload, at)
            if code == HEADER_TABLE_SIZE:
                self.encoder.set_max_size(value)
            elif code == ENABLE_PUSH:
                if value > 1:
                    raise H2ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH neither 0 nor 1")
            elif code == MAX_CONCURRENT_STREAMS:
                self.remote_max_streams = value
            elif code == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.remote_window
                self.remote_window = value
                for stream in self.streams.values():  # §6.9.2: open windows move
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise H2ConnectionError(FLOW_CONTROL_ERROR, "a window over 2^31-1")
            elif code == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= MAX_FRAME:
                    raise H2ConnectionError(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.max_outbound_frame_size = value
        self._frame(SETTINGS, ACK, 0, b"")
        events.append(Event(Event.WINDOW, 0))  # windows and frame sizes may have moved

    def _ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "PING of the wrong size")
        if not flags & ACK:
            self._frame(PING, ACK, 0, payload)

    def _priority(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "PRIORITY of the wrong size")
        if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == sid:
            raise _StreamError(PROTOCOL_ERROR)  # a stream cannot depend on itself (§5.3.1)
        # priorities are advisory; this proxy serves streams as they come

    def _goaway(self, sid: int, payload: bytes, events: list[Event]) -> None:
        if sid != 0:
            raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = struct.unpack_from(">II", payload)
        event = Event(Event.GOAWAY, 0)
        event.last_stream_id = last & 0x7FFFFFFF
        event.code = code
        events.append(event)

    def _remote_end(self, stream: _Stream) -> None:
        stream.remote_ended = True
        if stream.local_ended:
            self._close(stream, _ENDED)

    def _close(self, stream: _Stream, how: int) -> None:
        del self.streams[stream.sid]
        self._remember(stream.sid, how)

    def _remember(self, sid: int, how: int) -> None:
        """Keep how `sid` closed, forgetting the oldest past RECENTLY_CLOSED (a deque,
        not the dict's order: a dict's deleted front entries make `next(iter())` slow)."""
        if sid not in self.closed:
            self._closed_order.append(sid)
        self.closed[sid] = how
        if len(self._closed_order) > RECENTLY_CLOSED:
            self.closed.pop(self._closed_order.popleft(), None)

    # -- flow control ------------------------------------------------------------------
    def _credit(self, n: int) -> None:
        """`n` octets of the connection's window consumed: returned in batches."""
        self.recv_unacked += n
        if self.recv_unacked and self.recv_unacked * 2 >= self.recv_target:
            self._frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.recv_unacked))
            self.recv_window += self.recv_unacked
            self.recv_unacked = 0

    def acknowledge_received_data(self, n: int, sid: int) -> None:
        """The caller took `n` flow-controlled octets of stream `sid`: the peer may send
        them again (WINDOW_UPDATEs go out once half a window is used)."""
        if n <= 0:
            return
        self._credit(n)
        stream = self.streams.get(sid)
        if stream is None or stream.remote_ended:
            return
        stream.unacked += n
        if stream.unacked * 2 >= self.local_window:
            self._frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", stream.unacked))
            stream.recv_window += stream.unacked
            stream.unacked = 0

    def local_flow_control_window(self, sid: int) -> int:
        """How much DATA stream `sid` may send now."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_ended:
            raise StreamClosed(f"stream {sid} is closed")
        return min(self.send_window, stream.send_window)

    # -- sending -----------------------------------------------------------------------
    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        n = len(payload)
        self.out += _HEAD.pack(n >> 16, n & 0xFFFF, ftype, flags, sid)
        self.out += payload

    def data_to_send(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data

    def get_next_available_stream_id(self) -> int:
        return self.next_stream_id

    def send_headers(self, sid: int, headers: Headers, *, end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            if not self.client or sid != self.next_stream_id or self.dead:
                raise StreamClosed(f"stream {sid} is closed")
            stream = _Stream(sid, self.remote_window, self.local_window)
            stream.got_head = False
            self.streams[sid] = stream
            self.next_stream_id += 2
        elif stream.local_ended:
            raise StreamClosed(f"stream {sid} is closed")
        block = self.encoder.encode(headers)
        flags = END_STREAM if end_stream else 0
        size = self.max_outbound_frame_size
        if len(block) <= size:
            self._frame(HEADERS, flags | END_HEADERS, sid, block)
        else:
            self._frame(HEADERS, flags, sid, block[:size])
            for at in range(size, len(block), size):
                last = at + size >= len(block)
                self._frame(CONTINUATION, END_HEADERS if last else 0, sid, block[at : at + size])
        if end_stream:
            self._local_end(stream)

    def send_data(self, sid: int, data: bytes, *, end_stream: bool = False) -> None:
        """DATA within the windows (`local_flow_control_window`) and the frame size."""
        stream = self.streams.get(sid)
        if stream is None or stream.local_ended:
            raise StreamClosed(f"stream {sid} is closed")
        n = len(data)
        if n > min(self.send_window, stream.send_window) or n > self.max_outbound_frame_size:
            raise ValueError("DATA larger than the window or the frame size")
        self.send_window -= n
        stream.send_window -= n
        self._frame(DATA, END_STREAM if end_stream else 0, sid, data)
        if end_stream:
            self._local_end(stream)

    def end_stream(self, sid: int) -> None:
        self.send_data(sid, b"", end_stream=True)

    def _local_end(self, stream: _Stream) -> None:
        stream.local_ended = True
        if stream.remote_ended:
            self._close(stream, _ENDED)

    def reset_stream(self, sid: int, code: int) -> None:
        """RST_STREAM, unless the stream is closed already."""
        stream = self.streams.get(sid)
        if stream is None:
            return
        self._frame(RST_STREAM, 0, sid, struct.pack(">I", code))
        self._close(stream, _RESET_SENT)

    def send_goaway(self, code: int, last_stream_id: int) -> None:
        """GOAWAY; the connection's state is left as it is (streams at or below
        `last_stream_id` may finish)."""
        self._frame(GOAWAY, 0, 0, struct.pack(">II", last_stream_id, code))

    def close_connection(self, code: int) -> None:
        """GOAWAY naming the last stream taken; nothing more is read."""
        self.send_goaway(code, self.highest_inbound_stream_id)
        self.dead = True
