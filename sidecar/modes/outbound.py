"""A sidecar's outbound connections that name their destination by where they arrive rather
than by a Host: a local `--upstream` port (its service), and, with transparent interception,
the outbound port's redirected connections (the address the app dialled, SO_ORIGINAL_DST).

Theory of operation. A connection for a mesh Service port goes to that port's routes: HTTP
(sniffed from its first bytes) through the outbound listener's request path with the
destination fixed, whatever its Host says (the address is the frontend the app dialled, as
GAMMA's cluster-IP matching requires); anything else, and everything for a TCP port, as
opaque bytes over mTLS to the Service's sidecars. An intercepted connection to an address
outside the mesh is relayed to it as it is, or refused when the outbound policy is
`registry-only`. A connection that was not redirected (the app called the outbound port
itself) is served as the explicit outbound listener serves it, by Host.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ca.spiffe import SpiffeId
from sidecar.config.mesh import Destination
from sidecar.config.model import Backend, ListenerKey, RouteAction
from sidecar.entry import serve_downstream, serve_http2, sniff
from sidecar.http.context import ProxyContext
from sidecar.http.http1 import serve_http1
from sidecar.intercept.origdst import original_destination
from sidecar.protocol.sniff import Detected
from sidecar.tcp.proxy import serve_passthrough, serve_tcp
from sidecar.transport import mtls
from sidecar.transport.io import Conn

if TYPE_CHECKING:
    from sidecar.modes.sidecar import SidecarServer

log = logging.getLogger("weft.sidecar")

OUTBOUND_POLICIES = ("allow-any", "registry-only")  # as Istio's outboundTrafficPolicy
SELF_INTERCEPTED = (
    "this sidecar's own connections are being intercepted: `meshctl init --proxy-uid` (or "
    "--proxy-gid) must name the user (or group) it runs as; intercepted connections are "
    "refused, as they would loop back to it, until it is restarted so"
)


def to_cluster(cluster: str, route: str) -> RouteAction:
    """A route that sends everything to one cluster (for opaque tunnels)."""
    return RouteAction(route=route, rule=0, backends=(Backend(cluster=cluster, weight=1),))


async def upstream_port(sidecar: SidecarServer, service: str, conn: Conn) -> None:
    """A connection to the local `--upstream` port of `service`."""
    ctx = _context(sidecar)
    mesh = ctx.store.current.mesh
    dest = mesh.destination(service) if mesh is not None else None
    if (mesh is not None and dest is None) or sidecar.spiffe_id is None:
        log.warning("--upstream %s: no such mesh service; connection closed", service)
        conn.close()
        return
    await _to_service(sidecar, ctx, conn, dest, service, f"upstream/{service}")


async def captured(sidecar: SidecarServer, key: ListenerKey, conn: Conn) -> None:
    """A connection to the outbound port: redirected to it (interception) or not."""
    ctx = _context(sidecar)
    dialled = original_destination(conn.sock)
    if dialled is None or dialled == conn.sock.getsockname()[:2]:
        await serve_downstream(ctx, key, conn)  # the app called the outbound port itself
        return
    address, port = dialled
    if conn.peer in sidecar.relaying or sidecar.intercept_problem:
        # One of our own relayed connections came back: the rules do not spare this
        # sidecar, and every hop would open another. Stop here, and say why.
        if not sidecar.intercept_problem:
            log.error("%s", SELF_INTERCEPTED)
            sidecar.intercept_problem = SELF_INTERCEPTED
        conn.close()
        return
    mesh = ctx.store.current.mesh
    dest = mesh.by_address(address, port) if mesh is not None else None
    if dest is not None and sidecar.spiffe_id is not None:
        name = f"{dest[0]}/{dest[1]}:{dest[2]}"
        await _to_service(sidecar, ctx, conn, dest, dest[1], f"intercepted/{name}")
    elif sidecar.opts.outbound_policy == "registry-only":
        ctx.metrics.inc("weft_tcp_denied_total", (("reason", "registry_only"),))
        log.debug("intercepted connection to %s:%d: outside the mesh, refused", address, port)
        conn.close()
    else:
        await serve_passthrough(ctx, conn, address, port, sidecar.relaying)


def _context(sidecar: SidecarServer) -> ProxyContext:
    assert sidecar.outbound is not None and sidecar.outbound.context is not None
    return sidecar.outbound.context


async def _to_service(
    sidecar: SidecarServer,
    ctx: ProxyContext,
    conn: Conn,
    dest: Destination | None,
    service: str,
    route: str,
) -> None:
    """HTTP to the routes of `dest`, anything else as opaque bytes to its sidecars; `dest`
    None (outbound routes from files): the first cluster of the service's name."""
    snap, mesh = ctx.store.current, ctx.store.current.mesh
    key = sidecar.outbound_key
    initial = b""
    if mesh is not None and dest is not None and mesh.protocols.get(dest) != "TCP":
        sniffed = await sniff(conn, snap.limits.detect_timeout_s)
        if sniffed is None:
            return
        initial, found = sniffed
        if found is Detected.HTTP1:
            await serve_http1(ctx, key, conn, initial=initial, destination=dest)
            return
        if found is Detected.HTTP2:
            await serve_http2(ctx, key, conn, initial=initial, destination=dest)
            return
    target = dest[:2] if dest is not None else None
    spec = next(
        (c for c in snap.clusters.values()
         if (c.namespace, c.service) == target or (target is None and c.service == service)),
        None,
    )  # fmt: skip
    if spec is None or sidecar.spiffe_id is None:
        conn.close()
        return
    expected = SpiffeId(sidecar.spiffe_id.trust_domain, spec.namespace, spec.service)

    async def connect(address: str, port: int, timeout_s: float) -> Conn:
        assert sidecar.identity is not None
        return await mtls.connect(sidecar.identity.client_tcp, address, port, expected, timeout_s)

    await serve_tcp(ctx, conn, to_cluster(spec.name, route), connect=connect, initial=initial)
