"""A sidecar's outbound configuration from what the control plane sent (pure).

Theory of operation. The control plane sends the mesh as resources (control/snapshot.py).
Here they become what `meshctl edge` would read for the sidecar's outbound listener: one
Gateway on that listener, and the mesh routes (parentRefs to a Service: the GAMMA pattern)
attached to it. A mesh route applies to a *destination* — a Service's port — not to a host
name, so each destination gets a synthetic hostname (`destination_host`) and the routes
carry the hostnames of the destinations they apply to. A request's Host is read as the
destination it names (`MeshNames.destination`) before routing; the route table never sees
a caller's own spelling.

Which routes apply, per the GAMMA rules, for callers in this sidecar's namespace:
- a producer route (in the Service's namespace) applies to every caller; a consumer route
  (in another namespace) only to callers in its own namespace, and where one exists for a
  destination it replaces the producer routes there;
- a parentRef with `port` applies to that Service port only, without it to every port;
- a destination no route applies to gets a default route to the Service's same port.

Host names resolve as Kubernetes DNS resolves them: `orders` in the caller's namespace
only; `orders.shop`, `orders.shop.svc` and `orders.shop.svc.cluster.local` in any. A Host
without a port names the Service's port 80, or its first port when it has no port 80.

An intercepted connection (transparent interception) names no host: its destination is
the address the app dialled (`MeshNames.by_address`). A Service's virtual addresses
(`spec.addresses`, a Kubernetes Service's cluster IPs) at one of its ports, and an
instance's own address at its app's port (as DNS names a compose service or a headless
Service) are mesh destinations; any other address is outside the mesh.

A consumer route may send to its parent Service in another namespace without a
ReferenceGrant (the caller may call that Service anyway); other cross-namespace backends
need one, as on a Gateway.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.model import ListenerKey
from sidecar.http.router import normalize_host

GATEWAY_API = "gateway.networking.k8s.io/v1"
OUTBOUND = {"name": "outbound", "namespace": "weft-system"}
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
DEFAULT_PORT = 80  # what a Host without a port names, when the Service has it
MESH_SUFFIX = "mesh.weft.internal"

Destination = tuple[str, str, int]  # (namespace, service, port)


def service_hostnames(name: str, namespace: str) -> list[str]:
    return [f"{name}.{namespace}", f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.cluster.local"]  # fmt: skip


def destination_host(dest: Destination) -> str:
    """The synthetic route hostname of one Service port."""
    ns, name, port = dest
    return f"{name}.{ns}.p{port}.{MESH_SUFFIX}"


def default_port(ports: tuple[int, ...]) -> int:
    """The port a name without one reaches: 80 when the Service has it, else its first."""
    return DEFAULT_PORT if DEFAULT_PORT in ports else ports[0]


@dataclass(frozen=True, slots=True)
class MeshNames:
    """How the outbound listener reads a request's Host: the destination it names."""

    listener: ListenerKey
    names: Mapping[str, tuple[str, str]]  # host name -> (namespace, service)
    ports: Mapping[tuple[str, str], tuple[int, ...]]  # a Service's ports, in order
    protocols: Mapping[Destination, str]  # HTTP | HTTP2 | GRPC | TCP
    # For intercepted connections (their destination is an address, not a Host):
    virtual: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # VIP -> Service
    workloads: Mapping[tuple[str, int], Destination] = field(default_factory=dict)

    def by_address(self, address: str, port: int) -> Destination | None:
        """The Service port an intercepted connection to `address:port` is for: a
        Service's virtual address at one of its ports, or an instance's own address at its
        app's port (the Service's default port) or at a port the Service declares."""
        svc = self.virtual.get(address)
        if svc is not None:
            return (*svc, port) if port in self.ports[svc] else None
        return self.workloads.get((address, port))

    def destination(self, authority: str) -> Destination | None:
        host = normalize_host(authority)
        svc = self.names.get(host)
        if svc is None:
            return None
        ports = self.ports[svc]
        _, colon, given = authority.rpartition(":")  # a service name: no IPv6 brackets
        if not colon:
            port = default_port(ports)
        elif given.isdigit() and int(given) in ports:
            port = int(given)
        else:
            return None
        return (svc[0], svc[1], port)

    def route_host(self, authority: str) -> str:
        """What the route table is searched with ("" matches no route)."""
        dest = self.destination(authority)
        return destination_host(dest) if dest is not None else ""


@dataclass(frozen=True, slots=True)
class Outbound:
    """The outbound listener's documents and how it reads Host."""

    documents: list[dict[str, Any]]
    names: MeshNames


def outbound_config(
    pushed: list[dict[str, Any]], listener: ListenerKey, caller_namespace: str
) -> Outbound:
    out: list[dict[str, Any]] = [{
        "apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": dict(OUTBOUND),
        "spec": {
            "addresses": [{"type": "IPAddress", "value": listener.address}],
            "listeners": [{"name": "outbound", "port": listener.port, "protocol": "HTTP",
                           "allowedRoutes": {"namespaces": {"from": "All"}}}],
        },
    }]  # fmt: skip
    ports: dict[tuple[str, str], tuple[int, ...]] = {}
    protocols: dict[Destination, str] = {}
    virtual: dict[str, tuple[str, str]] = {}
    workloads: dict[tuple[str, int], Destination] = {}
    for doc in pushed:
        if doc.get("kind") == "Service":
            md, spec = doc.get("metadata", {}), doc["spec"]
            ns, name = md.get("namespace", "default"), md["name"]
            svc_ports = ports[(ns, name)] = tuple(int(p["port"]) for p in spec["ports"])
            for p in spec["ports"]:
                protocols[(ns, name, int(p["port"]))] = str(p.get("protocol", "HTTP"))
            for address in spec.get("addresses") or ():
                virtual.setdefault(str(address), (ns, name))
            for ep in spec.get("endpoints") or ():
                address = str(ep.get("address", ""))
                if isinstance(ep.get("appPort"), int):  # an instance's (sidecars report it)
                    dest = (ns, name, default_port(svc_ports))
                    workloads.setdefault((address, int(ep["appPort"])), dest)
                    for port in svc_ports:
                        workloads.setdefault((address, port), (ns, name, port))
    # destination -> (consumer routes, producer routes), each route by its index in `routes`
    routes: list[dict[str, Any]] = []
    attached: dict[Destination, tuple[list[int], list[int]]] = {}
    for doc in pushed:
        kind = doc.get("kind")
        parents = doc.get("spec", {}).get("parentRefs") or []
        if kind not in ROUTE_KINDS or not all(p.get("kind") == "Service" for p in parents):
            out.append(doc)  # not a mesh route: an edge Gateway's, say, stays as it is
            continue
        route_ns = doc.get("metadata", {}).get("namespace", "default")
        index = len(routes)
        routes.append(doc)
        for p in parents:
            svc = (p.get("namespace", route_ns), p["name"])
            consumer = svc[0] != route_ns
            if (consumer and route_ns != caller_namespace) or svc not in ports:
                continue
            for port in ports[svc] if p.get("port") is None else (int(p["port"]),):
                if port in ports[svc]:
                    lists = attached.setdefault((*svc, port), ([], []))
                    lists[0 if consumer else 1].append(index)
    hostnames: dict[int, list[str]] = {}
    for dest, (consumers, producers) in attached.items():
        for index in consumers or producers:
            hostnames.setdefault(index, []).append(destination_host(dest))
    for index, doc in enumerate(routes):
        if index in hostnames:
            out.extend(_attach(doc, hostnames[index]))
    for (ns, name), svc_ports in ports.items():
        for port in svc_ports:
            if (ns, name, port) not in attached:
                out.append({
                    "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
                    "metadata": {"name": f"weft-default-{name}-{port}", "namespace": ns},
                    "spec": {"parentRefs": [dict(OUTBOUND)],
                             "hostnames": [destination_host((ns, name, port))],
                             "rules": [{"backendRefs": [{"name": name, "port": port}]}]},
                })  # fmt: skip
    names: dict[str, tuple[str, str]] = {}
    for ns, name in ports:
        for host in service_hostnames(name, ns):
            names[host] = (ns, name)
        if ns == caller_namespace:
            names[name] = (ns, name)
    return Outbound(out, MeshNames(listener, names, ports, protocols, virtual, workloads))


def _attach(doc: dict[str, Any], hostnames: list[str]) -> list[dict[str, Any]]:
    """The route on the outbound listener, and the grant a consumer route's backendRef to
    its own parent Service needs."""
    route = copy.deepcopy(doc)
    route_ns = route.get("metadata", {}).get("namespace", "default")
    parents = {(p.get("namespace", route_ns), p["name"]) for p in route["spec"]["parentRefs"]}
    route["spec"]["parentRefs"] = [dict(OUTBOUND)]
    route["spec"]["hostnames"] = hostnames
    grants: dict[tuple[str, str], dict[str, Any]] = {}
    for rule in route["spec"].get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            target = (ref.get("namespace", route_ns), ref.get("name", ""))
            service = ref.get("kind", "Service") == "Service"
            if service and target[0] != route_ns and target in parents:
                grants[target] = {
                    "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                    "metadata": {"name": f"weft-{route_ns}-{route['metadata']['name']}-{target[1]}",
                                 "namespace": target[0]},
                    "spec": {"from": [{"group": "gateway.networking.k8s.io",
                                       "kind": route["kind"], "namespace": route_ns}],
                             "to": [{"group": "", "kind": "Service", "name": target[1]}]},
                }  # fmt: skip
    return [route, *grants.values()]


def mesh_unknown(authority: str) -> bytes:
    """The 404 body for a Host that names no mesh Service port."""
    text = (
        f"no mesh service answers to {authority!r}: a short name reaches the caller's own "
        "namespace only (use name.namespace for another), and a port must be one the "
        "Service declares\n"
    )
    return text.encode("latin-1", "replace")


def mesh_default_allow(pushed: list[dict[str, Any]], fallback: bool) -> bool:
    """The MeshConfig's defaultPolicy, if the control plane sent one."""
    for doc in pushed:
        if doc.get("kind") == "MeshConfig":
            return str(doc.get("spec", {}).get("defaultPolicy", "allow")) == "allow"
    return fallback
