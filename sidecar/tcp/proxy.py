"""TCP routes: pick a backend, connect, relay bytes both ways, count them.

Theory of operation. The route's weighted backends and the cluster's balancer choose the
endpoint exactly as for HTTP. Bytes a detector already read (`initial`) go first. The
connection is idle when neither side moved a byte for the listener's idle timeout (the
shared sweeper watches both sockets); there is no other time limit, as databases and
message brokers hold connections for hours.
"""

from __future__ import annotations

import time

import trio

from sidecar.config.model import RouteAction
from sidecar.errors import UpstreamConnectError
from sidecar.http.context import ProxyContext
from sidecar.http.request import pick_backend
from sidecar.tcp.relay import Counts, relay
from sidecar.transport.idle import Tracked
from sidecar.transport.io import Conn, Connector, connect_within

PASSTHROUGH = "passthrough"  # the route and peer label of traffic outside the mesh
PASSTHROUGH_CONNECT_TIMEOUT_S = 10.0


async def serve_tcp(
    ctx: ProxyContext,
    conn: Conn,
    action: RouteAction | None,
    *,
    initial: bytes = b"",
    connect: Connector | None = None,
) -> None:
    """Relay one downstream connection to a backend of `action` (a TCPRoute or TLSRoute);
    `connect` replaces the cluster's own way of reaching upstreams."""
    start = time.perf_counter()
    route = action.route if action is not None else ""
    peer = result = ""
    counts = Counts()
    try:
        backend = pick_backend(action) if action is not None else None
        cluster = ctx.clusters.get(backend.cluster) if backend and backend.cluster else None
        stats = cluster.pick(ctx.rng, start) if cluster is not None else None
        if cluster is None or stats is None:
            result = "no_route" if action is None else "no_healthy_upstream"
            return
        peer = cluster.spec.name
        endpoint = stats.endpoint
        try:
            upstream = await (connect or cluster.pools.connect)(
                endpoint.address, endpoint.port, cluster.spec.connect_timeout_s
            )
        except UpstreamConnectError:
            result = "connect_failed"
            return
        stats.pending += 1
        try:
            result = await relay_tracked(ctx, conn, upstream, initial, counts)
        finally:
            stats.pending -= 1
    finally:
        conn.close()
        record_tunnel(ctx, route, peer, result or "closed", counts, time.perf_counter() - start)


async def serve_passthrough(
    ctx: ProxyContext, conn: Conn, address: str, port: int, ends: set[tuple[str, int]]
) -> None:
    """Relay an intercepted connection to where it was going (outside the mesh), as is;
    `ends` holds the local end of the relayed connection while it lasts (so one that comes
    back intercepted is known for ours)."""
    start = time.perf_counter()
    counts = Counts()
    result = "connect_failed"
    try:
        try:
            upstream = await connect_within(address, port, PASSTHROUGH_CONNECT_TIMEOUT_S)
        except UpstreamConnectError:
            return
        end = upstream.sock.getsockname()[:2]
        ends.add(end)
        try:
            result = await relay_tracked(ctx, conn, upstream, b"", counts)
        finally:
            ends.discard(end)
    finally:
        conn.close()
        record_tunnel(ctx, PASSTHROUGH, PASSTHROUGH, result, counts, time.perf_counter() - start)


async def relay_tracked(
    ctx: ProxyContext, conn: Conn, upstream: Conn, initial: bytes, counts: Counts
) -> str:
    """Both ways until both ends finish ("closed") or neither moves for the idle timeout."""
    scope = trio.CancelScope()
    tracked = Tracked(
        activity=lambda: conn.activity + upstream.activity,
        in_head=lambda: False,
        cancel=scope.cancel,
    )
    ctx.idle.add(tracked, trio.current_time())
    try:
        with scope:
            await relay(conn, upstream, to_upstream=initial, counts=counts)
        return "idle_timeout" if scope.cancelled_caught else "closed"
    finally:
        ctx.idle.discard(tracked)
        upstream.close()


def record_tunnel(
    ctx: ProxyContext, route: str, peer: str, result: str, counts: Counts, duration_s: float
) -> None:
    base = (
        ("direction", ctx.direction),
        ("service", ctx.service),
        ("peer", peer),
        ("route", route),
    )
    m = ctx.metrics
    m.inc("weft_tcp_connections_total", (*base, ("result", result)))
    if counts.up:
        m.inc("weft_tcp_bytes_total", (*base, ("flow", "upstream")), counts.up)
    if counts.down:
        m.inc("weft_tcp_bytes_total", (*base, ("flow", "downstream")), counts.down)
    m.observe("weft_tcp_connection_duration_seconds", base, duration_s)
