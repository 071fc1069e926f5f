"""What runs on an accepted connection: TLS termination where the port has it, then HTTP/2
(ALPN `h2`, or the cleartext preface: prior knowledge) or HTTP/1.x."""

from __future__ import annotations

import contextlib
import socket

import trio

from sidecar.config.model import ListenerKey
from sidecar.http.h2server import serve_http2
from sidecar.http.proxy import ProxyContext, serve_http1
from sidecar.protocol.http2 import PREFACE
from sidecar.protocol.wire import simple_response
from sidecar.transport.io import Conn, ConnectionLost
from sidecar.transport.tls import TlsHandshakeError

TLS_HANDSHAKE_RECORD = 0x16  # the first byte of every ClientHello
_PLAINTEXT_REPLY = simple_response(
    400, b"this port speaks HTTPS: send the request to https://\n", close=True
)


async def serve_downstream(ctx: ProxyContext, listener: ListenerKey, conn: Conn) -> None:
    tls = ctx.tls.get(listener)
    if tls is None:
        initial = await _first_bytes(conn, ctx.store.current.limits.header_timeout_s)
        if initial is None:
            conn.close()
        elif initial.startswith(PREFACE):
            await serve_http2(ctx, listener, conn, initial=initial)
        else:
            await serve_http1(ctx, listener, conn, initial=initial)
        return
    tconn = None
    reason = "timeout"
    with trio.move_on_after(ctx.store.current.limits.tls_handshake_timeout_s):
        first = await _peek_byte(conn)
        if first is None or first[0] != TLS_HANDSHAKE_RECORD:
            # A plain HTTP request on an HTTPS port gets a readable answer (as nginx gives).
            plain = first is not None and first.isalpha()
            _failed(ctx, "plaintext_http" if plain else "not_tls")
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
        _failed(ctx, reason)
        (tconn or conn).close()
        return
    if tconn.alpn == "h2":
        await serve_http2(ctx, listener, tconn, scheme="https", sni=tconn.sni)
    else:
        await serve_http1(ctx, listener, tconn, scheme="https", sni=tconn.sni)


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


def _failed(ctx: ProxyContext, reason: str) -> None:
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
