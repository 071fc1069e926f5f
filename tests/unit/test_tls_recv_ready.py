"""TlsConn.recv_ready over a real TLS session (a socket pair): None while no record is
there (the TLS library's want-read, not an error), the plaintext once one is, b"" when the
peer has gone."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import trio

from sidecar.transport.tls import TlsConn
from tests.support.pki import self_signed


async def test_recv_ready_on_tls(tmp_path: Path) -> None:
    cert, key = self_signed("peer.test").write(tmp_path, "peer")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cert)
    a, b = socket.socketpair()
    server = TlsConn(server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False))
    client = TlsConn(client_ctx.wrap_socket(b, server_hostname="peer.test",
                                            do_handshake_on_connect=False))  # fmt: skip
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(server.handshake)
            n.start_soon(client.handshake)
        assert client.recv_ready() is None  # nothing sent yet
        await server.send_all(b"hello")
        await trio.lowlevel.wait_readable(client.sock)  # the record has arrived
        assert client.recv_ready() == b"hello"
        assert client.recv_ready() is None
        server.sock.close()  # no close_notify: the end of the stream all the same
        await trio.lowlevel.wait_readable(client.sock)
        assert client.recv_ready() == b""
    client.close()
