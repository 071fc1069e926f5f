"""What runs on an accepted connection, by the protocol of its port.

- HTTP: HTTP/2 when the client opens with the preface (prior knowledge), else HTTP/1.x.
- HTTPS: TLS termination, then HTTP/2 or HTTP/1.1 by ALPN.
- TCP: the port's TCPRoute, bytes as they are.
- TLS: passthrough; the ClientHello's SNI picks the TLSRoute, the handshake goes through.
- weft.dev/Detect: the first bytes decide: HTTP/1.x and HTTP/2 go to the HTTP routes, a
  ClientHello to the TLSRoutes, anything else to the TCPRoute. A client that says nothing
  for `detect_timeout_s` is taken for a server-first protocol (SMTP, MySQL) and relayed at
  once, so the server's greeting is not held up.
- weft.dev/ForwardProxy: clients' own proxy (proxy/forward.py), as its EgressPolicy allows.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import trio

from sidecar.config.model import ListenerKey, RouteAction
from sidecar.http.context import ProxyContext
from sidecar.http.http1 import serve_http1
from sidecar.http.router import ListenerRoutes, PortRouter
from sidecar.protocol.http2 import PREFACE
from sidecar.protocol.sniff import Detected, NeedMore, client_hello_sni, detect
from sidecar.protocol.wire import simple_response
from sidecar.tcp.proxy import serve_tcp
from sidecar.transport.io import Conn, ConnectionLost

FORWARD_PROXY = "weft.dev/ForwardProxy"  # config/compile.py's: clients' own proxy
TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every ClientHello
MAX_CLIENT_HELLO = 5 + (1 << 14)  # one TLS record
_PLAINTEXT_REPLY = simple_response(
    400, b"this port speaks HTTPS: send the request to https://\n", close=True
)


async def serve_http2(ctx: ProxyContext, listener: ListenerKey, conn: Conn, **kw: Any) -> None:
    """HTTP/2 (its modules load on the first HTTP/2 connection)."""
    from sidecar.http.h2server import serve_http2 as serve

    await serve(ctx, listener, conn, **kw)


async def serve_downstream(ctx: ProxyContext, listener: ListenerKey, conn: Conn) -> None:
    limit = ctx.store.current.limits.max_connections_per_client
    if not limit or conn.peer is None:
        await _serve_downstream(ctx, listener, conn)
        return
    client = conn.peer[0]
    if not ctx.client_connections.enter(client, limit):
        ctx.metrics.inc("weft_overload_total", (("cluster", ""), ("limit", "client_connections")))
        conn.close()
        return
    try:
        await _serve_downstream(ctx, listener, conn)
    finally:
        ctx.client_connections.leave(client)


async def _serve_downstream(ctx: ProxyContext, listener: ListenerKey, conn: Conn) -> None:
    snapshot = ctx.store.current
    router = snapshot.routers.get(listener)
    protocol = router.protocol if router is not None else "HTTP"
    limits = snapshot.limits
    if protocol == "HTTPS":
        await _serve_https(ctx, listener, conn)
    elif protocol == "TCP" and router is not None:
        await serve_tcp(ctx, conn, _tcp_route(router))
    elif protocol == FORWARD_PROXY and router is not None:
        from sidecar.proxy.forward import serve_forward_proxy

        await serve_forward_proxy(ctx, router, conn)
    elif protocol == "TLS" and router is not None:
        await _passthrough(ctx, router, conn, b"", limits.tls_handshake_timeout_s)
    elif protocol == "HTTP" or router is None:
        initial = await _first_bytes(conn, limits.header_timeout_s)
        if initial is None:
            conn.close()
        elif initial.startswith(PREFACE):
            await serve_http2(ctx, listener, conn, initial=initial)
        else:
            await serve_http1(ctx, listener, conn, initial=initial)
    else:
        await _detect(ctx, listener, router, conn, limits.detect_timeout_s)


async def sniff(conn: Conn, timeout_s: float) -> tuple[bytes, Detected | None] | None:
    """The first bytes and what they are; None (connection closed) if the client went
    away. A client silent for `timeout_s` gives what it sent so far and None."""
    data = b""
    found: Detected | None = None
    with trio.move_on_after(timeout_s):
        try:
            while found is None:
                chunk = await conn.recv()
                if not chunk:
                    break
                data += chunk
                found = detect(data)
        except ConnectionLost:
            conn.close()
            return None
    return data, found


async def _detect(
    ctx: ProxyContext, listener: ListenerKey, router: PortRouter, conn: Conn, timeout_s: float
) -> None:
    sniffed = await sniff(conn, timeout_s)
    if sniffed is None:
        return
    data, found = sniffed
    if found is Detected.HTTP1:
        await serve_http1(ctx, listener, conn, initial=data)
    elif found is Detected.HTTP2:
        await serve_http2(ctx, listener, conn, initial=data)
    elif found is Detected.TLS and any(lst.sni for lst in router.listeners()):
        await _passthrough(
            ctx, router, conn, data, ctx.store.current.limits.tls_handshake_timeout_s
        )
    else:  # opaque, or silent (server-first): the TCP route, with what arrived so far
        await serve_tcp(ctx, conn, _tcp_route(router), initial=data)


def _tcp_route(router: PortRouter) -> RouteAction | None:
    return next((lst.tcp for lst in router.listeners() if lst.tcp is not None), None)


async def _passthrough(
    ctx: ProxyContext, router: PortRouter, conn: Conn, data: bytes, timeout_s: float
) -> None:
    """Read the ClientHello (without answering it), route by its SNI, relay it all."""
    sni: str | None = None
    with trio.move_on_after(timeout_s) as scope:
        try:
            while True:
                try:
                    sni = client_hello_sni(data)
                    break
                except NeedMore:
                    chunk = await conn.recv() if len(data) < MAX_CLIENT_HELLO else b""
                    if not chunk:
                        conn.close()
                        return
                    data += chunk
        except ConnectionLost:
            conn.close()
            return
    if scope.cancelled_caught:
        conn.close()
        return
    lst: ListenerRoutes | None = router.listener_for(sni) if sni else router.any
    action = lst.passthrough(sni) if lst is not None else None
    await serve_tcp(ctx, conn, action, initial=data)


async def _serve_https(ctx: ProxyContext, listener: ListenerKey, conn: Conn) -> None:
    from sidecar.transport.tls import TlsHandshakeError

    tls = ctx.tls.get(listener)
    if tls is None:  # the configuration changed under us
        conn.close()
        return
    tconn = None
    reason = "timeout"
    with trio.move_on_after(ctx.store.current.limits.tls_handshake_timeout_s):
        first = await _peek_byte(conn)
        if first is None or first[0] != TLS_HANDSHAKE_RECORD:
            # A plain HTTP request on an HTTPS port gets a readable answer (as nginx gives).
            plain = first is not None and first.isalpha()
            handshake_failed(ctx, "plaintext_http" if plain else "not_tls")
            if plain:
                await _reply_and_close(conn, _PLAINTEXT_REPLY)
            conn.close()
            return
        tconn = tls.wrap(conn)
        try:
            await tconn.handshake()
            reason = ""
        except TlsHandshakeError as exc:
            reason = str(exc)
    if tconn is None or reason:
        handshake_failed(ctx, reason)
        (tconn or conn).close()
        return
    cert = tls.client_cert(tconn)
    if tconn.alpn == "h2":
        await serve_http2(ctx, listener, tconn, scheme="https", sni=tconn.sni, client_cert=cert)
    else:
        await serve_http1(ctx, listener, tconn, scheme="https", sni=tconn.sni, client_cert=cert)


async def _first_bytes(conn: Conn, timeout_s: float) -> bytes | None:
    """What the client sends first: enough to tell the HTTP/2 preface from HTTP/1.x.
    None when it closes or stays silent past the header timeout."""
    data = b""
    with trio.move_on_after(timeout_s):
        try:
            while len(data) < len(PREFACE) and PREFACE.startswith(data):
                chunk = await conn.recv()
                if not chunk:
                    return None
                data += chunk
        except ConnectionLost:
            return None
        return data
    return None


def handshake_failed(ctx: ProxyContext, reason: str) -> None:
    ctx.metrics.inc("weft_tls_handshake_errors_total", (("reason", _label(reason)),))


async def _peek_byte(conn: Conn) -> bytes | None:
    """The connection's first byte, left in the socket; None if it closed first."""
    await trio.lowlevel.wait_readable(conn.sock)
    try:
        return conn.sock.recv(1, socket.MSG_PEEK) or None
    except OSError:
        return None


async def _reply_and_close(conn: Conn, data: bytes | bytearray) -> None:
    """Answer, then read what the client still sends until it closes (bounded), so the
    kernel does not reset the connection over unread bytes before the answer is read."""
    with contextlib.suppress(ConnectionLost, OSError), trio.move_on_after(1.0):
        await conn.send_all(data)
        conn.sock.shutdown(socket.SHUT_WR)
        budget = 1 << 16
        while budget > 0 and (chunk := await conn.recv()):
            budget -= len(chunk)


def _label(reason: str) -> str:
    """OpenSSL reasons are a fixed vocabulary of upper-case names; anything else is one bucket."""
    return reason if reason.replace("_", "").isalnum() and len(reason) <= 64 else "other"
