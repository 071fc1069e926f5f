"""upstream/pool.py: a cluster's connections, decided synchronously, on real sockets
(socket pairs: the far end plays the upstream)."""

from __future__ import annotations

import socket

from sidecar.transport.io import Conn
from sidecar.upstream import pool as pool_mod
from sidecar.upstream.pool import Pools


def pair() -> tuple[Conn, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return Conn(ours), theirs


async def test_idle_connections_are_reused_most_recent_first_and_checked_when_old() -> None:
    pools = Pools(connect=None, keys=["a:1"])  # type: ignore[arg-type]
    (c1, far1), (c2, far2) = pair(), pair()
    pools.give("a:1", c1, 0.0)
    pools.give("a:1", c2, 0.0)
    assert pools.take("a:1", 0.1, 60.0) is c2  # most recently given first
    assert not pools.needs_connect("a:1")
    far1.close()  # the upstream closed the idle one: found when it is old enough to check
    assert pools.take("a:1", 0.1 + pool_mod.STALE_CHECK_AFTER_S + 1, 60.0) is None
    assert c1.closed and pools.needs_connect("a:1")
    far2.close()


async def test_a_fresh_connection_is_checked_only_when_asked() -> None:
    pools = Pools(connect=None, keys=["a:1"])  # type: ignore[arg-type]
    c, far = pair()
    far.sendall(b"HTTP/1.1 200 OK\r\n\r\n")  # stray bytes: never the next client's answer
    pools.give("a:1", c, 0.0)
    assert pools.take("a:1", 0.0, 60.0, check=True) is None and c.closed
    c2, far2 = pair()
    pools.give("a:1", c2, 0.0)
    assert pools.take("a:1", 0.0, 60.0) is c2  # recent and not asked: no syscall
    far.close()
    far2.close()


async def test_idle_timeout_and_the_per_endpoint_cap_close_connections() -> None:
    pools = Pools(connect=None, keys=["a:1"])  # type: ignore[arg-type]
    conns = [pair() for _ in range(pool_mod.MAX_IDLE_PER_ENDPOINT + 1)]
    for c, _ in conns:
        pools.give("a:1", c, 0.0)
    assert conns[-1][0].closed  # over the cap
    assert pools.take("a:1", 61.0, 60.0) is None  # all past the idle timeout
    assert all(c.closed for c, _ in conns)
    for _, far in conns:
        far.close()


async def test_endpoints_that_leave_lose_their_connections() -> None:
    pools = Pools(connect=None, keys=["a:1", "b:2"])  # type: ignore[arg-type]
    (ca, fa), (cb, fb) = pair(), pair()
    pools.give("a:1", ca, 0.0)
    pools.give("b:2", cb, 0.0)
    pools.multiplexed("b:2")
    pools.retain({"a:1", "c:3"})
    assert cb.closed and not ca.closed
    assert set(pools.h1) == {"a:1", "c:3"} and not pools.h2
    late, fl = pair()
    pools.give("b:2", late, 1.0)  # an exchange that ended after its endpoint left
    assert late.closed
    pools.close()
    assert ca.closed
    for far in (fa, fb, fl):
        far.close()


async def test_connections_are_counted_while_open() -> None:
    made: list[socket.socket] = []

    async def connect(address: str, port: int, timeout_s: float) -> Conn:
        assert pools.connecting == 1
        c, far = pair()
        made.append(far)
        return c

    pools = Pools(connect, keys=["a:1"])
    conns = [await pools.connect("127.0.0.1", 1, 1.0) for _ in range(3)]
    assert (pools.connecting, pools.connections) == (0, 3)
    conns[0].close()
    conns[0].close()  # closing twice counts once
    assert pools.connections == 2
    pools.give("a:1", conns[1], 0.0)
    pools.close()
    assert pools.connections == 1  # the idle one closed; the one in use is its caller's
    conns[2].close()
    for far in made:
        far.close()
