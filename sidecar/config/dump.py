"""A JSON-ready description of a snapshot for /config_dump (no secrets are ever in it)."""

from __future__ import annotations

from typing import Any

from sidecar.config.snapshot import Snapshot
from sidecar.http.router import CompiledMatch, PathTable


def describe(snap: Snapshot | None) -> dict[str, Any]:
    if snap is None:  # nothing configured yet
        return {"version": 0}
    listeners = []
    for key, router in sorted(snap.routers.items(), key=lambda kv: (kv[0].address, kv[0].port)):
        for lst in router.listeners():
            hosts: dict[str, list[dict[str, Any]]] = {}
            for name, table in lst.hosts.exact.items():
                hosts[name] = _rules(table)
            for suffix, table in lst.hosts.wildcard.items():
                hosts["*" + suffix] = _rules(table)
            if lst.hosts.any is not None:
                hosts["*"] = _rules(lst.hosts.any)
            listeners.append(
                {
                    "name": lst.name,
                    "address": key.address,
                    "port": key.port,
                    "hostname": lst.hostname,
                    "routes": hosts,
                }
            )
    clusters = {
        name: {
            "protocol": c.protocol,
            "lb_policy": c.lb_policy,
            "endpoints": [e.key + (f" ({e.version})" if e.version else "") for e in c.endpoints],
        }
        for name, c in sorted(snap.clusters.items())
    }
    doc: dict[str, Any] = {
        "version": snap.version,
        "sources": list(snap.sources),
        "listeners": listeners,
        "clusters": clusters,
        "warnings": list(snap.warnings),
    }
    mesh = snap.mesh
    if mesh is not None:  # how the outbound listener reads Host, and intercepted addresses
        doc["mesh_services"] = {
            "/".join(svc): {
                "ports": list(ports),
                "names": sorted(n for n, s in mesh.names.items() if s == svc),
                "addresses": sorted(a for a, s in mesh.virtual.items() if s == svc),
                "workloads": sorted(
                    f"{a}:{p}" for (a, p), d in mesh.workloads.items() if d[:2] == svc
                ),
            }
            for svc, ports in sorted(mesh.ports.items())
        }
    return doc


def _rules(table: PathTable) -> list[dict[str, Any]]:
    matches: list[CompiledMatch] = [m for b in table.exact.values() for m in b]
    matches += table.regex
    matches += [m for b in table.prefix.values() for m in b]
    return [
        {
            "route": m.action.route,
            "rule": m.action.rule,
            "rule_name": m.action.rule_name,
            "path": f"{m.path_type} {m.path_value}",
            "method": m.method,
            "headers": [h[0] for h in m.headers],
            "query": [q[0] for q in m.query],
            "backends": [
                {"cluster": b.cluster, "weight": b.weight, "invalid": b.reason or None}
                for b in m.action.backends
            ],
            "filters": [f.describe() for f in m.action.filters],
        }
        for m in matches
    ]
