"""Consul mode end to end: sidecars register with (the test double of) a Consul agent, control
plane replicas keep resources in its KV and take endpoints from its health answers, and a
replica can die without a failed request. Real sidecars, real control planes, real HTTP."""

from __future__ import annotations

import asyncio
import datetime
import json
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from ca import keystore
from control import api
from control.consul_store import ConsulResources
from control.server import ControlPlane
from control.state import ControlState
from control.store import ResourceFile
from sidecar.config.parse import Document
from sidecar.discovery.consul import CasConflict, Registration, parse_url
from sidecar.discovery.consul_client import ConsulClient
from sidecar.modes.sidecar import SidecarServer
from tests.support.consul_double import ConsulDouble
from tests.support.echo import EchoServer
from tests.support.net import free_port
from tests.support.plane import mesh_sidecar, on_plane, start_server

ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "orders", "namespace": "default"},
    "spec": {"parentRefs": [{"kind": "Service", "name": "orders"}],
             "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]},
}  # fmt: skip


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble().serving() as double:
        yield double


def replica_dirs(tmp_path: Path, n: int) -> list[Path]:
    """Data dirs for `n` replicas of one mesh: each has a copy of the CA and the admin token
    (the "file per replica" option for CA material, docs/consul.md)."""
    first = tmp_path / "replica-0"
    keystore.init(first, "weft.local", datetime.datetime.now(datetime.UTC))
    api.admin_token(first, create=True)
    dirs = [first]
    for i in range(1, n):
        d = tmp_path / f"replica-{i}"
        d.mkdir()
        shutil.copytree(first / "ca", d / "ca")
        shutil.copy2(first / api.ADMIN_TOKEN_FILE, d / api.ADMIN_TOKEN_FILE)
        dirs.append(d)
    return dirs


def endpoints(web: SidecarServer) -> set[tuple[str, int]]:
    snap = web.outbound.snapshot if web.outbound is not None else None
    cluster = snap.clusters.get("default/orders:80") if snap is not None else None
    return {(e.version, e.weight) for e in cluster.endpoints} if cluster is not None else set()


async def until(web: SidecarServer, want: Callable[[], bool]) -> None:
    with trio.fail_after(15):
        while not want():
            await web.config_changed.wait()


async def settled(plane: ControlPlane, done: Callable[[ControlState], bool]) -> None:
    """Wait until `done(state)` holds on the plane's loop (checked at each change)."""

    async def wait(state: ControlState) -> None:
        async with asyncio.timeout(15):
            while not done(state):
                await state.changed.wait()

    await on_plane(plane, wait)


async def test_sidecars_register_and_endpoints_come_from_consul(
    tmp_path: Path, consul: ConsulDouble
) -> None:
    [data] = replica_dirs(tmp_path, 1)
    plane = ControlPlane(data, "127.0.0.1:0", store=consul.url)
    plane.start()
    target = f"127.0.0.1:{plane.port}"
    try:
        with EchoServer("v1") as app:
            async with trio.open_nursery() as nursery:
                orders: SidecarServer = await nursery.start(
                    mesh_sidecar(data, target, "orders", app.port, "v1", discovery=consul.url).run
                )
                assert orders.consul is not None
                with trio.fail_after(10):
                    await orders.consul.registered.wait()
                [entry] = consul.passing("orders")
                svc, check = entry["Service"], entry["Checks"][1]
                assert (svc["Address"], svc["Port"], svc["Tags"]) == (
                    "127.0.0.1",
                    orders.inbound_port,
                    ["weft"],
                )
                assert svc["Meta"] == {
                    "version": "v1",
                    "namespace": "default",
                    "protocol": "HTTP",
                    "spiffe_id": "spiffe://weft.local/ns/default/svc/orders",
                }
                with consul.lock:
                    registered_check = consul.services[svc["ID"]].check
                assert registered_check is not None
                assert registered_check.http == f"http://127.0.0.1:{orders.admin_port}/ready"
                assert check["Status"] == "passing"

                web: SidecarServer = await nursery.start(
                    mesh_sidecar(data, target, "web", 1, "", discovery=consul.url).run
                )
                await until(web, lambda: endpoints(web) == {("v1", 1)})
                async with httpx.AsyncClient(timeout=10) as http:
                    r = await http.get(
                        f"http://127.0.0.1:{web.outbound_port}/x", headers={"Host": "orders"}
                    )
                assert r.status_code == 200 and json.loads(r.text)["pod"] == "v1"

                # an instance only Consul knows about (no watch of ours), weight 3, is an endpoint
                other = ConsulClient(parse_url(consul.url, {}))
                await other.register(Registration(
                    service="orders", namespace="default", version="v9", protocol="HTTP",
                    address="127.0.0.1", port=free_port(), weight=3, check_interval="1h",
                    check_url=f"http://127.0.0.1:{orders.admin_port}/ready",
                ))  # fmt: skip
                await until(web, lambda: endpoints(web) == {("v1", 1), ("v9", 3)})

                # drain: out of Consul (not just failing its check), then out of web's endpoints
                orders.drain()
                with trio.fail_after(10):
                    await orders.consul.done.wait()
                assert [e["Service"]["Meta"]["version"] for e in consul.passing("orders")] == ["v9"]
                await until(web, lambda: endpoints(web) == {("v9", 3)})
                await other.aclose()
                nursery.cancel_scope.cancel()
    finally:
        plane.stop(0)


async def test_resources_live_in_consul_kv_and_replicas_agree(
    tmp_path: Path, consul: ConsulDouble
) -> None:
    a_dir, b_dir = replica_dirs(tmp_path, 2)
    a = ControlPlane(a_dir, "127.0.0.1:0", store=consul.url)
    b = ControlPlane(b_dir, "127.0.0.1:0", store=consul.url)
    a.start()
    b.start()
    try:
        await on_plane(a, lambda s: s.apply([Document(ROUTE, "route.yaml")]))
        key = "weft/resources/HTTPRoute/default/orders"
        assert json.loads(consul.kv[key].value)["spec"] == ROUTE["spec"]
        await settled(b, lambda s: ("HTTPRoute", "default", "orders") in s.resources.docs)
        assert a.state is not None and b.state is not None
        # the same documents, and the same version (Consul's index), from either replica
        await settled(a, lambda s: s.resources.version == b.state.resources.version)  # type: ignore[union-attr]
        docs_a = await on_plane(a, _web_docs)
        docs_b = await on_plane(b, _web_docs)
        assert docs_a == docs_b and any(d["kind"] == "HTTPRoute" for d in docs_a)  # type: ignore[union-attr]

        # a delete through B reaches A
        await on_plane(b, lambda s: s.delete("HTTPRoute", "default", "orders"))
        assert key not in consul.kv
        await settled(a, lambda s: not s.resources.docs)

        # a key written by hand that does not parse is ignored, with the rest still served
        consul.put("weft/resources/HTTPRoute/default/junk", b"{not json")  # `consul kv put`
        await on_plane(a, lambda s: s.apply([Document(ROUTE, "route.yaml")]))
        await settled(b, lambda s: list(s.resources.docs) == [("HTTPRoute", "default", "orders")])
    finally:
        a.stop(0)
        b.stop(0)

    # a replica that starts while Consul is down serves what it last read (its cache)
    consul.fail_with(500)
    again = ControlPlane(b_dir, "127.0.0.1:0", store=consul.url)
    again.start()
    try:
        assert again.state is not None
        assert list(again.state.resources.docs) == [("HTTPRoute", "default", "orders")]
        consul.fail_with(0)
        # ... and a fresh replica with no cache reads it all from Consul
        fresh = ControlPlane(
            replica_dirs(tmp_path / "fresh", 1)[0], "127.0.0.1:0", store=consul.url
        )
        fresh.start()
        assert fresh.state is not None and list(fresh.state.resources.docs) == [
            ("HTTPRoute", "default", "orders")
        ]
        fresh.stop(0)
    finally:
        again.stop(0)


async def _web_docs(state: ControlState) -> object:
    return state.snapshot(("default", "web", False, None))[0]


def test_concurrent_writers_lose_nothing(tmp_path: Path, consul: ConsulDouble) -> None:
    """Two replicas writing from the same starting point: the second's transaction is rolled
    back (check-and-set), it re-reads and applies again; both changes are kept."""

    async def main() -> None:
        c1 = ConsulClient(parse_url(consul.url, {}))
        c2 = ConsulClient(parse_url(consul.url, {}))
        r1 = ConsulResources(c1, ResourceFile(tmp_path / "1"))
        r2 = ConsulResources(c2, ResourceFile(tmp_path / "2"))
        (tmp_path / "1").mkdir()
        (tmp_path / "2").mkdir()
        s1 = ControlState(tmp_path / "1", 0.0, consul=r1, resources=await r1.load())
        s2 = ControlState(tmp_path / "2", 0.0, consul=r2, resources=await r2.load())
        await s1.apply([Document(ROUTE, "a.yaml")])
        stale = ConsulResources(c2, ResourceFile(tmp_path / "2"))  # never read the route
        with pytest.raises(CasConflict):
            await stale.commit(s2.resources, s2.resources.apply([Document(ROUTE, "b.yaml")])[0])
        other = {**ROUTE, "metadata": {"name": "payments", "namespace": "default"}}
        await s2.apply([Document(other, "b.yaml")])  # s2's view is stale: conflict, re-read, retry
        version = await s2.apply(
            [Document({**ROUTE, "spec": {**ROUTE["spec"], "hostnames": ["x"]}}, "c.yaml")]
        )
        assert version[1] == ["HTTPRoute default/orders configured"]
        final = await r1.load()
        assert sorted(n for _, _, n in final.docs) == ["orders", "payments"]
        assert final.docs[("HTTPRoute", "default", "orders")]["spec"]["hostnames"] == ["x"]
        await c1.aclose()
        await c2.aclose()

    asyncio.run(main())


async def test_killing_a_replica_moves_its_sidecars_with_no_failed_request(
    tmp_path: Path, consul: ConsulDouble
) -> None:
    dirs = replica_dirs(tmp_path, 2)
    ports = [free_port(), free_port()]
    procs = [start_server(d, p, "--store", consul.url) for d, p in zip(dirs, ports, strict=True)]
    targets = ",".join(f"127.0.0.1:{p}" for p in ports)
    served = failed = 0
    try:
        with EchoServer("v1") as app:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    mesh_sidecar(
                        dirs[0], targets, "orders", app.port, "v1", discovery=consul.url
                    ).run
                )
                web: SidecarServer = await nursery.start(
                    mesh_sidecar(dirs[0], targets, "web", 1, "", discovery=consul.url).run
                )
                await until(web, lambda: endpoints(web) == {("v1", 1)})
                assert web.watch is not None
                stop = trio.Event()

                async def traffic() -> None:
                    nonlocal served, failed
                    async with httpx.AsyncClient(timeout=10) as http:
                        for _ in range(5000):  # bounded; ends at `stop`
                            if stop.is_set():
                                return
                            r = await http.get(
                                f"http://127.0.0.1:{web.outbound_port}/o",
                                headers={"Host": "orders"},
                            )
                            served += r.status_code == 200
                            failed += r.status_code != 200

                nursery.start_soon(traffic)
                victim = ports.index(int(web.watch.target.rpartition(":")[2]))
                procs[victim].send_signal(signal.SIGKILL)
                procs[victim].wait()
                survivor = ports[1 - victim]
                with trio.fail_after(20):
                    while web.watch.target != f"127.0.0.1:{survivor}" or not web.watch.connected:
                        await web.config_changed.wait()
                # the survivor's changes reach the moved sidecar
                route = {**ROUTE, "spec": {**ROUTE["spec"], "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/o"}}],
                    "backendRefs": [{"name": "orders", "port": 80}]}]}}  # fmt: skip
                (tmp_path / "route.json").write_text(json.dumps(route))
                proc = await trio.run_process(
                    [sys.executable, "-m", "mesh_ctl", "apply", "-f", str(tmp_path / "route.json"),
                     "--server", f"127.0.0.1:{survivor}", "--data-dir", str(dirs[0])],
                    capture_stdout=True, capture_stderr=True, check=False,
                )  # fmt: skip
                assert proc.returncode == 0, proc.stderr
                await until(
                    web, lambda: web.outbound is not None and "/o" in json.dumps(web._pushed)
                )
                stop.set()
                nursery.cancel_scope.cancel()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(10)
    assert failed == 0 and served > 0, (served, failed)


async def test_a_write_consul_refuses_is_answered_with_consuls_reason(
    tmp_path: Path, consul: ConsulDouble
) -> None:
    (data,) = replica_dirs(tmp_path, 1)
    plane = ControlPlane(data, "127.0.0.1:0", store=consul.url)
    plane.start()
    route = tmp_path / "route.yaml"
    route.write_text(json.dumps(ROUTE))
    try:
        consul.read_only = True  # a token that may read the mesh's keys, not write them
        done = await trio.run_process(
            [sys.executable, "-m", "mesh_ctl", "apply", "-f", str(route),
             "--server", f"127.0.0.1:{plane.port}", "--data-dir", str(data)],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    finally:
        plane.stop(0)
    assert done.returncode == 1
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        "meshctl: not saved: Consul PUT /v1/txn: HTTP 403: Permission denied: token with "
        "AccessorID '00000000-0000-0000-0000-000000000002' lacks permission 'key:write'"
    ), lines[0]
