"""Non-blocking sockets driven directly by trio.lowlevel: the one byte mover on the data path.

Theory of operation. trio's `SocketStream` first tries each `recv`, fails with
`BlockingIOError`, re-arms epoll and tries again, and checkpoints on every call; on a
proxy that costs as much as the rest of the request. Here a read waits for readability
first and then calls `recv` once (requests and responses rarely sit in the buffer when we
ask), and a write calls `send` directly, waiting for writability only after a partial
write. `wait_readable` is a checkpoint, so every read is a cancellation point; writes
that complete at once are not, which is why callers bound whole exchanges with deadlines
rather than relying on a send to yield.

The next layer up (TLS) subclasses `Conn` with a non-blocking `ssl.SSLSocket` and checks
`pending()` before waiting, since epoll cannot see bytes OpenSSL already decrypted.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Awaitable, Callable

import trio

from sidecar.errors import UpstreamConnectError

RECV_SIZE = 65536
QUICKACK = getattr(socket, "TCP_QUICKACK", 12)  # Linux's value where Python lacks the name
_RESET_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT)


class ConnectionLost(Exception):
    """The peer reset or closed the connection while we were writing."""


class Conn:
    """A connected non-blocking socket."""

    __slots__ = ("activity", "closed", "on_close", "peer", "proto", "quickack", "sock")

    def __init__(self, sock: socket.socket, peer: tuple[str, int] | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.peer = peer
        self.closed = False
        self.activity = 0  # reads and writes so far; the idle sweeper watches it
        self.proto: object = None  # protocol state kept with the connection (pooled parsers)
        self.on_close: Callable[[], None] | None = None  # e.g. a cluster's connection count
        # ACK every read at once (TCP_QUICKACK; Linux resets it as it pleases), on
        # connections with the local app: an app that writes a head and a body in two sends
        # with Nagle on (Python's http.server, urllib3's request bodies) has the second held
        # until the first is ACKed, and a delayed ACK holds it ~40 ms.
        self.quickack = False

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        """Wait for bytes; b"" at end of stream. Raises ConnectionLost on reset."""
        sock = self.sock
        # Yield first and then try: while the other connections' tasks run, the bytes
        # we wait for usually arrive, and the epoll registration and the wake-up a
        # wait_readable costs are saved. When they have not, wait as usual.
        await trio.lowlevel.checkpoint()
        while True:
            data = self.recv_ready(size)
            if data is None:
                await trio.lowlevel.wait_readable(sock)
                continue
            if self.quickack and data:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
            return data

    def recv_ready(self, size: int = RECV_SIZE) -> bytes | None:
        """The bytes already here (b"" at end of stream), or None when a read would wait."""
        try:
            data = self.sock.recv(size)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in _RESET_ERRNOS:
                raise ConnectionLost(str(exc)) from None
            raise
        self.activity += 1
        return data

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        """Send what the kernel takes without waiting; the count sent. The data path calls
        this and awaits `send_rest` only after a partial write, saving a coroutine a send."""
        self.activity += 1
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise ConnectionLost(str(exc)) from None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sent = self.send_now(data)
        if sent < len(data):
            await self.send_rest(data, sent)

    async def send_rest(self, data: bytes | bytearray | memoryview, sent: int) -> None:
        """Finish a send that `send_now` began, waiting for the socket to drain."""
        sock = self.sock
        view = memoryview(data)[sent:]
        while view:
            await trio.lowlevel.wait_writable(sock)
            self.activity += 1
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise ConnectionLost(str(exc)) from None
            view = view[sent:]

    def shutdown_write(self) -> None:
        """Half-close: the peer reads EOF, and we can still read what it sends."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def at_eof_or_garbage(self) -> bool:
        """True when an idle connection has been closed by the peer or has stray bytes."""
        try:
            return len(self.sock.recv(1, socket.MSG_PEEK)) >= 0
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
            if self.on_close is not None:
                self.on_close()


async def connect_app(address: str, port: int, timeout_s: float) -> Conn:
    """`connect_within` for the local app's port (ACKed at once: `Conn.quickack`)."""
    conn = await connect_within(address, port, timeout_s)
    conn.quickack = True
    return conn


async def connect_tcp(address: str, port: int) -> Conn:
    """Open a TCP connection without trio's stream wrapper; the caller owns the deadline."""
    if _is_ip(address):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        target: tuple[str, int] = (address, port)
    else:
        infos = await trio.socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
        if not infos:
            raise UpstreamConnectError(f"{address}: no addresses")
        family, _, _, _, sockaddr = infos[0]
        target = (str(sockaddr[0]), int(sockaddr[1]))
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(target)
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise UpstreamConnectError(f"connect {address}:{port}: {errno.errorcode.get(err, err)}")
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return Conn(sock, target)


# Opens a connection to (address, port) within a timeout: plain TCP, or mTLS in sidecars.
Connector = Callable[[str, int, float], Awaitable[Conn]]


async def connect_within(address: str, port: int, timeout_s: float) -> Conn:
    """`connect_tcp` bounded by `timeout_s`; every failure is an UpstreamConnectError."""
    with trio.move_on_after(timeout_s):
        try:
            return await connect_tcp(address, port)
        except OSError as exc:
            raise UpstreamConnectError(f"connect {address}:{port}: {exc.strerror}") from None
    raise UpstreamConnectError(f"connect {address}:{port}: timed out after {timeout_s:g}s")


def _is_ip(address: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except OSError:
        return False
    return True


def local_address_towards(target: str) -> str:
    """The local address this host uses to reach `target` ("host:port", the first of a
    comma-separated list): what peers on that network reach us at. 127.0.0.1 when there
    is no route. Blocking (name resolution): run it in a thread."""
    host, _, port = target.split(",", maxsplit=1)[0].strip().rpartition(":")
    host = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, int(port or 0), type=socket.SOCK_DGRAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(address)  # UDP: picks the route and source, sends nothing
            return str(probe.getsockname()[0])
    except (OSError, ValueError, IndexError):
        return "127.0.0.1"
