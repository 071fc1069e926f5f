"""A rolling restart of a mesh service under constant traffic loses no request: orders v1's
new instance (a `meshctl sidecar` process and its app) joins, the old one gets SIGTERM and
drains — it leaves the callers' endpoints through the control plane, finishes what it
carries and exits — while eight keep-alive clients call orders through the mesh's edge
gateway the whole time."""

from __future__ import annotations

import signal
import subprocess
import sys
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


def _instance(plane: ControlPlane, app_port: int) -> subprocess.Popen[str]:
    """orders v1's sidecar, as a process, in front of `app_port`."""
    data = plane.data_dir
    token = subprocess.run(
        [sys.executable, "-m", "mesh_ctl", "token", "create", "orders", "--data-dir", str(data)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "mesh_ctl", "sidecar", "--service", "orders", "--version", "v1",
         "--app-port", str(app_port), "--token", token, "--control-plane",
         f"127.0.0.1:{plane.port}", "--ca-file", str(data / "ca" / "root.pem"),
         "--inbound-address", "127.0.0.1", "--inbound-port", str(free_port()),
         "--outbound-port", str(free_port()), "--admin-port", str(free_port())],
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
