"""What a sidecar is sent, and what it builds from it: the registry and resources become
routes on its outbound listener, with version subsets and weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from control.registry import Instance, Registry
from control.snapshot import documents_for
from control.store import Resources
from sidecar.config.compile import compile_snapshot
from sidecar.config.mesh import outbound_config
from sidecar.config.model import ListenerKey
from sidecar.config.parse import Document, load_documents
from sidecar.config.snapshot import Snapshot
from sidecar.http.router import CompiledMatch

SPLIT = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "orders"},
    "spec": {"parentRefs": [{"kind": "Service", "name": "orders"}],
             "rules": [{"backendRefs": [{"name": "orders", "port": 80, "version": "v1", "weight": 90},
                                        {"name": "orders", "port": 80, "version": "v2", "weight": 10}]}]},
}  # fmt: skip
POLICY = {
    "apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "orders-callers"},
    "spec": {"targetRef": {"kind": "Service", "name": "orders"}, "action": "ALLOW",
             "from": [{"services": ["web"]}]},
}  # fmt: skip
EDGE_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "site"},
    "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
}  # fmt: skip
OUT = ListenerKey(address="127.0.0.1", port=15001)


def _mesh() -> tuple[Resources, Registry]:
    reg = Registry()
    for i, (svc, version, port, ready) in enumerate([
        ("orders", "v1", 21001, True), ("orders", "v1", 21002, True),
        ("orders", "v2", 21003, True), ("orders", "v2", 21004, False), ("web", "", 21005, True),
    ]):  # fmt: skip
        inst = Instance(id=f"i{i}", namespace="default", service=svc, version=version,
                        address="127.0.0.1", port=port, ready=ready)  # fmt: skip
        reg.put(inst, now=0.0)
    docs = [Document(d, f"doc {i}") for i, d in enumerate([SPLIT, POLICY, EDGE_ROUTE])]
    res, _ = Resources().apply(docs)
    return res, reg


def _compiled(pushed: list[dict[str, Any]], caller_ns: str = "default") -> Snapshot:
    out = outbound_config(pushed, OUT, caller_ns)
    resources = load_documents(Document(d, f"pushed {i}") for i, d in enumerate(out.documents))
    return dataclasses.replace(compile_snapshot(resources, version=1), mesh=out.names)


def _route(snap: Snapshot, host: str, path: str = "/") -> CompiledMatch | None:
    """The rule a request with this Host and path reaches on the outbound listener."""
    assert snap.mesh is not None
    return snap.routers[OUT].route(snap.mesh.route_host(host), path, "GET", [], "")


def test_web_gets_every_service_and_the_split_but_not_orders_policies() -> None:
    res, reg = _mesh()
    pushed = documents_for(res, reg, "default", "web")
    kinds = [(d["kind"], d["metadata"]["name"]) for d in pushed]
    assert kinds == [("Service", "orders"), ("Service", "web"), ("HTTPRoute", "orders")]
    snap = _compiled(pushed)
    split = _route(snap, "orders", "/x")
    assert split is not None
    assert [(b.cluster, b.weight) for b in split.action.backends] == [
        ("default/orders:80@v1", 90), ("default/orders:80@v2", 10)]  # fmt: skip
    ports = {n: [e.port for e in c.endpoints] for n, c in snap.clusters.items()}
    assert ports["default/orders:80@v1"] == [21001, 21002]
    assert ports["default/orders:80@v2"] == [21003]  # the instance not ready yet is left out
    for host in ("web", "web:80", "web.default", "web.default.svc.cluster.local"):
        match = _route(snap, host)
        assert match is not None and match.action.backends[0].cluster == "default/web:80"
    for host in ("unknown", "web:8080", "web.other"):
        assert _route(snap, host) is None


def test_a_scoped_sidecar_gets_what_it_calls_and_what_their_routes_send_to() -> None:
    """web calls orders; orders' route mirrors to audit, and a route on audit splits to
    audit-v2: web gets all four services and both routes, not payments or its route."""

    def svc(name: str) -> dict[str, Any]:
        return {"apiVersion": "weft.dev/v1alpha1", "kind": "Service", "metadata": {"name": name},
                "spec": {"ports": [{"port": 80}]}}  # fmt: skip

    def route(parent: str, *to: str, mirror: str = "") -> dict[str, Any]:
        rule: dict[str, Any] = {"backendRefs": [{"name": t, "port": 80} for t in to]}
        if mirror:
            rule["filters"] = [{"type": "RequestMirror",
                                "requestMirror": {"backendRef": {"name": mirror, "port": 80}}}]  # fmt: skip
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": parent},
                "spec": {"parentRefs": [{"kind": "Service", "name": parent}], "rules": [rule]}}  # fmt: skip

    docs = [svc(n) for n in ("web", "orders", "audit", "audit-v2", "payments")] + [
        route("orders", "orders", mirror="audit"), route("audit", "audit-v2"),
        route("payments", "payments"),
    ]  # fmt: skip
    res, _ = Resources().apply(Document(d, f"doc {i}") for i, d in enumerate(docs))
    scoped = documents_for(res, Registry(), "default", "web",
                           calls=frozenset({("default", "orders")}))  # fmt: skip
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in scoped)
    assert kinds == [("HTTPRoute", "audit"), ("HTTPRoute", "orders"), ("Service", "audit"),
                     ("Service", "audit-v2"), ("Service", "orders"), ("Service", "web")]  # fmt: skip
    everything = documents_for(res, Registry(), "default", "web")
    assert len(everything) == 8
    assert len(_compiled(scoped).clusters) == 4  # compiles: every route has its backends
    # the same calls from an edge gateway: scoping is for sidecars, a gateway gets all
    gateway = documents_for(res, Registry(), "default", "web", gateway=True,
                            calls=frozenset({("default", "orders")}))  # fmt: skip
    assert len(gateway) == 8


def test_orders_gets_the_policies_that_target_it() -> None:
    res, reg = _mesh()
    pushed = documents_for(res, reg, "default", "orders")
    assert ("AuthorizationPolicy", "orders-callers") in [
        (d["kind"], d["metadata"]["name"]) for d in pushed
    ]
    assert len(_compiled(pushed).authz) == 1


def test_a_service_declared_with_ports_keeps_them_and_its_static_endpoints() -> None:
    svc = {"apiVersion": "weft.dev/v1alpha1", "kind": "Service", "metadata": {"name": "catalog"},
           "spec": {"ports": [{"port": 50051, "protocol": "GRPC"}],
                    "endpoints": [{"address": "10.0.0.9", "port": 5000}]}}  # fmt: skip
    res, _ = Resources().apply([Document(svc, "catalog.yaml")])
    reg = Registry()
    inst = Instance(id="c1", namespace="default", service="catalog", version="v1",
                    address="127.0.0.1", port=22001, protocol="GRPC", ready=True)  # fmt: skip
    reg.put(inst, now=0.0)
    snap = _compiled(documents_for(res, reg, "default", "web"))
    cluster = snap.clusters["default/catalog:50051"]
    assert cluster.protocol == "GRPC"
    assert [(e.address, e.port) for e in cluster.endpoints] == [
        ("10.0.0.9", 5000),
        ("127.0.0.1", 22001),
    ]


def test_registry_expiry_and_restart() -> None:
    reg = Registry(expiry_s=15)
    a = Instance(id="a", namespace="default", service="orders", version="v1", address="h", port=1)
    assert reg.put(a, now=0.0) and not reg.put(a, now=1.0)
    assert reg.set_ready("a", True, now=2.0) and reg.endpoints("default", "orders")[0].id == "a"
    reg.touch("a", now=10.0)
    assert reg.expire(now=20.0) == []
    assert [i.id for i in reg.expire(now=25.1)] == ["a"] and not reg.services()
    reg.put(a, now=30.0)
    again = Registry(expiry_s=15)
    again.load(reg.to_json(), now=100.0)  # a restarted control plane keeps it for a while
    assert [i.id for i in again.instances.values()] == ["a"]
    assert [i.id for i in again.expire(now=115.5)] == ["a"]


def test_the_registry_on_disk_is_one_file_per_instance(tmp_path: Path) -> None:
    """Saved as it changes, removed as it goes; an id never becomes a path, and a torn
    file is dropped (its sidecar registers again) instead of stopping the control plane."""
    from control.store import RegistryDir

    disk = RegistryDir(tmp_path)
    a = Instance(id="../../etc/passwd", namespace="default", service="orders", version="v1",
                 address="127.0.0.1", port=21001, ready=True)  # fmt: skip
    b = dataclasses.replace(a, id="b", port=21002)
    disk.save(a.id, a.to_json())
    disk.save(b.id, b.to_json())
    assert {p.parent for p in (tmp_path / "registry").iterdir()} == {tmp_path / "registry"}
    disk.delete(b.id)
    (tmp_path / "registry" / "torn.json").write_text('{"id": "c", "namesp')
    (tmp_path / "registry" / "unfinished.tmp").write_text('{"id": "d"')  # killed mid-save
    reg = Registry()
    reg.load(RegistryDir(tmp_path).load(), now=0.0)
    assert list(reg.instances.values()) == [a]
    assert [p.suffix for p in (tmp_path / "registry").iterdir()] == [".json"]


def test_views_of_sidecars_gone_leave_the_snapshot_cache(tmp_path: Path) -> None:
    """Every distinct `calls` a sidecar says is a cache entry: entries of views no
    connected sidecar has are dropped, so sidecars naming ever new sets cannot grow it."""
    from control.state import ControlState, Subscriber

    state = ControlState(tmp_path, 0.0)
    inst = Instance(id="i1", namespace="default", service="web", version="",
                    address="127.0.0.1", port=1)  # fmt: skip
    sub = Subscriber(instance=inst, calls=frozenset({("default", "orders")}))
    state.connect(sub, 0.0)
    for i in range(200):
        state.snapshot(("default", "web", False, frozenset({("default", f"s{i}")})))
    assert len(state._snapshots) <= 2 * len(state.subscribers) + 17
    state.snapshot(sub.view)
    state.snapshot(("default", "web", False, frozenset({("default", "x")})))
    assert sub.view in state._snapshots


def test_instances_that_expire_together_leave_disk_in_one_change(tmp_path: Path) -> None:
    """A host that went silent takes its instances with it: one new generation for all of
    them (one push to the watches), and each one's file removed."""
    from control.state import ControlState, Subscriber

    state = ControlState(tmp_path, 0.0)
    for n in (1, 2, 3):
        inst = Instance(id=f"i{n}", namespace="default", service="web", version="",
                        address="127.0.0.1", port=n)  # fmt: skip
        state.connect(Subscriber(instance=inst), 0.0)
    state.heartbeat(state.subscribers["i3"], 100.0)
    assert len(list((tmp_path / "registry").iterdir())) == 3
    generation = state.generation
    assert sorted(i.id for i in state.expire(state.registry.expiry_s + 1.0)) == ["i1", "i2"]
    assert state.generation == generation + 1
    assert [i["id"] for i in state.registry_dir.load()] == ["i3"]
