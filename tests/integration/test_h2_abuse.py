"""HTTP/2 resource attacks against the edge, measured: rapid reset (CVE-2023-44487) and a
PING flood from a client that never reads, while a probe client keeps being served."""

from __future__ import annotations

import statistics
from pathlib import Path

import trio
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, HeadersFrame, PingFrame, RstStreamFrame, SettingsFrame

from sidecar.protocol.http2 import PREFACE
from sidecar.protocol.resets import RESET_BURST
from tests.support.edge import config, start_edge
from tests.support.h2raw import RawH2, get
from tests.support.recorder import Recorder

# One HPACK block for GET /api/x (literal fields without indexing, so every copy decodes
# the same whatever the dynamic table holds).
_BLOCK = b"".join(
    b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v
    for n, v in ((b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h"),
                 (b":path", b"/api/x"))
)  # fmt: skip


def _rapid_resets(first_sid: int, count: int) -> bytes:
    out = bytearray()
    for sid in range(first_sid, first_sid + 2 * count, 2):
        out += HeadersFrame(sid, _BLOCK, flags=["END_HEADERS", "END_STREAM"]).serialize()
        out += RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize()
    return bytes(out)


async def _probe(port: int, latencies: list[float], stop: trio.Event) -> None:
    """A normal HTTP/1.1 client: one request at a time, its latency recorded."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        while not stop.is_set() and len(latencies) < 2000:
            t0 = trio.current_time()
            await stream.send_all(b"GET /api/probe HTTP/1.1\r\nHost: h\r\n\r\n")
            got = b""
            while not got.endswith(b"/api/probe"):
                got += await stream.receive_some(65536)
            latencies.append(trio.current_time() - t0)


async def test_rapid_reset_gets_goaway_enhance_your_calm(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        backend: Recorder = await nursery.start(Recorder().run)
        text = config({"app": backend.port}, [("api", "/api", "app")])
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        latencies: list[float] = []
        stop = trio.Event()
        nursery.start_soon(_probe, port, latencies, stop)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(PREFACE + SettingsFrame(0).serialize())
        goaway = None
        sent = 0
        got = b""
        with trio.fail_after(20):
            try:
                while goaway is None and sent < 20 * RESET_BURST:
                    await stream.send_all(_rapid_resets(1 + 2 * sent, 100))
                    sent += 100
                    with trio.move_on_after(0.01):
                        got += await stream.receive_some(65536)
                    goaway = _goaway(got)
                while goaway is None:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    got += chunk
                    goaway = _goaway(got)
            except trio.BrokenResourceError:
                goaway = _goaway(got)
        stop.set()
        # the connection is closed after the GOAWAY
        with trio.fail_after(10):
            try:
                while await stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
        nursery.cancel_scope.cancel()
    assert goaway == ErrorCodes.ENHANCE_YOUR_CALM
    assert sent <= 4 * RESET_BURST  # cut off soon after the burst, not after thousands
    assert latencies and statistics.median(latencies) < 0.25  # the probe stayed served


def _goaway(data: bytes) -> int | None:
    """The error code of the first GOAWAY frame in `data` (after the server preface)."""
    i = 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        if data[i + 3] == 0x7 and i + 9 + length <= len(data):
            frame = GoAwayFrame(0)
            frame.parse_body(memoryview(data[i + 9 : i + 9 + length]))
            return int(frame.error_code)
        i += 9 + length
    return None


async def test_a_ping_flood_from_a_client_that_does_not_read_is_not_read_either(
    tmp_path: Path,
) -> None:
    """The client sends PINGs and never reads the ACKs: the edge stops reading once its
    answers back up, so the client's sends block well before it has sent all it meant
    to; the edge's memory does not grow with the flood. Other clients are served."""
    async with trio.open_nursery() as nursery:
        backend: Recorder = await nursery.start(Recorder().run)
        text = config({"app": backend.port}, [("api", "/api", "app")])
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(PREFACE + SettingsFrame(0).serialize())
        batch = PingFrame(0, opaque_data=b"12345678").serialize() * 4096  # 68 KiB
        sent = 0
        stalled = False
        with trio.move_on_after(20):
            while not stalled:  # until a send makes no progress for 2 s: the edge stopped
                with trio.move_on_after(2) as cs:
                    await stream.send_all(batch)
                    sent += len(batch)
                stalled = cs.cancelled_caught
        other = await RawH2.connect(port)
        (answer,) = await other.wait(await other.request(get(b"/api/other")))
        await other.aclose()
        nursery.cancel_scope.cancel()
    assert stalled, sent  # the edge stopped reading (kernel buffers hold the rest)
    assert sent < 100 * len(batch), sent
    assert answer.status == 200
