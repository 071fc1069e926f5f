"""A rolling restart of a mesh service under constant traffic loses no request: orders v1's
new instance (a `meshctl sidecar` process and its app) joins, the old one gets SIGTERM and
drains — it leaves the callers' endpoints through the control plane, finishes what it
carries and exits — while eight keep-alive clients call orders through the mesh's edge
gateway the whole time."""

from __future__ import annotations

import http.server
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from control.server import ControlPlane
from sidecar.config.parse import Document
from sidecar.modes.sidecar import SidecarServer
from tests.support.echo import EchoServer
from tests.support.net import free_port
from tests.support.plane import mesh_sidecar, on_plane, running_plane

CLIENTS = 8
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    with running_plane(tmp_path / "cp") as srv:
        yield srv


def _instance(
    plane: ControlPlane, app_port: int, service: str = "orders", outbound_port: int = 0
) -> subprocess.Popen[str]:
    """A v1 sidecar of `service`, as a process, in front of `app_port`."""
    data = plane.data_dir
    token = subprocess.run(
        [sys.executable, "-m", "mesh_ctl", "token", "create", service, "--data-dir", str(data)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "mesh_ctl", "sidecar", "--service", service, "--version", "v1",
         "--app-port", str(app_port), "--token", token, "--control-plane",
         f"127.0.0.1:{plane.port}", "--ca-file", str(data / "ca" / "root.pem"),
         "--inbound-address", "127.0.0.1", "--inbound-port", str(free_port()),
         "--outbound-port", str(outbound_port or free_port()), "--admin-port", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip


async def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    with trio.fail_after(30):
        while "ready: inbound mTLS" not in (
            line := await trio.to_thread.run_sync(proc.stderr.readline)
        ):
            assert line, "sidecar exited"


async def _endpoints(edge: SidecarServer, count: int) -> None:
    """Until the edge's configuration has `count` endpoints for orders."""
    with trio.fail_after(20):
        while True:
            changed = edge.config_changed
            snap = edge.outbound.snapshot if edge.outbound is not None else None
            cluster = snap.clusters.get("default/orders:80@v1") if snap else None
            cluster = cluster or (snap.clusters.get("default/orders:80") if snap else None)
            if cluster is not None and len(cluster.endpoints) == count:
                return
            await changed.wait()


def _entrance(port: int) -> list[dict[str, object]]:
    """The edge's Gateway on `port` and its route to orders."""
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "public"},
        "spec": {
            "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
            "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
        },
    }
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "site"},
        "spec": {
            "parentRefs": [{"name": "public"}],
            "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}],
        },
    }
    return [gateway, route]  # fmt: skip


async def _served(app: EchoServer, count: int) -> bool:
    """Until `app` has answered `count` requests in all (False after 30 s)."""
    return await trio.to_thread.run_sync(app.wait_for, lambda got: len(got) >= count, 30)


async def test_a_rolling_restart_under_constant_traffic_loses_no_request(
    plane: ControlPlane,
) -> None:
    outcomes: Counter[str] = Counter()
    stop = trio.Event()
    with EchoServer("old") as old_app, EchoServer("new") as new_app:
        async with trio.open_nursery() as nursery:
            port = free_port()
            for doc in _entrance(port):
                await on_plane(plane, lambda state, doc=doc: state.apply([Document(doc, "test")]))
            edge = mesh_sidecar(plane.data_dir, f"127.0.0.1:{plane.port}", "edge", 1,
                                  gateway=True)  # fmt: skip
            await nursery.start(edge.run)
            old = _instance(plane, old_app.port)
            new: subprocess.Popen[str] | None = None
            try:
                await _ready(old)
                await _endpoints(edge, 1)
                url = f"http://127.0.0.1:{port}/orders"

                async def client() -> None:
                    async with httpx.AsyncClient(timeout=10) as http:
                        while not stop.is_set():
                            try:
                                r = await http.get(url)
                                outcomes[str(r.status_code)] += 1
                            except httpx.HTTPError as exc:
                                outcomes[type(exc).__name__] += 1

                async with trio.open_nursery() as load:
                    for _ in range(CLIENTS):
                        load.start_soon(client)
                    assert await _served(old_app, 100)  # traffic flows to the old one
                    new = _instance(plane, new_app.port)
                    await _ready(new)
                    await _endpoints(edge, 2)
                    old.send_signal(signal.SIGTERM)  # drains, then exits
                    code = await trio.to_thread.run_sync(old.wait, 30)
                    assert await _served(new_app, len(new_app.received) + 200)  # and on
                    stop.set()
            finally:
                for proc in (old, new):
                    if proc is not None and proc.poll() is None:
                        proc.kill()
            nursery.cancel_scope.cancel()
    total = sum(outcomes.values())
    assert code == 0
    assert outcomes == Counter({"200": total}), outcomes
    assert len(old_app.received) >= 100 and len(new_app.received) >= 200
    print(f"rolling restart: {total} requests, {outcomes}")


class _Chaining(http.server.BaseHTTPRequestHandler):
    """An app whose answer needs a call of its own (to `orders`, through its sidecar's
    outbound port), made only once the test says go: after its sidecar got SIGTERM."""

    protocol_version = "HTTP/1.1"
    outbound = 0
    started = threading.Event()
    go = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # the http.server API
        type(self).started.set()
        type(self).go.wait(20)
        request = urllib.request.Request(f"http://127.0.0.1:{self.outbound}/from-shipping",
                                         headers={"Host": "orders"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


async def test_a_draining_sidecar_carries_its_apps_last_calls(plane: ControlPlane) -> None:
    """SIGTERM reaches shipping's sidecar while shipping answers a request that needs a call
    to orders: the inbound side stops taking work, but the outbound side carries that call,
    and the request is answered; then the sidecar exits."""
    out_port = free_port()
    _Chaining.outbound = out_port
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Chaining)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with EchoServer("orders") as orders_app:
        async with trio.open_nursery() as nursery:
            target = f"127.0.0.1:{plane.port}"
            orders = mesh_sidecar(plane.data_dir, target, "orders", orders_app.port)
            web = mesh_sidecar(plane.data_dir, target, "web", 1)
            await nursery.start(orders.run)
            await nursery.start(web.run)
            shipping = _instance(plane, server.server_address[1], "shipping", out_port)
            try:
                await _ready(shipping)
                url = f"http://127.0.0.1:{web.outbound_port}/ship"
                answer: list[httpx.Response] = []

                async def call() -> None:
                    async with httpx.AsyncClient(timeout=30, headers={"Host": "shipping"}) as h:
                        with trio.fail_after(20):
                            while True:  # until web knows shipping
                                changed = web.config_changed
                                r = await h.get(url)
                                if r.status_code != 404 or _Chaining.started.is_set():
                                    break
                                await changed.wait()
                        answer.append(r)

                async with trio.open_nursery() as requests:
                    requests.start_soon(call)
                    await trio.to_thread.run_sync(_Chaining.started.wait, 20)
                    shipping.send_signal(signal.SIGTERM)
                    assert shipping.stderr is not None
                    while "SIGTERM: draining" not in await trio.to_thread.run_sync(
                        shipping.stderr.readline
                    ):
                        pass
                    _Chaining.go.set()  # now the app makes its call
                code = await trio.to_thread.run_sync(shipping.wait, 30)
            finally:
                if shipping.poll() is None:
                    shipping.kill()
                server.shutdown()
            nursery.cancel_scope.cancel()
    assert answer[0].status_code == 200, answer[0].text
    assert answer[0].json()["path"] == "/from-shipping"  # orders answered shipping's call
    assert code == 0
