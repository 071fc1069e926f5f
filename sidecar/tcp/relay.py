"""Opaque byte relay between two connections, both ways, with half-close.

Used after an HTTP Upgrade (WebSocket) and for TCP routes. Each direction copies until
its source ends, then half-closes its destination (`shutdown(SHUT_WR)`), so protocols that
finish one direction first (a client that sends a request and then its FIN) keep working.
A reset on either side ends both directions.
"""

from __future__ import annotations

import trio

from sidecar.transport.io import Conn, ConnectionLost


class Counts:
    """Bytes moved each way, updated as they move (for metrics of long-lived tunnels)."""

    __slots__ = ("down", "up")

    def __init__(self) -> None:
        self.up = 0  # downstream -> upstream
        self.down = 0  # upstream -> downstream


async def relay(
    downstream: Conn,
    upstream: Conn,
    *,
    to_upstream: bytes = b"",
    to_downstream: bytes = b"",
    counts: Counts | None = None,
) -> Counts:
    """Copy both ways until both directions end or one side resets; the first bytes of
    each direction (already read by a parser) go out before anything else."""
    counts = counts or Counts()

    async def pump(src: Conn, dst: Conn, first: bytes, up: bool) -> None:
        data = first
        while True:
            if data:
                await dst.send_all(data)
                if up:
                    counts.up += len(data)
                else:
                    counts.down += len(data)
            data = await src.recv()
            if not data:
                dst.shutdown_write()
                return

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, downstream, upstream, to_upstream, True)
            nursery.start_soon(pump, upstream, downstream, to_downstream, False)
    except* ConnectionLost:
        pass
    return counts
