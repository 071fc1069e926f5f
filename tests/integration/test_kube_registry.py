"""`meshctl server --registry k8s`: resources listed and watched from the Kubernetes API
(here the documented-API double in tests/support), kept current through modifications,
deletions, bookmarks, dropped watches and `410 Gone`; a Service's cluster IP reaches the
sidecars as the address intercepted connections are matched against; changes through
`meshctl apply` are refused (kubectl is the way)."""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from ca import keystore
from control.server import ControlPlane
from control.state import ControlState
from sidecar.config.parse import Document
from sidecar.errors import ConfigError
from tests.support.kube_api_double import KubeApiDouble
from tests.support.plane import mesh_sidecar, on_plane

SERVICES = "/api/v1/services"
SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
ROUTES = "/apis/gateway.networking.k8s.io/v1/httproutes"
SERVED = [
    SERVICES,
    SLICES,
    ROUTES,
    "/apis/gateway.networking.k8s.io/v1/gateways",
    "/apis/gateway.networking.k8s.io/v1/grpcroutes",
    "/apis/gateway.networking.k8s.io/v1beta1/referencegrants",
]  # fmt: skip  (no weft.dev CRDs)
ORDERS = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "u1",
                 "managedFields": [{"manager": "kubectl"}]},
    "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
             "selector": {"app": "orders"}, "ports": [{"name": "http", "port": 80,
                                                       "targetPort": 8080}]},
    "status": {"loadBalancer": {}},
}  # fmt: skip
SPLIT = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "orders", "namespace": "shop"},
    "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "orders", "port": 80}],
             "rules": [{"backendRefs": [{"name": "orders", "port": 80, "weight": 90},
                                        {"name": "orders", "port": 80, "weight": 10}]}]},
}  # fmt: skip


@pytest.fixture
def api() -> Iterator[KubeApiDouble]:
    with KubeApiDouble(SERVED) as double:
        double.put(SERVICES, copy.deepcopy(ORDERS))
        double.put(ROUTES, copy.deepcopy(SPLIT))
        yield double


@pytest.fixture
def plane(tmp_path: Path, api: KubeApiDouble) -> Iterator[ControlPlane]:
    data = tmp_path / "cp"
    keystore.init(data, "weft.local", datetime.datetime.now(datetime.UTC))
    (tmp_path / "kubeconfig").write_text(api.kubeconfig())
    srv = ControlPlane(data, "127.0.0.1:0", store=f"k8s:{tmp_path / 'kubeconfig'}")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(0)


async def _until(plane: ControlPlane, ok: Callable[[dict[Any, Any]], bool]) -> dict[Any, Any]:
    """Until the control plane's resources satisfy `ok` (woken by each change); they."""

    async def wait(state: ControlState) -> dict[Any, Any]:
        async with asyncio.timeout(20):
            while not ok(docs := dict(state.resources.docs)):
                await state.changed.wait()
        return docs

    result: dict[Any, Any] = await on_plane(plane, wait)
    return result


def _weights(docs: dict[Any, Any]) -> list[int]:
    route = docs.get(("HTTPRoute", "shop", "orders"))
    return [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]] if route else []


async def test_resources_follow_the_api_server(plane: ControlPlane, api: KubeApiDouble) -> None:
    docs = await _until(plane, lambda d: ("Service", "shop", "orders") in d)
    service = docs[("Service", "shop", "orders")]
    assert "status" not in service and "managedFields" not in service["metadata"]
    assert _weights(docs) == [90, 10]
    # the CRDs are not installed: those kinds are waited for, the rest is served
    assert any(p.startswith("/apis/weft.dev/") for p, _ in api.requests)

    # a modification and a deletion arrive through the watch
    api.put(ROUTES, {**copy.deepcopy(SPLIT), "spec": {**SPLIT["spec"], "rules": [
        {"backendRefs": [{"name": "orders", "port": 80, "weight": 50},
                         {"name": "orders", "port": 80, "weight": 50}]}]}})  # fmt: skip
    await _until(plane, lambda d: _weights(d) == [50, 50])
    api.put(SERVICES, {"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "catalog", "namespace": "shop"},
                       "spec": {"ports": [{"port": 9000}]}})  # fmt: skip
    await _until(plane, lambda d: ("Service", "shop", "catalog") in d)
    api.delete(SERVICES, "shop", "catalog")
    await _until(plane, lambda d: ("Service", "shop", "catalog") not in d)

    # a bookmark moves where the watch resumes: a dropped watch comes back from there
    mark = api.bookmark()
    assert await api.wait(lambda: (SERVICES, "BOOKMARK", mark) in api.delivered)
    api.drop_watches()
    assert await api.wait(lambda: (SERVICES, {"watch": "1", "resourceVersion": str(mark),
                                              "allowWatchBookmarks": "true",
                                              "timeoutSeconds": "300"}) in api.requests)  # fmt: skip

    # history lost (410 Gone): the kind is listed again, and what changed meanwhile is seen
    lists_before = sum(1 for p, q in api.requests if p == SERVICES and "watch" not in q)
    api.put(SLICES, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": "orders-1", "namespace": "shop",
                                  "labels": {"kubernetes.io/service-name": "orders"}},
                     "addressType": "IPv4", "ports": [{"port": 8080}],
                     "endpoints": [{"addresses": ["10.1.0.5"]}]})  # fmt: skip
    api.compact()
    api.drop_watches()
    api.put(SERVICES, {"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "inventory", "namespace": "shop"},
                       "spec": {"ports": [{"port": 7000}]}})  # fmt: skip
    await _until(plane, lambda d: ("Service", "shop", "inventory") in d
                 and ("EndpointSlice", "shop", "orders-1") in d)  # fmt: skip
    lists_after = sum(1 for p, q in api.requests if p == SERVICES and "watch" not in q)
    assert lists_after > lists_before  # listed again after the 410


async def test_a_cluster_ip_is_what_sidecars_intercept(plane: ControlPlane) -> None:
    await _until(plane, lambda d: ("Service", "shop", "orders") in d)
    async with trio.open_nursery() as nursery:
        web = mesh_sidecar(plane.data_dir, f"127.0.0.1:{plane.port}", "web", 1, namespace="shop")
        await nursery.start(web.run)
        snap = web.outbound.snapshot if web.outbound is not None else None
        assert snap is not None and snap.mesh is not None
        assert snap.mesh.by_address("10.96.0.10", 80) == ("shop", "orders", 80)
        assert snap.mesh.by_address("10.96.0.10", 8080) is None  # not a port of the Service
        nursery.cancel_scope.cancel()


async def test_changes_through_meshctl_are_refused(plane: ControlPlane) -> None:
    async def apply(state: Any) -> str:
        try:
            await state.apply([Document(copy.deepcopy(SPLIT), "meshctl apply")])
        except ConfigError as exc:
            return str(exc)
        return "applied"

    said = await on_plane(plane, apply)
    assert "reads its resources from the Kubernetes API server" in said
    assert "kubectl apply" in said


async def test_an_object_that_does_not_parse_is_left_out(
    plane: ControlPlane, api: KubeApiDouble, caplog: pytest.LogCaptureFixture
) -> None:
    """A Service someone wrote that Weft cannot read (a port of 0 here) is left out with an
    error naming it; the others are served."""
    await _until(plane, lambda d: ("Service", "shop", "orders") in d)
    api.put(SERVICES, {"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "broken", "namespace": "shop"},
                       "spec": {"ports": [{"port": 0}]}})  # fmt: skip
    api.put(SERVICES, {"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": "fine", "namespace": "shop"},
                       "spec": {"ports": [{"port": 8080}]}})  # fmt: skip
    docs = await _until(plane, lambda d: ("Service", "shop", "fine") in d)
    assert ("Service", "shop", "broken") not in docs
    assert ("Service", "shop", "orders") in docs
    assert any("Service shop/broken from the API server" in r.getMessage() for r in caplog.records)
