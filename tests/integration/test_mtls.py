"""Mutual TLS between sidecars: SPIFFE IDs both ways, and every way a peer is refused
(no client certificate, another CA, the wrong identity, TLS 1.2), with openssl as a peer."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import socket
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives import serialization

from ca import keystore
from ca.spiffe import SpiffeId
from sidecar.errors import UpstreamConnectError
from sidecar.identity.svid import Svid
from sidecar.transport import mtls
from sidecar.transport.io import Conn, ConnectionLost
from sidecar.transport.tls import TlsHandshakeError
from tests.support.mesh import mint

ORDERS = SpiffeId("weft.local", "default", "orders")
WEB = SpiffeId("weft.local", "default", "web")
PEM = serialization.Encoding.PEM


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    keystore.init(tmp_path / "mesh", "weft.local", datetime.datetime.now(datetime.UTC))
    return tmp_path / "mesh"


async def _serve_one(
    svid: Svid, results: list[object], *, task_status: trio.TaskStatus[int]
) -> None:
    """Accept one mTLS connection, record the peer's identity (or the failure), echo."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    task_status.started(listener.getsockname()[1])
    await trio.lowlevel.wait_readable(listener)
    sock, addr = listener.accept()
    listener.close()
    conn = mtls.accept(mtls.server_context(svid), Conn(sock, addr))
    try:
        with trio.fail_after(10):
            await conn.handshake()
    except TlsHandshakeError as exc:
        results.append(exc)
        conn.close()
        return
    results.append(mtls.peer_identity(conn))
    data = await conn.recv()
    await conn.send_all(b"echo:" + data)
    conn.close()


async def test_both_ends_learn_the_other_identity(mesh: Path) -> None:
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_one, mint(mesh, ORDERS), results)
        client = await mtls.connect(
            mtls.client_context(mint(mesh, WEB)), "127.0.0.1", port, ORDERS, 5
        )
        await client.send_all(b"hello")
        reply = await client.recv()
        assert mtls.peer_identity(client) == ORDERS
        assert client.alpn == "h2"
        client.close()
    assert results == [WEB] and reply == b"echo:hello"


async def test_the_caller_refuses_a_server_with_another_identity(mesh: Path) -> None:
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_one, mint(mesh, WEB), results)  # not orders
        ctx = mtls.client_context(mint(mesh, ORDERS))
        with pytest.raises(
            UpstreamConnectError,
            match=r"presented spiffe://weft\.local/ns/default/svc/web, expected .*orders",
        ):
            await mtls.connect(ctx, "127.0.0.1", port, ORDERS, 5)
        nursery.cancel_scope.cancel()


async def test_a_client_from_another_ca_is_refused(mesh: Path, tmp_path: Path) -> None:
    keystore.init(tmp_path / "other", "weft.local", datetime.datetime.now(datetime.UTC))
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_one, mint(mesh, ORDERS), results)
        # The stranger trusts our roots (so it gets as far as sending its certificate).
        ours = keystore.load(mesh, datetime.datetime.now(datetime.UTC)).bundle_pem
        stranger = dataclasses.replace(mint(tmp_path / "other", WEB), bundle_pem=ours)
        # In TLS 1.3 the client finishes its side before the server checks its certificate:
        # the refusal arrives as an alert on the first read.
        client = await mtls.connect(mtls.client_context(stranger), "127.0.0.1", port, ORDERS, 5)
        try:
            got = await client.recv()
        except ConnectionLost:
            got = b""
        client.close()
    assert got == b""
    assert isinstance(results[0], TlsHandshakeError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(results[0]) or "unknown ca" in str(results[0]).lower()


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl needed")


@needs_openssl
@pytest.mark.parametrize("with_cert", [False, True], ids=["no-client-cert", "tls1.2"])
async def test_openssl_without_certificate_or_with_tls12_is_refused(
    mesh: Path, tmp_path: Path, with_cert: bool
) -> None:
    results: list[object] = []
    client = mint(mesh, WEB)
    (tmp_path / "c.pem").write_bytes(client.cert_pem + client.chain_pem)
    (tmp_path / "k.pem").write_bytes(client.key_pem)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_one, mint(mesh, ORDERS), results)
        args = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet"]
        if with_cert:
            args += ["-cert", str(tmp_path / "c.pem"), "-key", str(tmp_path / "k.pem"), "-tls1_2"]
        proc = await trio.run_process(args, stdin=b"hi\n", capture_stdout=True,
                                      capture_stderr=True, check=False)  # fmt: skip
    assert b"echo:" not in proc.stdout
    assert isinstance(results[0], TlsHandshakeError), results
