"""Two sidecars and a control plane on 127.0.0.1: app → sidecar → mTLS → sidecar → app,
and a peer that answers with another identity is refused by the caller."""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
import trio
import trio.testing
from cryptography import x509

from ca import keystore, tokens
from ca.authority import LEAF_TTL
from ca.spiffe import SpiffeId
from control.server import ControlPlane
from sidecar.modes.sidecar import SidecarOptions, SidecarServer
from sidecar.transport import mtls
from tests.support.echo import EchoServer
from tests.support.h2raw import RawH2
from tests.support.h2raw import get as h2_get
from tests.support.mesh import mint
from tests.support.net import free_port
from tests.support.plane import start_server
from tests.support.recorder import Recorder

OUTBOUND = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: outbound}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: out, port: {port}, protocol: HTTP}}]
"""
PEER = """---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{{address: 127.0.0.1, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: outbound}}]
  hostnames: [{name}]
  rules: [{{backendRefs: [{{name: {name}, port: 80}}]}}]
"""


PlaneAndData = tuple[ControlPlane, Path]
ORDERS = SpiffeId("weft.local", "default", "orders")
WEB = SpiffeId("weft.local", "default", "web")


@contextlib.contextmanager
def _running_control_plane(
    data: Path, leaf_ttl: datetime.timedelta = LEAF_TTL
) -> Iterator[PlaneAndData]:
    keystore.init(data, "weft.local", datetime.datetime.now(datetime.UTC))
    srv = ControlPlane(data, "127.0.0.1:0", leaf_ttl=leaf_ttl)
    srv.start()
    try:
        yield srv, data
    finally:
        srv.stop(0)


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[PlaneAndData]:
    with _running_control_plane(tmp_path / "cp") as cp:
        yield cp


async def _pair(
    nursery: trio.Nursery,
    cp: PlaneAndData,
    tmp_path: Path,
    app_port: int,
    *,
    peers: tuple[str, ...] = ("orders",),
    orders_files: tuple[str, ...] = (),
    upstreams: tuple[tuple[str, int], ...] = (),
    orders_log: TextIO | None = None,
) -> tuple[SidecarServer, SidecarServer, int]:
    """An orders sidecar in front of `app_port` and a web sidecar whose outbound listener
    (the returned port) routes each name in `peers` to the orders sidecar."""
    orders: SidecarServer = await nursery.start(
        SidecarServer(
            _options(cp, "orders", app_port, files=orders_files), access_log=orders_log
        ).run
    )
    out_port = free_port()
    cfg = tmp_path / "web-outbound.yaml"
    cfg.write_text(
        OUTBOUND.format(port=out_port)
        + "".join(PEER.format(name=n, port=orders.inbound_port) for n in peers)
    )
    web: SidecarServer = await nursery.start(
        SidecarServer(_options(cp, "web", 1, files=(str(cfg),), upstreams=upstreams)).run
    )
    return orders, web, out_port


async def _traffic(out_port: int, more: Callable[[], bool], limit_s: float) -> list[int]:
    """Statuses of requests sent one after another on new connections (so handshakes see
    every renewed certificate) while `more()` holds, for at most `limit_s`."""
    statuses: list[int] = []
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=10, limits=limits) as http:
        with trio.move_on_after(limit_s):
            while more():
                r = await http.get(f"http://127.0.0.1:{out_port}/o", headers={"Host": "orders"})
                statuses.append(r.status_code)
    return statuses


def _options(cp: PlaneAndData, service: str, app_port: int, **kw: object) -> SidecarOptions:
    srv, data = cp
    now = datetime.datetime.now(datetime.UTC)
    identity = SpiffeId("weft.local", "default", service)
    token = tokens.create(
        keystore.token_key(data), identity, now=now, ttl=datetime.timedelta(hours=1)
    )
    return SidecarOptions(
        service=service, app_port=app_port, control_plane=f"127.0.0.1:{srv.port}", token=token,
        ca_file=str(data / "ca" / "root.pem"), inbound_address="127.0.0.1", inbound_port=0,
        admin_port=0, outbound_port=0, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_app_to_app_through_two_sidecars(control_plane: PlaneAndData, tmp_path: Path) -> None:
    log_path = tmp_path / "orders-access.log"
    with EchoServer("orders-app") as orders_app, log_path.open("w") as orders_log:
        async with trio.open_nursery() as nursery:
            # "payments" points at the orders sidecar: it will present the wrong identity.
            orders, web, out_port = await _pair(
                nursery, control_plane, tmp_path, orders_app.port, peers=("orders", "payments"),
                orders_log=orders_log,
            )  # fmt: skip
            async with httpx.AsyncClient(timeout=10) as http:
                ok = await http.get(
                    f"http://127.0.0.1:{out_port}/orders/7", headers={"Host": "orders"}
                )
                again = await http.get(
                    f"http://127.0.0.1:{out_port}/orders/8", headers={"Host": "orders"}
                )
                wrong = await http.get(
                    f"http://127.0.0.1:{out_port}/pay", headers={"Host": "payments"}
                )
            web_metrics, orders_metrics = web.metrics.render(), orders.metrics.render()
            nursery.cancel_scope.cancel()
    assert ok.status_code == 200 and again.status_code == 200
    seen = json.loads(ok.text)
    assert seen["pod"] == "orders-app" and seen["path"] == "/orders/7"
    # it arrived over mTLS from web's sidecar; the request id web's sidecar made came along
    xfcc = "By=spiffe://weft.local/ns/default/svc/orders;URI=spiffe://weft.local/ns/default/svc/web"
    assert seen["headers"]["x-forwarded-client-cert"] == [xfcc]
    assert len(seen["headers"]["x-request-id"]) == 1
    assert not any(name.startswith("x-forwarded-f") for name in seen["headers"])
    assert wrong.status_code == 503
    assert "presented spiffe://weft.local/ns/default/svc/orders" in wrong.text
    assert "expected spiffe://weft.local/ns/default/svc/payments" in wrong.text
    assert not any(r["path"] == "/pay" for r in orders_app.received)
    assert 'direction="outbound",service="web",peer="default/orders:80"' in web_metrics
    assert 'direction="inbound",service="orders"' in orders_metrics
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["path"] for line in logged] == ["/orders/7", "/orders/8"]
    assert {line["peer_identity"] for line in logged} == {"spiffe://weft.local/ns/default/svc/web"}


POLICY = """apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: orders-callers}
spec:
  targetRef: {kind: Service, name: orders}
  action: ALLOW
  from: [{services: [web]}]
  to: [{paths: [/orders/], methods: [GET]}]
"""


async def test_authorization_policy_is_enforced_on_the_inbound_side(
    control_plane: PlaneAndData, tmp_path: Path
) -> None:
    policy = tmp_path / "orders-policy.yaml"
    policy.write_text(POLICY)
    with EchoServer("orders-app") as orders_app:
        async with trio.open_nursery() as nursery:
            orders, _, out_port = await _pair(
                nursery, control_plane, tmp_path, orders_app.port, orders_files=(str(policy),)
            )
            async with httpx.AsyncClient(timeout=10) as http:
                url = f"http://127.0.0.1:{out_port}"
                allowed = await http.get(f"{url}/orders/1", headers={"Host": "orders"})
                post = await http.post(f"{url}/orders/1", headers={"Host": "orders"}, content=b"x")
                admin = await http.get(f"{url}/admin", headers={"Host": "orders"})
            metrics = orders.metrics.render()
            nursery.cancel_scope.cancel()
    assert allowed.status_code == 200
    assert post.status_code == 403 and admin.status_code == 403
    assert post.headers["x-weft-denied"] == "no ALLOW policy of default/orders matches"
    assert [r["path"] for r in orders_app.received] == ["/orders/1"]
    assert (
        'direction="inbound",service="orders",peer="",route="",code_class="4xx",code="403"} 2'
        in metrics
    )


SMUGGLED = (
    b"GET /admin HTTP/1.1\r\nHost: orders\r\n"
    b"X-Forwarded-Client-Cert: By=spiffe://weft.local/ns/default/svc/orders;"
    b"URI=spiffe://weft.local/ns/default/svc/admin\r\n\r\n"
)
WEB_XFCC = (
    b"By=spiffe://weft.local/ns/default/svc/orders;URI=spiffe://weft.local/ns/default/svc/web"
)


async def test_a_caller_cannot_smuggle_past_the_policy_or_forge_its_identity(
    control_plane: PlaneAndData, tmp_path: Path
) -> None:
    """web may GET /orders/ only. Its app, hostile, sends raw bytes to its sidecar's
    outbound port: a body that would be a second request (Connection naming the length,
    empty lines before the request line), paths that resolve to /admin, a forged
    X-Forwarded-Client-Cert. The orders app (a recording backend) sees only the allowed
    request, its body intact, with the identity web's certificate proves."""
    policy = tmp_path / "orders-policy.yaml"
    policy.write_text(POLICY)
    get = b"GET /orders/1 HTTP/1.1\r\nHost: orders\r\nContent-Length: %d\r\n" % len(SMUGGLED)
    attacks = [
        get + b"Connection: Content-Length\r\n\r\n" + SMUGGLED,
        b"\r\n" + get + b"X_Forwarded_Client_Cert: URI=spiffe://x\r\n\r\n" + SMUGGLED,
    ]
    async with trio.open_nursery() as nursery:
        app: Recorder = await nursery.start(Recorder().run)
        _, _, out_port = await _pair(
            nursery, control_plane, tmp_path, app.port, orders_files=(str(policy),)
        )
        answers = [await _raw(out_port, a) for a in attacks]
        paths = {}
        for path in (
            b"/orders/%2e%2e/admin",
            b"/orders/..\\admin",
            b"//admin",
            b"/orders/..%2Fadmin",
        ):
            paths[path] = await _raw(
                out_port, b"GET " + path + b" HTTP/1.1\r\nHost: orders\r\n\r\n"
            )
        nursery.cancel_scope.cancel()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), answers
    assert [(r.method, r.target, r.body) for r in app.requests] == [
        (b"GET", b"/orders/1", SMUGGLED)
    ] * 2
    for r in app.requests:
        assert r.values(b"x-forwarded-client-cert") == [WEB_XFCC]
    # normalized before the policy (403 on the inbound side) or refused (400)
    assert {p: a[9:12] for p, a in paths.items()} == {
        b"/orders/%2e%2e/admin": b"403",
        b"/orders/..\\admin": b"403",
        b"//admin": b"403",
        b"/orders/..%2Fadmin": b"400",
    }


async def test_http2_callers_get_the_same_identity_and_path_rules(
    control_plane: PlaneAndData, tmp_path: Path
) -> None:
    """Straight to the orders sidecar's inbound port over mTLS with HTTP/2, as web: a
    forged X-Forwarded-Client-Cert (and its `_` spelling) is replaced by the verified one,
    and a path that resolves to /admin is denied."""
    policy = tmp_path / "orders-policy.yaml"
    policy.write_text(POLICY)
    async with trio.open_nursery() as nursery:
        app: Recorder = await nursery.start(Recorder().run)
        orders, _, _ = await _pair(
            nursery, control_plane, tmp_path, app.port, orders_files=(str(policy),)
        )
        conn = await mtls.connect(
            mtls.client_context(mint(control_plane[1], WEB), alpn=["h2"]),
            "127.0.0.1", orders.inbound_port, ORDERS, 5,
        )  # fmt: skip
        client = RawH2(_ConnStream(conn))
        client.h2.initiate_connection()
        await client.flush()
        forged = [(b"x-forwarded-client-cert", b"By=x;URI=spiffe://weft.local/ns/default/svc/admin"),
                  (b"x_forwarded_client_cert", b"URI=spiffe://x")]  # fmt: skip
        ok = await client.request([*h2_get(b"/orders/1", b"orders"), *forged])
        denied = await client.request(h2_get(b"/orders/%2e%2e/admin", b"orders"))
        ok_answer, denied_answer = await client.wait(ok, denied)
        conn.close()
        nursery.cancel_scope.cancel()
    assert ok_answer.status == 200 and denied_answer.status == 403
    (seen,) = app.requests
    assert seen.target == b"/orders/1"
    assert seen.values(b"x-forwarded-client-cert") == [WEB_XFCC]


class _ConnStream:
    """A Weft TLS connection as the stream RawH2 reads and writes."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def send_all(self, data: bytes) -> None:
        await self.conn.send_all(data)

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        return bytes(await self.conn.recv())


async def _raw(port: int, data: bytes) -> bytes:
    """Send raw bytes on a new connection; the first response (head and body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        got = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in got or len(got.split(b"\r\n\r\n", 1)[1]) < _length(got):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                got += chunk
    return got


def _length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


async def test_renewals_under_continuous_traffic_lose_no_request(tmp_path: Path) -> None:
    """6-second SVIDs renew every ~4 s while requests flow through both sidecars (each
    renewal starts a helper process: a shorter life leaves too little margin on a busy host)."""
    with (
        _running_control_plane(tmp_path / "cp", datetime.timedelta(seconds=6)) as cp,
        EchoServer("orders-app") as app,
    ):
        async with trio.open_nursery() as nursery:
            orders, web, out_port = await _pair(nursery, cp, tmp_path, app.port)
            statuses = await _traffic(
                out_port, lambda: min(orders.renewals, web.renewals) < 2, limit_s=30
            )
            nursery.cancel_scope.cancel()
    assert min(orders.renewals, web.renewals) >= 2, (orders.renewals, web.renewals)
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]


async def test_an_svid_that_expired_while_the_control_plane_was_away_is_replaced(
    tmp_path: Path,
) -> None:
    """2-second SVIDs; the control plane stops until the SVID has expired, then returns on
    the same port: the sidecar cannot prove the dead SVID, so it uses its join token."""
    data = tmp_path / "cp"
    with _running_control_plane(data, datetime.timedelta(seconds=2)) as cp:
        srv, _ = cp
        async with trio.open_nursery() as nursery:
            sidecar: SidecarServer = await nursery.start(
                SidecarServer(_options(cp, "orders", 1)).run
            )
            assert sidecar.identity is not None
            first = sidecar.identity.svid
            srv.stop(0)
            with trio.fail_after(10):
                while datetime.datetime.now(datetime.UTC) < first.not_after:
                    await trio.sleep(0.1)  # waiting for wall-clock time itself
            back = ControlPlane(data, f"127.0.0.1:{srv.port}", leaf_ttl=datetime.timedelta(hours=1))
            back.start()
            try:
                with trio.fail_after(20):  # the sidecar retries on its own backoff
                    while sidecar.identity.svid is first:
                        await sidecar.identity_changed.wait()
            finally:
                back.stop(0)
            nursery.cancel_scope.cancel()
    assert sidecar.identity.svid.not_after > first.not_after + datetime.timedelta(minutes=30)
    assert "weft_cert_renewal_failures_total" in sidecar.metrics.render()


async def test_root_rotation_under_traffic_loses_no_request(tmp_path: Path) -> None:
    """After both renewed once, `ca rotate`; traffic goes on until both renewed twice more."""
    data = tmp_path / "cp"
    with (
        _running_control_plane(data, datetime.timedelta(seconds=6)) as cp,
        EchoServer("orders-app") as app,
    ):
        async with trio.open_nursery() as nursery:
            orders, web, out_port = await _pair(nursery, cp, tmp_path, app.port)
            rotated: list[tuple[int, int]] = []

            def more() -> bool:
                if not rotated:
                    if min(orders.renewals, web.renewals) >= 1:
                        keystore.rotate(data, datetime.datetime.now(datetime.UTC))
                        rotated.append((orders.renewals, web.renewals))
                    return True
                return min(orders.renewals - rotated[0][0], web.renewals - rotated[0][1]) < 2

            statuses = await _traffic(out_port, more, limit_s=40)
            new_signer = keystore.load(data, datetime.datetime.now(datetime.UTC)).signer.cert
            svids = [s.identity.svid.cert_pem for s in (orders, web) if s.identity]
            nursery.cancel_scope.cancel()
    assert rotated
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    for pem in svids:  # both sidecars now hold SVIDs from the new intermediate
        assert x509.load_pem_x509_certificate(pem).issuer == new_signer.subject


async def test_meshctl_sidecar_process_drains_and_exits_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    data = tmp_path / "d"
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True)
    run([sys.executable, "-m", "mesh_ctl", "ca", "init", "--data-dir", str(data)])
    token = run([sys.executable, "-m", "mesh_ctl", "token", "create", "web", "--data-dir",
                 str(data)]).stdout.strip().splitlines()[-1]  # fmt: skip
    cp_port, admin, out_port = free_port(), free_port(), free_port()
    server = start_server(data, cp_port)
    cfg = tmp_path / "out.yaml"
    cfg.write_text(OUTBOUND.format(port=out_port) + PEER.format(name="orders", port=free_port()))
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "mesh_ctl", "sidecar", "--service", "web", "--app-port", "1",
         "--token", token, "--control-plane", f"127.0.0.1:{cp_port}",
         "--ca-file", str(data / "ca" / "root.pem"), "--inbound-address", "127.0.0.1",
         "--inbound-port", str(free_port()), "--admin-port", str(admin), "-f", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sidecar.stderr is not None
        with trio.fail_after(30):
            while "ready: inbound mTLS" not in (
                line := await trio.to_thread.run_sync(sidecar.stderr.readline)
            ):
                assert line, "sidecar exited"
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{admin}/ready")).status_code == 200
        sidecar.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(sidecar.wait, 20)
    finally:
        sidecar.kill()
        server.kill()
    assert code == 0


DENY = """apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: no-{caller}}}
spec:
  targetRef: {{kind: Service, name: orders}}
  action: DENY
  from: [{{services: [{caller}]}}]
"""


async def _tunnel(
    nursery: trio.Nursery, cp: PlaneAndData, tmp_path: Path, app: object, denied: str
) -> tuple[SidecarServer, SidecarServer, trio.SocketStream]:
    """A raw TCP `app` behind orders (which denies `denied`), and a stream into web's
    `--upstream orders` port."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, app, 0, host="127.0.0.1"))
    policy = tmp_path / "deny.yaml"
    policy.write_text(DENY.format(caller=denied))
    orders, web, _ = await _pair(
        nursery, cp, tmp_path, listeners[0].socket.getsockname()[1],
        orders_files=(str(policy),), upstreams=(("orders", 0),),
    )  # fmt: skip
    return orders, web, await trio.open_tcp_stream("127.0.0.1", web.upstream_ports["orders"])


async def _read_to_close(stream: trio.SocketStream) -> bytes:
    got = b""
    with trio.fail_after(10):
        try:
            while chunk := await stream.receive_some(65536):
                got += chunk
        except trio.BrokenResourceError:
            pass
    return got


async def test_upstream_port_tunnels_opaque_tcp_over_mtls(
    control_plane: PlaneAndData, tmp_path: Path
) -> None:
    """`--upstream orders:PORT`: any protocol (here raw bytes with a half-close, carried as
    TLS close_notify) reaches the orders app through both sidecars; a DENY policy for another
    caller does not stop this one."""

    async def echo_after_eof(stream: trio.SocketStream) -> None:
        got = b""
        while chunk := await stream.receive_some(65536):
            got += chunk
        await stream.send_all(b"tcp:" + got)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        _, web, stream = await _tunnel(nursery, control_plane, tmp_path, echo_after_eof, "intruder")
        await stream.send_all(b"\x00binary\xff")
        await stream.send_eof()
        got = await _read_to_close(stream)
        await trio.testing.wait_all_tasks_blocked()
        metrics = web.metrics.render()
        nursery.cancel_scope.cancel()
    assert got == b"tcp:\x00binary\xff"
    want = 'peer="default/orders:80",route="upstream/orders",result="closed"} 1'
    assert f'direction="outbound",service="web",{want}' in metrics


async def test_a_denied_tunnel_is_closed_before_the_app(
    control_plane: PlaneAndData, tmp_path: Path
) -> None:
    reached: list[bytes] = []

    async def app(stream: trio.SocketStream) -> None:
        reached.append(await stream.receive_some(100))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        orders, _, stream = await _tunnel(nursery, control_plane, tmp_path, app, "web")
        await stream.send_all(b"hello")
        got = await _read_to_close(stream)
        await trio.testing.wait_all_tasks_blocked()
        metrics = orders.metrics.render()
        nursery.cancel_scope.cancel()
    assert got == b"" and reached == []
    assert 'weft_tcp_denied_total{reason="denied by default/no-web"} 1' in metrics
