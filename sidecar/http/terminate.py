"""TLS termination for one HTTPS port: the client's SNI picks the listener, then the certificate.

The SNI selects the listener exactly as a Host header would (exact, then longest wildcard,
then the listener without a hostname); among that listener's certificates the first that
covers the name wins, else its first. A name no listener serves ends the handshake with
`unrecognized_name`; a client without SNI gets the catch-all listener's certificate. The
chosen name stays with the connection so requests for another listener get 421.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from sidecar.config.certs import ClientValidation
from sidecar.errors import ConfigError
from sidecar.http.router import ListenerRoutes, PortRouter, normalize_host
from sidecar.http.xfcc import xfcc_line
from sidecar.transport.io import Conn
from sidecar.transport.tls import ALPN_HTTP, TlsConn, server_context


class ServerTls:
    """TLS termination for one port: SNI → listener → certificate."""

    def __init__(self, router: PortRouter, alpn: Sequence[str] = ALPN_HTTP) -> None:
        self.router = router
        self.contexts: dict[str, ssl.SSLContext] = {}
        listeners = list(router.listeners())
        # OpenSSL keeps the verify mode of the context a handshake started with, whatever
        # the SNI callback switches to: client certificate rules are per port.
        clients = {lst.client for lst in listeners if lst.certificates}
        if len(clients) > 1:
            raise ConfigError("the HTTPS listeners of one port differ in client certificate "
                              "validation (ClientTrafficPolicy); give them separate ports",
                              source=f"port {listeners[0].port}")  # fmt: skip
        self.client: ClientValidation | None = clients.pop() if clients else None
        for lst in listeners:
            for pair in lst.certificates:
                if pair.name not in self.contexts:
                    self.contexts[pair.name] = server_context(pair, alpn, self.client)
        # Clients that send no SNI get the catch-all listener's certificate, else the first.
        self.default: ListenerRoutes | None = router.any or (listeners[0] if listeners else None)
        if self.default is None or not self.default.certificates:
            raise ConfigError("an HTTPS port without certificates", source="listener")
        self.base = self.contexts[self.default.certificates[0].name]
        self.base.sni_callback = self._on_sni

    def client_cert(self, conn: TlsConn) -> bytes:
        """The X-Forwarded-Client-Cert line for the certificate the client presented (and
        the handshake verified), when the port's policy sets one; else b""."""
        if self.client is None or self.client.xfcc is None:
            return b""
        der = conn.sock.getpeercert(binary_form=True)
        return xfcc_line(der, self.client.xfcc) if der else b""

    def wrap(self, conn: Conn) -> TlsConn:
        sock = self.base.wrap_socket(conn.sock, server_side=True, do_handshake_on_connect=False)
        return TlsConn(sock, conn.peer)

    def _on_sni(
        self, sock: ssl.SSLSocket | ssl.SSLObject, name: str | None, _: object
    ) -> int | None:
        if name is None:
            return None  # the base context already holds the default certificate
        host = normalize_host(name)
        lst = self.router.listener_for(host)
        if lst is None or not lst.certificates:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        pair = next((p for p in lst.certificates if p.covers(host)), lst.certificates[0])
        sock.context = self.contexts[pair.name]
        sock.weft_sni = host  # type: ignore[union-attr]  # read back after the handshake
        return None
