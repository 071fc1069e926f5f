"""Mutual TLS between sidecars: contexts made from the SVID, and the peer's SPIFFE ID.

Both ends speak TLS 1.3 only and require the other's certificate, verified by OpenSSL against
the trust bundle (which also enforces the intermediates' URI name constraints). Host names
mean nothing between sidecars: the caller checks instead that the server's SPIFFE ID is the
identity of the service it meant to reach, and the server hands the client's verified SPIFFE
ID to authorization. A context is built per SVID; renewal builds new ones, and connections
already open keep the certificate they were made with.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import cast

from ca.spiffe import InvalidSpiffeId, SpiffeId
from sidecar.errors import UpstreamConnectError
from sidecar.identity.svid import Svid
from sidecar.transport.io import Conn, connect_within
from sidecar.transport.tls import ALPN_HTTP, TlsConn, client_handshake, load_chain


def _context(svid: Svid, purpose: ssl.Purpose, alpn: Sequence[str]) -> ssl.SSLContext:
    server = purpose is ssl.Purpose.CLIENT_AUTH
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # identities are SPIFFE IDs, checked after the handshake
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=svid.bundle_pem.decode())
    load_chain(ctx, svid.cert_pem + svid.chain_pem, svid.key_pem)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def server_context(svid: Svid, alpn: Sequence[str] = ALPN_HTTP) -> ssl.SSLContext:
    """For inbound listeners: a client certificate from the mesh is required."""
    return _context(svid, ssl.Purpose.CLIENT_AUTH, alpn)


def client_context(svid: Svid, alpn: Sequence[str] = ALPN_HTTP) -> ssl.SSLContext:
    return _context(svid, ssl.Purpose.SERVER_AUTH, alpn)


def peer_identity(conn: TlsConn) -> SpiffeId | None:
    """The SPIFFE ID in the peer's verified certificate (None if it has no valid one)."""
    cert = conn.sock.getpeercert()  # decoded by OpenSSL, only once the chain verified
    san = cast("tuple[tuple[str, str], ...]", (cert or {}).get("subjectAltName", ()))
    uris = [value for kind, value in san if kind == "URI"]
    if len(uris) != 1:  # an SVID has exactly one URI SAN
        return None
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId:
        return None


def accept(ctx: ssl.SSLContext, conn: Conn) -> TlsConn:
    """Wrap an accepted connection; the caller runs the handshake under its deadline."""
    sock = ctx.wrap_socket(conn.sock, server_side=True, do_handshake_on_connect=False)
    return TlsConn(sock, conn.peer)


async def connect(
    ctx: ssl.SSLContext, address: str, port: int, expected: SpiffeId, timeout_s: float
) -> TlsConn:
    """An mTLS connection to a peer sidecar that proved it is `expected`."""
    conn = await connect_within(address, port, timeout_s)
    tconn = await client_handshake(ctx, conn, None, f"mTLS handshake with {address}:{port}")
    got = peer_identity(tconn)
    if got != expected:
        tconn.close()
        raise UpstreamConnectError(
            f"{address}:{port} presented {got or 'no SPIFFE ID'}, expected {expected}"
        )
    return tconn
