"""TLS to upstreams that are not peer sidecars (a BackendTLSPolicy): the edge as a TLS
client, checking the upstream's certificate against the policy's roots and hostname."""

from __future__ import annotations

import functools
import ssl

from sidecar.config.model import UpstreamTls
from sidecar.errors import UpstreamConnectError
from sidecar.transport.io import Conn, connect_within
from sidecar.transport.tls import client_handshake


@functools.lru_cache(maxsize=64)
def client_context(tls: UpstreamTls, h2: bool) -> ssl.SSLContext:
    """One context per policy and protocol (TLS 1.2+, ALPN h2 or http/1.1)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif tls.ca_pem is None:
        ctx.load_default_certs()
    else:
        ctx.load_verify_locations(cadata=tls.ca_pem.decode("ascii", "replace"))
    ctx.set_alpn_protocols(["h2"] if h2 else ["http/1.1"])
    return ctx


async def connect(tls: UpstreamTls, h2: bool, address: str, port: int, timeout_s: float) -> Conn:
    """A TLS connection to `address:port` that proved it is `tls.hostname` (unless the
    policy says not to check); UpstreamConnectError otherwise."""
    conn = await connect_within(address, port, timeout_s)
    try:
        ctx = client_context(tls, h2)
    except (OSError, ValueError) as exc:  # roots that do not load (none, or not PEM)
        conn.close()
        raise UpstreamConnectError(f"TLS to {address}:{port}: {exc}") from None
    return await client_handshake(ctx, conn, tls.hostname,
                                  f"TLS with {address}:{port} ({tls.hostname})")  # fmt: skip
