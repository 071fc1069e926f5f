"""`meshctl shift orders v1=90 v2=10`: the traffic split as a GAMMA HTTPRoute (pure)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

GATEWAY_API = "gateway.networking.k8s.io/v1"


def parse_weights(pairs: Iterable[str]) -> dict[str, int]:
    """`["v1=90", "v2=10"]` → {"v1": 90, "v2": 10}; ValueError saying what is wrong."""
    out: dict[str, int] = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        if not sep or not version or not weight.isdigit():
            raise ValueError(f"{pair!r}: expected VERSION=WEIGHT with a whole number, e.g. v1=90")
        if version in out:
            raise ValueError(f"version {version} given twice")
        out[version] = int(weight)
    return out


def check_weights(service: str, weights: dict[str, int], known: set[str]) -> None:
    if not weights:
        raise ValueError("give at least one VERSION=WEIGHT")
    unknown = sorted(set(weights) - known)
    if unknown:
        have = ", ".join(sorted(known)) or "none registered"
        raise ValueError(
            f"{service} has no instances of version {', '.join(unknown)} (versions: {have})"
        )
    total = sum(weights.values())
    if total != 100:
        raise ValueError(f"weights must add up to 100, these add up to {total}")


def split_route(
    existing: dict[str, Any] | None, namespace: str, service: str, weights: dict[str, int]
) -> dict[str, Any]:
    """The route named after `service` with every backendRef to it replaced by the split
    (a new route with one rule when there is none)."""

    def refs(port: int) -> list[dict[str, Any]]:
        return [
            {"name": service, "port": port, "version": v, "weight": w} for v, w in weights.items()
        ]

    if existing is None:
        return {
            "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
            "metadata": {"name": service, "namespace": namespace},
            "spec": {"parentRefs": [{"kind": "Service", "name": service}],
                     "rules": [{"backendRefs": refs(80)}]},
        }  # fmt: skip
    route = copy.deepcopy(existing)
    route.pop("status", None)
    rules = route.setdefault("spec", {}).setdefault("rules", [])
    replaced = False
    for rule in rules:
        mine = [r for r in rule.get("backendRefs", []) if _targets(r, namespace, service)]
        if mine:
            others = [r for r in rule["backendRefs"] if not _targets(r, namespace, service)]
            rule["backendRefs"] = others + refs(int(mine[0].get("port", 80)))
            replaced = True
    if not replaced:
        rules.append({"backendRefs": refs(80)})
    return route


def _targets(ref: dict[str, Any], namespace: str, service: str) -> bool:
    return (
        ref.get("name") == service
        and ref.get("namespace", namespace) == namespace
        and ref.get("kind", "Service") == "Service"
    )
