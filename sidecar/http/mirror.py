"""Request mirroring: a copy of a request to each sampled mirror, never waited for."""

from __future__ import annotations

import time

import trio

from sidecar.config.model import RouteAction
from sidecar.errors import UpstreamError
from sidecar.http.context import ProxyContext
from sidecar.transport.io import ConnectionLost


def mirror(ctx: ProxyContext, action: RouteAction, request: bytes | None) -> None:
    """Send a copy to each sampled mirror without waiting for it; a streaming body is
    not teed, so only requests whose whole body is in memory are mirrored."""
    for m in action.mirrors:
        if m.cluster is None:
            continue
        if request is None:
            ctx.metrics.inc("weft_mirror_skipped_total", (("cluster", m.cluster),))
            continue
        if ctx.rng.random() * m.denominator < m.numerator:
            ctx.background.start_soon(_send_mirror, ctx, m.cluster, request)


async def _send_mirror(ctx: ProxyContext, cluster_name: str, request: bytes) -> None:
    cluster = ctx.clusters.get(cluster_name)
    stats = cluster.pick(ctx.rng, time.perf_counter()) if cluster else None
    if cluster is None or stats is None:
        return
    with trio.move_on_after(cluster.spec.connect_timeout_s + 10.0):
        try:
            conn = await cluster.pools.connect(
                stats.endpoint.address, stats.endpoint.port, cluster.spec.connect_timeout_s
            )
        except (OSError, UpstreamError):
            ctx.metrics.inc("weft_mirror_errors_total", (("cluster", cluster_name),))
            return
        try:
            await conn.send_all(request)
            while await conn.recv():
                pass
        except ConnectionLost:
            pass
        finally:
            conn.close()
