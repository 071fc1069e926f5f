"""TLS on the data path: a non-blocking `ssl.SSLSocket` driven by trio.lowlevel.

Theory of operation. `TlsConn` is `Conn` with OpenSSL in the kernel socket's place: reads
and writes call the SSLSocket directly and wait for readability or writability only when
OpenSSL asks (`SSLWantReadError` / `SSLWantWriteError`; either can happen on either call,
since TLS 1.3 sends tickets and key updates under the application's feet). Python enables
no partial writes, so a write that stopped on WANT_WRITE is retried with the same buffer
until OpenSSL reports all of it written.

Certificates load from memory (a memfd on Linux), so keys from Secrets never touch disk.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Sequence

import trio

from sidecar.config.certs import CertificatePair, ClientValidation
from sidecar.errors import ConfigError, UpstreamConnectError
from sidecar.transport.io import _RESET_ERRNOS, RECV_SIZE, Conn, ConnectionLost

# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla "intermediate"); TLS 1.3 suites are
# OpenSSL's defaults, all of which qualify.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
ALPN_HTTP = ("h2", "http/1.1")


class TlsHandshakeError(Exception):
    """The handshake failed; the message is OpenSSL's reason (for logs and metrics)."""


class TlsConn(Conn):
    """A connection whose bytes pass through OpenSSL."""

    __slots__ = ("alpn", "sni")

    sock: ssl.SSLSocket

    def __init__(self, sock: ssl.SSLSocket, peer: tuple[str, int] | None = None) -> None:
        super().__init__(sock, peer)
        self.alpn: str | None = None
        self.sni: str | None = None

    async def handshake(self) -> None:
        sock = self.sock
        while True:
            try:
                sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
            except (ssl.SSLError, OSError) as exc:
                raise TlsHandshakeError(_reason(exc)) from None
        self.alpn = sock.selected_alpn_protocol()
        self.sni = getattr(sock, "weft_sni", None)

    async def recv(self, size: int = RECV_SIZE) -> bytes:
        sock = self.sock
        if sock.pending():  # decrypted bytes epoll cannot see
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.wait_readable(sock)
        while True:
            try:
                data = sock.recv(size)
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""  # close_notify, or a peer that closed without one
            except ssl.SSLError as tls_error:
                raise ConnectionLost(_reason(tls_error)) from None
            except OSError as exc:
                if exc.errno in _RESET_ERRNOS:
                    raise ConnectionLost(str(exc)) from None
                raise
            self.activity += 1
            return data

    def recv_ready(self, size: int = RECV_SIZE) -> bytes | None:
        try:
            data = self.sock.recv(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None  # recv() waits for what the record layer needs
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        except ssl.SSLError as tls_error:
            raise ConnectionLost(_reason(tls_error)) from None
        except OSError as exc:
            if exc.errno in _RESET_ERRNOS:
                raise ConnectionLost(str(exc)) from None
            raise
        self.activity += 1
        return data

    def send_now(self, data: bytes | bytearray | memoryview) -> int:
        self.activity += 1
        try:
            return self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except (ssl.SSLError, OSError) as exc:
            raise ConnectionLost(_reason(exc)) from None

    async def send_rest(self, data: bytes | bytearray | memoryview, sent: int) -> None:
        sock = self.sock
        view = memoryview(data)[sent:]
        want_read = False
        while view:
            if want_read:
                await trio.lowlevel.wait_readable(sock)
            else:
                await trio.lowlevel.wait_writable(sock)
            self.activity += 1
            try:
                sent = sock.send(view)
            except ssl.SSLWantWriteError:
                want_read = False
                continue
            except ssl.SSLWantReadError:
                want_read = True
                continue
            except (ssl.SSLError, OSError) as exc:
                raise ConnectionLost(_reason(exc)) from None
            view = view[sent:]

    def at_eof_or_garbage(self) -> bool:
        # A read lets OpenSSL consume tickets and alerts; only application bytes or a
        # close count against reusing the connection.
        try:
            self.sock.recv(1)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (ssl.SSLError, OSError):
            return True
        return True

    def shutdown_write(self) -> None:
        """Half-close: send close_notify and keep reading (TLS 1.3 allows it; OpenSSL reads
        on after sending its close_notify). The second half of `unwrap` waits for the
        peer's close_notify, which a non-blocking socket reports as WANT_READ: ignored."""
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self.sock.unwrap()

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self.sock.unwrap()  # one non-blocking attempt to send close_notify
        super().close()


def _reason(exc: BaseException) -> str:
    # Read untyped: either may be None whatever the stubs say (an SSLEOFError has no reason).
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    if isinstance(exc, ssl.SSLError):
        return str(reason or type(exc).__name__)
    return str(reason or exc)


# -- contexts -----------------------------------------------------------------------------
def server_context(
    pair: CertificatePair, alpn: Sequence[str] = ALPN_HTTP, client: ClientValidation | None = None
) -> ssl.SSLContext:
    """A server context for `pair`; with `client`, one that asks for client certificates
    chaining to its CAs (and requires one unless it is optional)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(list(alpn))
    try:
        load_chain(ctx, pair.cert_pem, pair.key_pem)
    except ssl.SSLError as exc:
        raise ConfigError(f"OpenSSL refused the pair: {_reason(exc)}", source=pair.name) from None
    if client is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL if client.optional else ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata=client.ca_pem.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise ConfigError(f"OpenSSL refused the client CA bundle: {_reason(exc)}",
                              source=pair.name) from None  # fmt: skip
    return ctx


def load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """load_cert_chain reads files: hand it in-memory ones where the OS has them."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("weft-tls", os.MFD_CLOEXEC) for _ in range(2)]
        try:
            for fd, pem in zip(fds, (cert_pem, key_pem), strict=True):
                os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="weft-tls-") as d:  # mode 0700
        paths = [os.path.join(d, n) for n in ("cert.pem", "key.pem")]
        for path, pem in zip(paths, (cert_pem, key_pem), strict=True):
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(pem)
        ctx.load_cert_chain(*paths)


async def client_handshake(
    ctx: ssl.SSLContext, conn: Conn, server_hostname: str | None, what: str
) -> TlsConn:
    """`conn` (just connected) as a TLS client, handshake done; UpstreamConnectError
    naming `what` when it cannot be (the connection is closed then)."""
    try:
        sock = ctx.wrap_socket(conn.sock, server_side=False, server_hostname=server_hostname,
                               do_handshake_on_connect=False)  # fmt: skip
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        conn.close()
        raise UpstreamConnectError(f"{what}: {exc}") from None
    tconn = TlsConn(sock, conn.peer)
    try:
        await tconn.handshake()
    except TlsHandshakeError as failed:
        tconn.close()
        raise UpstreamConnectError(f"{what}: {failed}") from None
    return tconn
