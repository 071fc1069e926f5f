"""Which mesh routes a caller's sidecar applies (GAMMA): per Service port, producer and
consumer routes, and how a Host names a Service from the caller's namespace."""

from __future__ import annotations

import dataclasses
from typing import Any

from control.registry import Instance, Registry
from control.snapshot import documents_for
from control.store import Resources
from sidecar.config.compile import compile_snapshot
from sidecar.config.mesh import outbound_config
from sidecar.config.model import ListenerKey
from sidecar.config.parse import Document, load_documents
from sidecar.config.snapshot import Snapshot

OUT = ListenerKey(address="127.0.0.1", port=15001)


def k8s_service(name: str, ns: str, *ports: tuple[int, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": {"app": name},
                     "ports": [{"port": p, "appProtocol": app} for p, app in ports]}}  # fmt: skip


def route(name: str, ns: str, parent: dict[str, Any], backend: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", **parent}],
                     "rules": [{"backendRefs": [backend]}]}}  # fmt: skip


def sidecar_view(docs: list[dict[str, Any]], caller_ns: str) -> Snapshot:
    """What a sidecar in `caller_ns` serves, from these documents applied to the control
    plane and one registered instance of every Service."""
    res, _ = Resources().apply([Document(d, f"doc {i}") for i, d in enumerate(docs)])
    reg = Registry()
    for i, d in enumerate(d for d in docs if d["kind"] == "Service"):
        md = d["metadata"]
        inst = Instance(id=f"i{i}", namespace=md["namespace"], service=md["name"],
                        version="", address="127.0.0.1", port=21000 + i, ready=True)  # fmt: skip
        reg.put(inst, now=0.0)
    out = outbound_config(documents_for(res, reg, caller_ns, "client"), OUT, caller_ns)
    resources = load_documents(Document(d, f"pushed {i}") for i, d in enumerate(out.documents))
    return dataclasses.replace(compile_snapshot(resources, version=1), mesh=out.names)


def reached(snap: Snapshot, host: str) -> tuple[str, str] | None:
    """(route, cluster) a GET / with this Host reaches, None when no route answers."""
    assert snap.mesh is not None
    m = snap.routers[OUT].route(snap.mesh.route_host(host), "/", "GET", [], "")
    if m is None:
        return None
    return m.action.route, m.action.backends[0].cluster or ""


def test_a_kubernetes_service_defines_the_ports_and_protocols() -> None:
    svc = k8s_service("echo", "shop", (80, "http"), (8080, "http"), (7070, "grpc"))
    snap = sidecar_view([svc], "shop")
    assert snap.clusters["shop/echo:7070"].protocol == "GRPC"
    assert reached(snap, "echo") == ("shop/weft-default-echo-80", "shop/echo:80")
    assert reached(snap, "echo:8080") == ("shop/weft-default-echo-8080", "shop/echo:8080")
    assert reached(snap, "echo:9999") is None


def test_a_route_for_one_port_leaves_the_others_alone() -> None:
    svc = k8s_service("echo", "shop", (80, "http"), (8080, "http"))
    r = route("only-80", "shop", {"name": "echo", "port": 80}, {"name": "echo", "port": 8080})
    snap = sidecar_view([svc, r], "shop")
    assert reached(snap, "echo") == ("shop/only-80", "shop/echo:8080")
    assert reached(snap, "echo:8080") == ("shop/weft-default-echo-8080", "shop/echo:8080")


def test_short_names_resolve_in_the_callers_namespace_only() -> None:
    docs = [k8s_service("echo", "ns-a", (80, "http")), k8s_service("echo", "ns-b", (80, "http"))]
    snap = sidecar_view(docs, "ns-b")
    assert reached(snap, "echo") == ("ns-b/weft-default-echo-80", "ns-b/echo:80")
    assert reached(snap, "echo.ns-a") == ("ns-a/weft-default-echo-80", "ns-a/echo:80")
    assert reached(snap, "echo.ns-a.svc.cluster.local:80") == (
        "ns-a/weft-default-echo-80", "ns-a/echo:80")  # fmt: skip
    assert reached(sidecar_view(docs[:1], "ns-b"), "echo") is None  # not the other namespace's


def test_a_consumer_route_applies_to_its_own_namespace_and_replaces_the_producers() -> None:
    svc = k8s_service("echo", "mesh", (80, "http"))
    producer = route("producer", "mesh", {"name": "echo"}, {"name": "echo", "port": 80})
    consumer = route(
        "consumer", "client-ns", {"name": "echo", "namespace": "mesh"},
        {"name": "echo", "namespace": "mesh", "port": 80},
    )  # fmt: skip
    docs = [svc, producer, consumer]
    # the consumer route's backend is its own parent: no ReferenceGrant needed
    assert reached(sidecar_view(docs, "client-ns"), "echo.mesh") == (
        "client-ns/consumer", "mesh/echo:80")  # fmt: skip
    assert reached(sidecar_view(docs, "mesh"), "echo") == ("mesh/producer", "mesh/echo:80")
    assert reached(sidecar_view(docs, "elsewhere"), "echo.mesh") == (
        "mesh/producer", "mesh/echo:80")  # fmt: skip


def test_a_consumer_routes_other_backends_need_a_reference_grant() -> None:
    docs = [
        k8s_service("echo", "mesh", (80, "http")),
        k8s_service("other", "mesh", (80, "http")),
        route("consumer", "client-ns", {"name": "echo", "namespace": "mesh"},
              {"name": "other", "namespace": "mesh", "port": 80}),
    ]  # fmt: skip
    snap = sidecar_view(docs, "client-ns")
    assert snap.routers[OUT].route(snap.mesh.route_host("echo.mesh"), "/", "GET", [], "")  # type: ignore[union-attr]
    assert reached(snap, "echo.mesh") == ("client-ns/consumer", "")  # refused backend
    grant = {
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "let-clients", "namespace": "mesh"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                           "namespace": "client-ns"}],
                 "to": [{"group": "", "kind": "Service", "name": "other"}]},
    }  # fmt: skip
    granted = sidecar_view([*docs, grant], "client-ns")
    assert reached(granted, "echo.mesh") == ("client-ns/consumer", "mesh/other:80")
