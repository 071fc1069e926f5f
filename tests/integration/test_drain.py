"""Draining: idle connections close at once, requests in flight finish, HTTP/2 gets GOAWAY;
SIGTERM drains and exits."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.net import free_port


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer("echo") as server:
        yield server


async def _read_all(stream: trio.SocketStream) -> bytes:
    out = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            out += chunk
    return out


async def _read_answer(stream: trio.SocketStream) -> bytes:
    """One whole echo answer (its JSON body ends with "}")."""
    out = b""
    with trio.fail_after(10):
        while not out.endswith(b"}"):
            out += await stream.receive_some(65536)
    return out


async def test_drain_finishes_requests_and_closes_the_rest(
    tmp_path: Path, echo: EchoServer
) -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"e": echo.port}, [("r", "/", "e")])
        )
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await idle.send_all(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n")
        first = await _read_answer(idle)  # the connection is idle after it
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(b"GET /delay/500/x HTTP/1.1\r\nHost: h\r\n\r\n")
        h2_out: list[str] = []
        nghttp_done = trio.Event()

        async def nghttp() -> None:  # a real HTTP/2 client, printing every frame
            proc = await trio.run_process(
                ["nghttp", "-v", f"http://127.0.0.1:{port}/delay/500/h2"],
                capture_stdout=True,
                check=False,
            )
            h2_out.append(proc.stdout.decode())
            nghttp_done.set()

        nursery.start_soon(nghttp)
        assert await trio.to_thread.run_sync(echo.wait_started, 3, 10)  # both slow ones are in
        server.drain()
        idle_rest = await _read_all(idle)
        slow_answer = await _read_all(slow)
        with trio.fail_after(10):
            await server.idle.wait_empty()
            await nghttp_done.wait()  # nghttp exits right after the connection closes
        nursery.cancel_scope.cancel()
    assert first.startswith(b"HTTP/1.1 200 ")
    assert idle_rest == b""  # closed without waiting for its idle timeout
    assert slow_answer.startswith(b"HTTP/1.1 200 ") and b'"path": "/delay/500/x"' in slow_answer
    frames = h2_out[0]
    goaway = frames.index("recv GOAWAY frame")
    request_stream = re.search(r"send HEADERS frame <[^>]*stream_id=(\d+)>", frames)
    assert request_stream is not None
    last = f"last_stream_id={request_stream.group(1)}, error_code=NO_ERROR"
    assert last in frames[goaway:]
    assert frames.index(":status: 200") > goaway  # the answer came after the GOAWAY
    assert '"path": "/delay/500/h2"' in frames


async def test_sigterm_drains_and_exits(tmp_path: Path, echo: EchoServer) -> None:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(config({"e": echo.port}, [("r", "/", "e")], port=port))
    cmd = [sys.executable, "-m", "sidecar", "edge", "-f", str(cfg), "--admin-port", str(admin)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        with trio.fail_after(20):  # its log says when it listens
            while "listening on" not in (
                line := await trio.to_thread.run_sync(proc.stderr.readline)
            ):
                assert line, "edge exited"
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        await idle.send_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await _read_answer(idle)).startswith(b"HTTP/1.1 200 ")
        proc.send_signal(signal.SIGTERM)
        assert await _read_all(idle) == b""
        code = await trio.to_thread.run_sync(proc.wait, 10)
    finally:
        proc.kill()
        stderr = proc.stderr.read() if proc.stderr else ""
    assert code == 0, stderr
    assert "SIGTERM: draining 1 connection(s)" in stderr
