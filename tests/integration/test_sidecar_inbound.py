"""A sidecar gets its SVID from a running control plane and serves its app over mTLS only."""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from ca import keystore, tokens
from ca.spiffe import SpiffeId
from control.server import ControlPlane
from sidecar.modes.sidecar import SidecarOptions, SidecarServer
from sidecar.transport import mtls
from tests.support.echo import EchoServer
from tests.support.mesh import mint

ORDERS = SpiffeId("weft.local", "default", "orders")
WEB = SpiffeId("weft.local", "default", "web")


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[tuple[ControlPlane, Path]]:
    data = tmp_path / "cp"
    keystore.init(data, "weft.local", datetime.datetime.now(datetime.UTC))
    srv = ControlPlane(data, "127.0.0.1:0")
    srv.start()
    yield srv, data
    srv.stop(0)


def _options(srv: ControlPlane, data: Path, app_port: int, **kw: object) -> SidecarOptions:
    now = datetime.datetime.now(datetime.UTC)
    token = tokens.create(
        keystore.token_key(data), ORDERS, now=now, ttl=datetime.timedelta(hours=1)
    )
    return SidecarOptions(
        service="orders", app_port=app_port, control_plane=f"127.0.0.1:{srv.port}",
        token=token, ca_file=str(data / "ca" / "root.pem"), inbound_address="127.0.0.1",
        inbound_port=0, admin_port=0, outbound_port=0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_mtls_request_reaches_the_app_and_plaintext_does_not(
    control_plane: tuple[ControlPlane, Path],
) -> None:
    srv, data = control_plane
    with EchoServer("orders-app") as app:
        async with trio.open_nursery() as nursery:
            sidecar: SidecarServer = await nursery.start(
                SidecarServer(_options(srv, data, app.port)).run
            )
            async with httpx.AsyncClient() as http:
                ready = await http.get(f"http://127.0.0.1:{sidecar.admin_port}/ready")
            caller = mint(data, WEB)
            conn = await mtls.connect(
                mtls.client_context(caller, alpn=["http/1.1"]),
                "127.0.0.1",
                sidecar.inbound_port,
                ORDERS,
                5,
            )
            await conn.send_all(
                b"GET /orders/1 HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n"
                b"X-Forwarded-Client-Cert: By=x;URI=spiffe://weft.local/ns/default/svc/admin\r\n"
                b"X-Forwarded-For: 10.1.2.3\r\n\r\n"
            )
            answer = b""
            with trio.fail_after(10):
                while chunk := await conn.recv():
                    answer += chunk
            conn.close()
            plain = await trio.open_tcp_stream("127.0.0.1", sidecar.inbound_port)
            await plain.send_all(b"GET / HTTP/1.1\r\nHost: orders\r\n\r\n")
            with trio.fail_after(10):
                refused = b""
                try:
                    while chunk := await plain.receive_some(100):
                        refused += chunk
                except trio.BrokenResourceError:
                    pass
            metrics = sidecar.metrics.render()
            nursery.cancel_scope.cancel()
    assert ready.status_code == 200
    assert answer.startswith(b"HTTP/1.1 200 ")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["path"] == "/orders/1"
    # The app learns who called from the sidecar, never from the caller; a mesh hop leaves
    # X-Forwarded-* as they came.
    assert body["headers"]["x-forwarded-client-cert"] == [f"By={ORDERS.uri};URI={WEB.uri}"]
    assert body["headers"]["x-forwarded-for"] == ["10.1.2.3"]
    assert "x-forwarded-proto" not in body["headers"]
    assert b"HTTP" not in refused
    assert 'direction="inbound",service="orders"' in metrics
    assert "weft_cert_expiry_seconds 8" in metrics  # ~24 h left: 86,xxx seconds


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl needed")
async def test_openssl_without_a_client_certificate_is_refused(
    control_plane: tuple[ControlPlane, Path],
) -> None:
    srv, data = control_plane
    with EchoServer("orders-app") as app:
        async with trio.open_nursery() as nursery:
            sidecar: SidecarServer = await nursery.start(
                SidecarServer(_options(srv, data, app.port)).run
            )
            proc = await trio.run_process(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{sidecar.inbound_port}", "-quiet"],
                stdin=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", capture_stdout=True,
                capture_stderr=True, check=False,
            )  # fmt: skip
            await trio.testing.wait_all_tasks_blocked()
            metrics = sidecar.metrics.render()
            nursery.cancel_scope.cancel()
    assert b"HTTP/1.1" not in proc.stdout
    assert "weft_tls_handshake_errors_total" in metrics
    assert not app.received


async def test_a_bad_token_stops_the_sidecar_with_the_reason(
    control_plane: tuple[ControlPlane, Path],
) -> None:
    from sidecar.identity.svid import IdentityError

    srv, data = control_plane
    opts = _options(srv, data, 1)
    opts.token = opts.token[:-4] + "AAAA"
    with pytest.raises(IdentityError, match="UNAUTHENTICATED: token signature"):
        await SidecarServer(opts).run()
