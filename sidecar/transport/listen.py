"""Listening sockets and the accept loop; connections go to a nursery the caller owns."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from sidecar.transport.io import Conn

Handler = Callable[[Conn], Awaitable[None]]
log = logging.getLogger("weft.listen")


async def _guarded(handler: Handler, conn: Conn) -> None:
    """A bug met by one connection closes that connection, never the process: the
    connections' nursery is shared by every listener."""
    try:
        await handler(conn)
    except Exception:
        log.exception("connection from %s failed; closed", conn.peer)
        conn.close()


def open_listener(
    address: str, port: int, *, backlog: int = 4096, reuse_port: bool = False
) -> socket.socket:
    """A listening socket; an OSError whose strerror names the address otherwise. An
    address in use is refused, never shared with another process; `reuse_port` shares it
    with the sockets of the same edge's other workers (SO_REUSEPORT), which
    mesh_ctl.workers checks nothing else listens on first."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        raise OSError(exc.errno, f"cannot listen on {where}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock


async def accept_loop(
    sock: socket.socket, handler: Handler, connections: trio.Nursery, *, app: bool = False
) -> None:
    """Accept until cancelled; each connection runs in `connections`, which outlives us.
    `app`: clients are the local app (`Conn.quickack`).

    Closing the listener (a reload that removes a port) therefore never touches
    established connections.
    """
    try:
        while True:
            await trio.lowlevel.wait_readable(sock)
            while True:
                try:
                    client, addr = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:  # EMFILE and friends: back off one turn
                    if exc.errno is None:
                        raise
                    await trio.sleep(0.01)
                    break
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = Conn(client, (addr[0], addr[1]))
                conn.quickack = app
                connections.start_soon(_guarded, handler, conn)
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()
