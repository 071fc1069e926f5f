"""The connections of one cluster: one owner for every pool policy.

Theory of operation. `Pools` keeps, per endpoint, the idle HTTP/1.1 keep-alive
connections (`EndpointPool`, most recently used first out) and the multiplexed HTTP/2
connections (`H2Pool`), and counts what is open and being opened against the cluster's
limits. Its decisions are synchronous (`take`, `give`, `needs_connect`, `retain`), as in
httpcore's pool: the I/O (connecting, the exchange itself) happens in the caller, which
hands a connection back with `give` or closes it. Times are `time.perf_counter()` seconds.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

import trio

from sidecar.errors import UpstreamConnectError
from sidecar.transport.io import Conn, Connector, connect_within

if TYPE_CHECKING:  # HTTP/2 loads on first use: a plain gateway stays small
    from sidecar.upstream.h2client import H2ClientConnection

MAX_IDLE_PER_ENDPOINT = 256
# An idle connection older than this is checked for a FIN from the upstream before reuse.
STALE_CHECK_AFTER_S = 0.5
MAX_H2_CONNECTIONS = 8  # per endpoint; a new one opens when the others are full


class EndpointPool:
    """Idle HTTP/1.1 keep-alive connections to one endpoint, most recently used first out."""

    __slots__ = ("idle",)

    def __init__(self) -> None:
        self.idle: list[tuple[Conn, float]] = []

    def take(self, now: float, idle_timeout_s: float, check: bool = False) -> Conn | None:
        """An idle connection; `check`: make sure the upstream has not closed it, however
        recently it was used (for requests that must not be replayed after a failure)."""
        idle = self.idle
        while idle:
            conn, since = idle.pop()
            age = now - since
            stale_check = check or age > STALE_CHECK_AFTER_S
            if age > idle_timeout_s or (stale_check and conn.at_eof_or_garbage()):
                conn.close()
                continue
            return conn
        return None

    def give(self, conn: Conn, now: float) -> None:
        if len(self.idle) >= MAX_IDLE_PER_ENDPOINT:
            conn.close()
        else:
            self.idle.append((conn, now))

    def close(self) -> None:
        for conn, _ in self.idle:
            conn.close()
        self.idle.clear()


class H2Pool:
    """HTTP/2 connections to one endpoint, each carrying many streams."""

    __slots__ = ("_connecting", "connect", "connections")

    def __init__(self, connect: Connector = connect_within) -> None:
        self.connect = connect
        self.connections: list[H2ClientConnection] = []
        self._connecting: trio.Event | None = None

    async def connection(
        self, nursery: trio.Nursery, address: str, port: int, connect_timeout_s: float
    ) -> H2ClientConnection:
        while True:
            self.connections = [c for c in self.connections if not c.closed]
            for c in self.connections:
                if c.available:
                    return c
            if self._connecting is not None:  # someone is connecting: share their result
                await self._connecting.wait()
                continue
            if len(self.connections) >= MAX_H2_CONNECTIONS:
                raise UpstreamConnectError(f"{address}:{port}: every HTTP/2 connection is full")
            self._connecting = trio.Event()
            try:
                from sidecar.upstream.h2client import H2ClientConnection

                conn = await self.connect(address, port, connect_timeout_s)
                client = H2ClientConnection(conn)
                await nursery.start(client.run)
                self.connections.append(client)
                return client
            finally:
                self._connecting.set()
                self._connecting = None

    def retire(self) -> None:
        """Open no more streams here; each connection closes after its last one."""
        for c in self.connections:
            c.retire()
        self.connections.clear()

    def close(self) -> None:
        for c in self.connections:
            c.close()
        self.connections.clear()


class Pools:
    """Every connection of one cluster, per endpoint key ("address:port"), and the counts
    its limits are checked against (see the module docstring)."""

    __slots__ = ("connect_raw", "connecting", "connections", "h1", "h2")

    def __init__(self, connect: Connector, keys: Collection[str] = ()) -> None:
        self.connect_raw = connect
        self.h1: dict[str, EndpointPool] = {key: EndpointPool() for key in keys}
        self.h2: dict[str, H2Pool] = {}  # made on a cluster's first HTTP/2 request
        self.connecting = 0  # requests waiting for a new connection
        self.connections = 0  # open

    # -- decisions ------------------------------------------------------------------------
    def take(self, key: str, now: float, idle_timeout_s: float, check: bool = False) -> Conn | None:
        """An idle HTTP/1.1 connection to endpoint `key`, or None: connect."""
        pool = self.h1.get(key)
        return pool.take(now, idle_timeout_s, check) if pool is not None else None

    def give(self, key: str, conn: Conn, now: float) -> None:
        """A connection whose exchange ended cleanly, back for reuse (closed when its
        endpoint has left the cluster or the pool is full)."""
        pool = self.h1.get(key)
        if pool is None:
            conn.close()
        else:
            pool.give(conn, now)

    def multiplexed(self, key: str) -> H2Pool:
        """The HTTP/2 connections to endpoint `key`."""
        pool = self.h2.get(key)
        if pool is None:
            pool = self.h2[key] = H2Pool(self.connect)
        return pool

    def needs_connect(self, key: str) -> bool:
        """Would a request to `key` open a connection now (for the limits)? HTTP/2
        multiplexes: its pool opens few connections, and they are not counted here."""
        if self.h2:
            return False
        pool = self.h1.get(key)
        return pool is None or not pool.idle

    def retain(self, keys: Collection[str]) -> None:
        """Keep the pools of these endpoints (a configuration's), close the others' idle
        connections; what the others carry runs to its end first."""
        for key in [k for k in self.h1 if k not in keys]:
            self.h1.pop(key).close()
        for key in [k for k in self.h2 if k not in keys]:
            self.h2.pop(key).retire()
        for key in keys:
            if key not in self.h1:
                self.h1[key] = EndpointPool()

    # -- I/O ------------------------------------------------------------------------------
    async def connect(self, address: str, port: int, timeout_s: float) -> Conn:
        """Open a connection, counted against the limits while it is open."""
        self.connecting += 1
        try:
            conn = await self.connect_raw(address, port, timeout_s)
        finally:
            self.connecting -= 1
        self.connections += 1
        conn.on_close = self._closed
        return conn

    def _closed(self) -> None:
        self.connections -= 1

    def close(self) -> None:
        for pool in self.h1.values():
            pool.close()
        for h2 in self.h2.values():
            h2.close()
