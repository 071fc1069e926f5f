"""A bug met by one connection closes that connection; the listener and the others live on."""

from __future__ import annotations

import trio

from sidecar.transport.io import Conn
from sidecar.transport.listen import accept_loop, open_listener


async def test_a_failing_handler_does_not_take_the_listener_down() -> None:
    calls = 0

    async def handler(conn: Conn) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        await conn.send_all(b"still here")
        conn.close()

    sock = open_listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, sock, handler, nursery)
        first = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await first.receive_some(100) == b""  # closed, not hung
        second = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await second.receive_some(100) == b"still here"
        nursery.cancel_scope.cancel()
    assert calls == 2
