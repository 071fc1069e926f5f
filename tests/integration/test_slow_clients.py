"""Slow and greedy clients against the edge: heads and bodies trickled a byte at a time,
bodies that never come, one address holding many connections or requests, HTTP/2 bodies
over the limit. Each attack is paced by the test itself (it is the attack) and bounded."""

from __future__ import annotations

from pathlib import Path

import trio
from hyperframe.frame import PingFrame, SettingsFrame

from sidecar.config.model import Limits
from sidecar.protocol.http2 import PREFACE
from tests.support.edge import config, start_edge
from tests.support.h2raw import RawH2, get
from tests.support.recorder import Recorder


async def _edge(nursery: trio.Nursery, path: Path, limits: Limits) -> tuple[int, Recorder]:
    backend: Recorder = await nursery.start(Recorder().run)
    text = config({"app": backend.port}, [("api", "/api", "app")])
    _, port = await start_edge(nursery, path, text, limits=limits)
    return port, backend


async def _read_all(stream: trio.SocketStream) -> bytes:
    out = b""
    try:
        while chunk := await stream.receive_some(65536):
            out += chunk
    except trio.BrokenResourceError:
        pass
    return out


async def _trickle(stream: trio.SocketStream, data: bytes, every_s: float) -> None:
    """Send `data` a byte at a time (the attack); stops when the edge closes."""
    try:
        for i in range(len(data)):
            await stream.send_all(data[i : i + 1])
            await trio.sleep(every_s)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def test_a_trickled_head_gets_408_at_the_header_timeout(tmp_path: Path) -> None:
    limits = Limits(header_timeout_s=1.0, idle_timeout_s=30.0)
    async with trio.open_nursery() as nursery:
        port, backend = await _edge(nursery, tmp_path / "c.yaml", limits)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        head = b"GET /api HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"a" * 200 + b"\r\n\r\n"
        start = trio.current_time()
        with trio.fail_after(10):
            async with trio.open_nursery() as inner:
                inner.start_soon(_trickle, stream, head, 0.1)  # 20 s for the whole head
                answer = await _read_all(stream)
                inner.cancel_scope.cancel()
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert took < 3.0  # the 1 s deadline and the sweeper's precision (two quarter-seconds)
    assert backend.requests == []


async def test_an_h2_connection_that_never_asks_is_closed_at_the_header_timeout(
    tmp_path: Path,
) -> None:
    """Preface, then a PING every 0.2 s and no request: closed after the header timeout,
    however busy it keeps the connection."""
    limits = Limits(header_timeout_s=1.0, idle_timeout_s=30.0)
    async with trio.open_nursery() as nursery:
        port, _ = await _edge(nursery, tmp_path / "c.yaml", limits)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(PREFACE + SettingsFrame(0).serialize())
        ping = PingFrame(0, opaque_data=b"12345678").serialize()
        start = trio.current_time()
        with trio.fail_after(10):
            async with trio.open_nursery() as inner:
                inner.start_soon(_trickle, stream, ping * 100, 0.2 / len(ping))
                await _read_all(stream)
                inner.cancel_scope.cancel()
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert took < 3.0


async def test_a_trickled_body_gets_408_and_releases_the_upstream(tmp_path: Path) -> None:
    limits = Limits(body_timeout_s=1.0, min_body_rate=100)
    async with trio.open_nursery() as nursery:
        port, backend = await _edge(nursery, tmp_path / "c.yaml", limits)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n")
        with trio.fail_after(10):
            async with trio.open_nursery() as inner:
                inner.start_soon(_trickle, stream, b"x" * 1000, 0.05)  # 20 B/s < 100 B/s
                answer = await _read_all(stream)
                inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert backend.requests == []  # the body never completed upstream


async def test_a_body_that_keeps_the_minimum_rate_is_not_cut(tmp_path: Path) -> None:
    limits = Limits(body_timeout_s=0.5, min_body_rate=100)
    async with trio.open_nursery() as nursery:
        port, backend = await _edge(nursery, tmp_path / "c.yaml", limits)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        body = b"y" * 300
        await stream.send_all(b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 300\r\n\r\n")
        with trio.fail_after(10):
            for i in range(0, 300, 50):  # 50 bytes every 0.2 s: 250 B/s, 1.2 s in all
                await stream.send_all(body[i : i + 50])
                await trio.sleep(0.2)
            answer = await stream.receive_some(65536)
        nursery.cancel_scope.cancel()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert [r.body for r in backend.requests] == [body]


async def test_one_client_cannot_hold_more_requests_than_its_share(tmp_path: Path) -> None:
    """Bodiless POSTs hold upstream connections: the third from one address gets 429."""
    limits = Limits(max_requests_per_client=2, body_timeout_s=30.0)
    async with trio.open_nursery() as nursery:
        port, backend = await _edge(nursery, tmp_path / "c.yaml", limits)
        held = []
        for _ in range(2):
            s = await trio.open_tcp_stream("127.0.0.1", port)
            await s.send_all(b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
            held.append(s)
        with trio.fail_after(10):
            while backend.connections < 2:  # both reached the backend
                await backend.connected.wait()
            third = await trio.open_tcp_stream("127.0.0.1", port)
            await third.send_all(b"GET /api HTTP/1.1\r\nHost: h\r\n\r\n")
            refused = await third.receive_some(65536)
            await held[0].send_all(b"0123456789")
            first = await held[0].receive_some(65536)
            # one finished: the client may have another in flight
            await third.send_all(b"GET /api/again HTTP/1.1\r\nHost: h\r\n\r\n")
            again = await third.receive_some(65536)
        nursery.cancel_scope.cancel()
    assert refused.startswith(b"HTTP/1.1 429 ") and b"x-weft-overload: client_requests" in refused
    assert first.startswith(b"HTTP/1.1 200 ") and again.startswith(b"HTTP/1.1 200 ")


async def test_connections_per_client_are_capped(tmp_path: Path) -> None:
    limits = Limits(max_connections_per_client=3)
    async with trio.open_nursery() as nursery:
        port, _ = await _edge(nursery, tmp_path / "c.yaml", limits)
        got = b""
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        for s in held:  # each is being served: its first request gets an answer
            await s.send_all(b"GET /api HTTP/1.1\r\nHost: h\r\n\r\n")
            assert (await s.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        await extra.send_all(b"GET /api HTTP/1.1\r\nHost: h\r\n\r\n")
        with trio.fail_after(10):
            closed = await _read_all(extra)
            await held[0].aclose()
            for _ in range(100):  # until the edge has seen that close (no fixed wait)
                again = await trio.open_tcp_stream("127.0.0.1", port)
                await again.send_all(b"GET /api HTTP/1.1\r\nHost: h\r\n\r\n")
                try:
                    got = await again.receive_some(65536)
                except trio.BrokenResourceError:
                    got = b""
                if got:
                    break
        nursery.cancel_scope.cancel()
    assert closed == b""
    assert got.startswith(b"HTTP/1.1 200 ")


async def test_h2_body_over_the_limit_gets_413(tmp_path: Path) -> None:
    limits = Limits(max_request_body_bytes=100)
    async with trio.open_nursery() as nursery:
        port, backend = await _edge(nursery, tmp_path / "c.yaml", limits)
        client = await RawH2.connect(port)
        declared = await client.request(
            [*get(b"/api", method=b"POST"), (b"content-length", b"200")], b"z" * 200
        )
        streamed = await client.request(get(b"/api/s", method=b"POST"), b"z" * 300)
        small = await client.request(get(b"/api/ok", method=b"POST"), b"z" * 50)
        answers = await client.wait(declared, streamed, small)
        await client.aclose()
        nursery.cancel_scope.cancel()
    declared_answer, streamed_answer, small_answer = answers
    assert declared_answer.status == 413  # refused from its content-length alone
    # refused once the body passes the limit: 413, or a reset if the answer had begun
    assert streamed_answer.status == 413 or streamed_answer.reset is not None
    assert small_answer.status == 200
    assert [r.target for r in backend.requests] == [b"/api/ok"]
