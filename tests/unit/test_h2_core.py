"""The HTTP/2 core against an independent implementation (the `h2` package) as the peer, in
memory: requests and responses with bodies larger than every window (so WINDOW_UPDATEs must
flow both ways), trailers, resets, SETTINGS changes mid-connection; then the stream and
connection errors of RFC 9113 that frame-level tests over sockets do not reach."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from sidecar.protocol import h2core
from sidecar.protocol.h2core import Event, H2ConnectionError, H2Core

BIG = bytes(range(256)) * 1200  # 300 KiB: over the default 64 KiB windows


def _peer(client: bool) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=client, header_encoding=None)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    return conn


class Pair:
    """A core and an h2 peer wired back to back; `pump` moves bytes until both are quiet."""

    def __init__(self, core_is_client: bool) -> None:
        self.core = H2Core(client=core_is_client, initial_window=65535)
        self.core.initiate_connection(1 << 20)
        self.peer = _peer(not core_is_client)
        self.core_events: list[Event] = []
        self.peer_events: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> None:
        for _ in range(1000):
            a, b = self.core.data_to_send(), self.peer.data_to_send()
            if not a and not b:
                return
            if a:
                for ev in self.peer.receive_data(a):
                    self.peer_events.append(ev)
                    if isinstance(ev, h2.events.DataReceived):  # the peer reads at once
                        self.peer.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if b:
                for event in self.core.receive_data(b):
                    self.core_events.append(event)
                    if event.kind == Event.DATA:
                        self.core.acknowledge_received_data(event.flow, event.stream_id)
        raise AssertionError("the pair never went quiet")

    def core_send(self, sid: int, data: bytes, *, end: bool) -> None:
        """DATA from the core within its windows, pumping while they are shut."""
        view = memoryview(data)
        while view:
            n = min(self.core.local_flow_control_window(sid), self.core.max_outbound_frame_size,
                    len(view))  # fmt: skip
            assert n > 0 or self.core.data_to_send() == b"", "window shut with nothing in flight"
            self.core.send_data(sid, bytes(view[:n]), end_stream=end and n == len(view))
            view = view[n:]
            self.pump()
        if not data and end:
            self.core.end_stream(sid)
            self.pump()

    def peer_send(self, sid: int, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        while view:
            n = min(self.peer.local_flow_control_window(sid), self.peer.max_outbound_frame_size,
                    len(view))  # fmt: skip
            self.peer.send_data(sid, bytes(view[:n]), end_stream=end and n == len(view))
            view = view[n:]
            self.pump()

    def core_body(self, sid: int) -> bytes:
        return b"".join(
            e.data for e in self.core_events if e.kind == Event.DATA and e.stream_id == sid
        )

    def peer_body(self, sid: int) -> bytes:
        return b"".join(e.data for e in self.peer_events
                        if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)  # fmt: skip


def test_a_server_core_serves_an_h2_client() -> None:
    p = Pair(core_is_client=False)
    req = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/up"),
           (b":authority", b"x"), (b"content-length", b"%d" % len(BIG))]  # fmt: skip
    p.peer.send_headers(1, req)
    p.pump()
    p.peer_send(1, BIG, end=True)
    heads = [e for e in p.core_events if e.kind == Event.HEADERS]
    assert [(e.stream_id, e.headers, e.ended) for e in heads] == [(1, req, False)]
    assert p.core_body(1) == BIG
    assert [e for e in p.core_events if e.kind == Event.DATA][-1].ended
    # the answer: a large body, then trailers
    p.core.send_headers(1, [(b":status", b"200"), (b"x-a", b"1")], end_stream=False)
    p.core_send(1, BIG, end=False)
    p.core.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    p.pump()
    assert p.peer_body(1) == BIG
    kinds = [type(e).__name__ for e in p.peer_events
             if getattr(e, "stream_id", 0) == 1 and type(e) is not h2.events.WindowUpdated]  # fmt: skip
    assert kinds[0] == "ResponseReceived" and kinds[-2:] == ["TrailersReceived", "StreamEnded"]
    assert not p.core.streams  # closed both ways
    # a second request on the same connection reuses the HPACK tables
    p.peer.send_headers(3, req[:4], end_stream=True)
    p.pump()
    assert [e.headers for e in p.core_events if e.kind == Event.HEADERS][-1] == req[:4]


def test_a_client_core_talks_to_an_h2_server() -> None:
    p = Pair(core_is_client=True)
    sid = p.core.get_next_available_stream_id()
    p.core.send_headers(sid, [(b":method", b"PUT"), (b":scheme", b"http"), (b":path", b"/"),
                              (b":authority", b"x")], end_stream=False)  # fmt: skip
    p.pump()
    p.core_send(sid, BIG, end=True)
    assert p.peer_body(sid) == BIG
    p.peer.send_headers(sid, [(b":status", b"100")])  # informational: not a response
    p.peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % len(BIG))])
    p.pump()
    p.peer_send(sid, BIG, end=True)
    heads = [e for e in p.core_events if e.kind == Event.HEADERS]
    assert [h.headers[0] for h in heads] == [(b":status", b"200")]
    assert p.core_body(sid) == BIG
    assert not p.core.streams


def test_settings_changes_move_the_open_windows() -> None:
    p = Pair(core_is_client=True)
    p.core.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"x")], end_stream=False)  # fmt: skip
    p.pump()
    before = p.core.streams[1].send_window
    p.peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: before + 1000,
                            h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})  # fmt: skip
    p.pump()
    assert p.core.streams[1].send_window == before + 1000
    # the table size update is announced, and the server decodes the next block
    p.core.send_headers(3, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a"),
                            (b":authority", b"x")], end_stream=True)  # fmt: skip
    p.pump()
    got = [e for e in p.peer_events if isinstance(e, h2.events.RequestReceived)]
    assert got[-1].headers[2] == (b":path", b"/a")


def test_a_reset_from_the_peer_is_reported_and_late_frames_are_dropped() -> None:
    p = Pair(core_is_client=False)
    p.peer.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"x")])  # fmt: skip
    p.pump()
    p.peer.reset_stream(1, 8)
    p.pump()
    reset = p.core_events[-1]
    assert (reset.kind, reset.stream_id, reset.code, reset.remote) == (Event.RESET, 1, 8, True)
    with pytest.raises(h2core.StreamClosed):
        p.core.send_headers(1, [(b":status", b"200")], end_stream=True)
    # ours: the peer's DATA in flight is dropped, its connection credit returned
    p.peer.send_headers(3, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"x")])  # fmt: skip
    p.pump()
    window = p.core.recv_window
    p.core.reset_stream(3, h2core.CANCEL)
    p.core.receive_data(_frame(h2core.DATA, 0, 3, b"x" * 1000))
    assert p.core.recv_window + p.core.recv_unacked == window


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    n = len(payload)
    return bytes([n >> 16, n >> 8 & 255, n & 255, ftype, flags]) + sid.to_bytes(4, "big") + payload


def _server() -> H2Core:
    core = H2Core(client=False, max_concurrent_streams=2, max_header_list_size=1000)
    core.initiate_connection()
    core.receive_data(h2core.PREFACE + _frame(h2core.SETTINGS, 0, 0, b""))
    core.data_to_send()
    return core


GET = bytes([0x82, 0x86, 0x84, 0x41, 1]) + b"x"  # GET http / authority x


@pytest.mark.parametrize(
    "frames, code",
    [
        ([_frame(h2core.HEADERS, 4, 2, GET)], h2core.PROTOCOL_ERROR),  # even stream id
        ([_frame(h2core.HEADERS, 4, 5, GET), _frame(h2core.HEADERS, 4, 3, GET)],
         h2core.PROTOCOL_ERROR),  # ids go backwards
        ([_frame(h2core.HEADERS, 0, 1, GET), _frame(h2core.PING, 0, 0, b"12345678")],
         h2core.PROTOCOL_ERROR),  # a header block interrupted
        ([_frame(h2core.HEADERS, 4, 1, b"\x80")], h2core.COMPRESSION_ERROR),
        ([_frame(h2core.HEADERS, 4, 1, bytes([0x40, 5]) + b"x-big" + bytes([0x7F, 0xE9, 6])
                 + b"v" * 1000)], h2core.ENHANCE_YOUR_CALM),  # over the header list limit
        ([_frame(h2core.HEADERS, 0, 1, GET)] + [_frame(h2core.CONTINUATION, 0, 1, b"")] * 300,
         h2core.ENHANCE_YOUR_CALM),  # a CONTINUATION flood
        ([_frame(h2core.WINDOW_UPDATE, 0, 0, (2**31 - 1).to_bytes(4, "big"))],
         h2core.FLOW_CONTROL_ERROR),
        ([_frame(h2core.DATA, 0, 1, b"x")], h2core.PROTOCOL_ERROR),  # idle stream
        ([_frame(h2core.PUSH_PROMISE, 4, 1, b"\0\0\0\2" + GET)], h2core.PROTOCOL_ERROR),
        ([b"\0\x40\x01" + bytes([0, 0]) + b"\0\0\0\1" + b"x" * 16385], h2core.FRAME_SIZE_ERROR),
    ],
)  # fmt: skip
def test_connection_errors_send_goaway_with_their_code(frames: list[bytes], code: int) -> None:
    core = _server()
    with pytest.raises(H2ConnectionError) as err:
        for frame in frames:
            core.receive_data(frame)
    assert err.value.code == code
    goaway = core.data_to_send()
    assert goaway[3] == h2core.GOAWAY and int.from_bytes(goaway[13:17], "big") == code
    assert core.receive_data(_frame(h2core.HEADERS, 5, 7, GET)) == []  # nothing after


def test_stream_errors_reset_only_their_stream() -> None:
    core = _server()
    post = GET[:1] + b"\x83" + GET[2:]  # POST
    length = bytes([0x5C, 1]) + b"5"  # content-length: 5
    events = core.receive_data(
        _frame(h2core.HEADERS, 4, 1, post + length)
        + _frame(h2core.DATA, 1, 1, b"123456")  # more DATA than its content-length
        + _frame(h2core.HEADERS, 5, 3, GET)
        + _frame(h2core.HEADERS, 4, 5, post)
        + _frame(h2core.HEADERS, 4, 7, post)  # a third open stream: over the limit of 2
        + _frame(h2core.PRIORITY, 0, 9, b"\0\0\0\x09\x10")  # depends on itself
    )
    resets = [(e.stream_id, e.code) for e in events if e.kind == Event.RESET]
    assert resets == [(1, h2core.PROTOCOL_ERROR)]
    out = core.data_to_send()
    rst = []
    while out:
        n = int.from_bytes(out[:3], "big")
        if out[3] == h2core.RST_STREAM:
            rst.append((int.from_bytes(out[5:9], "big"), int.from_bytes(out[9:13], "big")))
        out = out[9 + n :]
    assert rst == [(1, h2core.PROTOCOL_ERROR), (7, h2core.REFUSED_STREAM),
                   (9, h2core.PROTOCOL_ERROR)]  # fmt: skip
    assert sorted(core.streams) == [3, 5]  # 3 (half closed, awaiting its answer) and 5 go on
