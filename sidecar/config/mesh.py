"""A sidecar's outbound configuration from what the control plane sent (pure).

The control plane sends the mesh as resources (control/snapshot.py). Here they become what
`meshctl edge` would read for the sidecar's outbound listener: a Gateway on that listener;
each mesh route (parentRefs to a Service, the GAMMA pattern) attached to it with the
Service's names as hostnames (`orders`, `orders.shop`, `orders.shop.svc`,
`orders.shop.svc.cluster.local`); and, for a Service no route names, a default route to all
of its instances. Apps call `Host: orders` on the outbound port.
"""

from __future__ import annotations

import copy
from typing import Any

from sidecar.config.model import ListenerKey

GATEWAY_API = "gateway.networking.k8s.io/v1"
OUTBOUND = {"name": "outbound", "namespace": "weft-system"}
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")


def service_hostnames(name: str, namespace: str) -> list[str]:
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.cluster.local"]  # fmt: skip


def outbound_documents(pushed: list[dict[str, Any]], listener: ListenerKey) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{
        "apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": dict(OUTBOUND),
        "spec": {
            "addresses": [{"type": "IPAddress", "value": listener.address}],
            "listeners": [{"name": "outbound", "port": listener.port, "protocol": "HTTP",
                           "allowedRoutes": {"namespaces": {"from": "All"}}}],
        },
    }]  # fmt: skip
    routed: set[tuple[str, str]] = set()
    services: dict[tuple[str, str], int] = {}  # -> its first port
    for doc in pushed:
        kind, md = doc.get("kind"), doc.get("metadata", {})
        ns = md.get("namespace", "default")
        if kind == "Service":
            services[(ns, md["name"])] = int(doc["spec"]["ports"][0]["port"])
        parents = doc.get("spec", {}).get("parentRefs") or []
        if kind not in ROUTE_KINDS or not all(p.get("kind") == "Service" for p in parents):
            out.append(doc)  # not a mesh route: an edge Gateway's, say, stays as it is
            continue
        route = copy.deepcopy(doc)
        hostnames: list[str] = []
        for p in parents:
            target = (p.get("namespace", ns), p["name"])
            routed.add(target)
            hostnames += service_hostnames(target[1], target[0])
        route["spec"]["parentRefs"] = [dict(OUTBOUND)]
        route["spec"]["hostnames"] = hostnames
        out.append(route)
    for (ns, name), port in services.items():
        if (ns, name) not in routed:
            out.append({
                "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
                "metadata": {"name": f"weft-default-{name}", "namespace": ns},
                "spec": {"parentRefs": [dict(OUTBOUND)], "hostnames": service_hostnames(name, ns),
                         "rules": [{"backendRefs": [{"name": name, "port": port}]}]},
            })  # fmt: skip
    return out


def mesh_default_allow(pushed: list[dict[str, Any]], fallback: bool) -> bool:
    """The MeshConfig's defaultPolicy, if the control plane sent one."""
    for doc in pushed:
        if doc.get("kind") == "MeshConfig":
            return str(doc.get("spec", {}).get("defaultPolicy", "allow")) == "allow"
    return fallback
