"""What one sidecar is sent (pure): the mesh as documents in the resource vocabulary.

For the workload `namespace/service`: a Weft Service per mesh service (its declared ports,
else port 80 with the protocol its instances report; endpoints: the ready instances'
inbound ports, plus static ones a declared Service lists), the mesh routes (those whose
parents are Services, the GAMMA pattern), the AuthorizationPolicies that target this
workload, the BackendTrafficPolicies and the MeshConfig. The sidecar composes its outbound
listener from them (sidecar/config/mesh.py) and compiles them like any configuration; an
edge gateway in the mesh gets the Gateways and their routes too, so a snapshot it cannot
use is NACKed with the same errors a file would get.
"""

from __future__ import annotations

from typing import Any

from control.registry import Registry
from control.store import Resources
from sidecar.config.parse import APP_PROTOCOLS

WEFT_API = "weft.dev/v1alpha1"
MESH_ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TCPRoute")


def is_mesh_route(doc: dict[str, Any]) -> bool:
    parents = doc.get("spec", {}).get("parentRefs") or []
    return bool(parents) and all(p.get("kind") == "Service" for p in parents)


EDGE_KINDS = (
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "TCPRoute",
    "TLSRoute",
    "Secret",
    "SecurityPolicy",
    "RequestValidation",
    "ClientTrafficPolicy",
    "ConfigMap",
    "Ingress",
    "IngressClass",
)


ServiceKey = tuple[str, str]  # (namespace, name)


def documents_for(
    resources: Resources,
    registry: Registry,
    namespace: str,
    service: str,
    *,
    gateway: bool = False,
    calls: frozenset[ServiceKey] | None = None,
) -> list[dict[str, Any]]:
    """`gateway`: the workload is an edge gateway in the mesh, which also gets the Gateways,
    the routes attached to them and the Secrets and ReferenceGrants they use. `calls`: the
    services a sidecar said it calls (None: not said, every service); see `scope`."""
    declared = {
        (ns, name): d for (kind, ns, name), d in resources.docs.items() if kind == "Service"
    }
    wanted = None if calls is None or gateway else scope(resources, calls, namespace, service)
    out: list[dict[str, Any]] = []
    for ns, name in sorted(registry.services() | set(declared)):
        if wanted is not None and (ns, name) not in wanted:
            continue
        instances = registry.endpoints(ns, name)
        spec = declared[(ns, name)].get("spec", {}) if (ns, name) in declared else {}
        # The protocol the service's instances declared, ready or not yet: a cluster made
        # for the wrong one would speak HTTP/1.1 to a gRPC service until it is replaced.
        registered = sorted(i.protocol for i in registry.instances.values()
                            if (i.namespace, i.service) == (ns, name))  # fmt: skip
        protocol = registered[0] if registered else "HTTP"
        ports = _ports(declared.get((ns, name)), protocol) or [{"port": 80, "protocol": protocol}]
        endpoints = [*spec.get("endpoints", [])]
        endpoints += [
            {"address": i.address, "port": i.port, "version": i.version}
            | ({"weight": i.weight} if i.weight != 1 else {})
            | ({"appPort": i.app_port} if 0 < i.app_port < 65536 else {})
            for i in instances
        ]
        addresses = _addresses(spec)
        out.append({
            "apiVersion": WEFT_API, "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": ports, "endpoints": endpoints}
            | ({"addresses": addresses} if addresses else {}),
        })  # fmt: skip
    out.extend(
        doc
        for (kind, _, _), doc in sorted(resources.docs.items())
        if (
            kind in MESH_ROUTE_KINDS
            and is_mesh_route(doc)
            and (wanted is None or bool(_parents(doc) & wanted))
        )
        or (kind == "AuthorizationPolicy" and _targets(doc, namespace, service))
        or kind in ("MeshConfig", "BackendTrafficPolicy", "ReferenceGrant")
        or (gateway and kind in EDGE_KINDS and not is_mesh_route(doc))
    )
    return out


def _addresses(spec: dict[str, Any]) -> list[str]:
    """A declared Service's virtual addresses: a Weft Service's `addresses`, a Kubernetes
    Service's cluster IPs (not "None": a headless Service has none)."""
    found = [*(spec.get("addresses") or ()), *(spec.get("clusterIPs") or ()),
             spec.get("clusterIP") or ""]  # fmt: skip
    return list(dict.fromkeys(str(a) for a in found if a and a != "None"))


def scope(
    resources: Resources, calls: frozenset[ServiceKey], namespace: str, service: str
) -> set[ServiceKey]:
    """The services a sidecar that calls `calls` needs, as Istio's `Sidecar` egress hosts
    and Consul's declared upstreams scope a proxy's configuration: those, its own, and
    every service a mesh route of one of them sends to (a split's other versions, a
    mirror). A service outside it is unknown to the sidecar (404 no route), so its
    snapshot and its pushes stay the size of what it calls, not of the mesh."""
    routes = [
        (_parents(doc), _backends(doc.get("spec", {}).get("rules") or [], _namespace(doc)))
        for (kind, _, _), doc in resources.docs.items()
        if kind in MESH_ROUTE_KINDS and is_mesh_route(doc)
    ]
    wanted = set(calls) | {(namespace, service)}
    while True:  # until every route it gets has its backends (a route on a backend too)
        more = set().union(*(to for parents, to in routes if parents & wanted)) - wanted
        if not more:
            return wanted
        wanted |= more


def _namespace(doc: dict[str, Any]) -> str:
    return str(doc.get("metadata", {}).get("namespace", "default"))


def _parents(route: dict[str, Any]) -> set[ServiceKey]:
    ns = _namespace(route)
    refs = route.get("spec", {}).get("parentRefs") or []
    return {(p.get("namespace", ns), p.get("name", "")) for p in refs}


def _backends(node: Any, ns: str) -> set[ServiceKey]:
    """Every Service a route's rules name (`backendRef`s and `backendRefs`, in filters too)."""
    out: set[ServiceKey] = set()
    if isinstance(node, list):
        for item in node:
            out |= _backends(item, ns)
    elif isinstance(node, dict):
        for key, value in node.items():
            refs = [value] if key == "backendRef" else value if key == "backendRefs" else None
            for ref in refs if isinstance(refs, list) else ():
                if isinstance(ref, dict) and ref.get("kind", "Service") == "Service":
                    out.add((ref.get("namespace", ns), str(ref.get("name", ""))))
            out |= _backends(value, ns)
    return out


def _ports(doc: dict[str, Any] | None, registered: str) -> list[dict[str, Any]]:
    """A declared Service's ports in the Weft vocabulary: a Kubernetes v1 Service's
    `appProtocol` read as its protocol, as `meshctl edge` reads it; a port without one
    speaks what the service's instances registered with."""
    if doc is None:
        return []
    ports = doc.get("spec", {}).get("ports") or []
    if str(doc.get("apiVersion", "")).startswith("weft.dev/"):
        return list(ports)
    out = []
    for p in ports:
        protocol = APP_PROTOCOLS.get(p.get("appProtocol", ""), registered)
        out.append({"port": int(p["port"]), "protocol": protocol})
        if p.get("name"):
            out[-1]["name"] = p["name"]
    return out


def _targets(doc: dict[str, Any], namespace: str, service: str) -> bool:
    ref = doc.get("spec", {}).get("targetRef", {})
    ns = doc.get("metadata", {}).get("namespace", "default")
    return bool(ref.get("name") == service and ns == namespace)
