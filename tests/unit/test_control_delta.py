"""Incremental pushes (control/delta.py) on real snapshots (control/snapshot.py): a sidecar
that applies each delta to what it has ends with what a whole snapshot would have given it,
through registrations, shifts, policies and removals; and what a change costs on the wire."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from control import api, delta
from control.registry import Instance, Registry
from control.snapshot import documents_for
from control.store import Resources
from sidecar.config.parse import Document
from tests.unit.test_control_snapshot import POLICY


def _split(v1: int) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "orders"},
        "spec": {"parentRefs": [{"kind": "Service", "name": "orders"}],
                 "rules": [{"backendRefs": [
                     {"name": "orders", "port": 80, "version": "v1", "weight": v1},
                     {"name": "orders", "port": 80, "version": "v2", "weight": 100 - v1}]}]},
    }  # fmt: skip


def _instance(i: int, service: str = "orders") -> Instance:
    return Instance(id=f"i{i}", namespace="default", service=service, version=f"v{i % 2 + 1}",
                    address="127.0.0.1", port=20000 + i, ready=True)  # fmt: skip


def _normal(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Endpoint order carries no meaning: compared as sorted."""
    out = copy.deepcopy(docs)
    for d in out:
        if d["kind"] == "Service":
            d["spec"]["endpoints"].sort(key=lambda e: sorted(e.items()))
    return out


def test_applying_each_delta_gives_what_a_whole_snapshot_would() -> None:
    rng = random.Random(7)
    reg, res = Registry(), Resources()
    have: dict[delta.Key, dict[str, Any]] = {}
    old: list[dict[str, Any]] = []
    for step in range(300):
        action = rng.randrange(6)
        if action <= 1:  # an instance joins (orders or web)
            reg.put(_instance(step, rng.choice(["orders", "web"])), now=0.0)
        elif action == 2 and reg.instances:  # one leaves
            reg.instances.pop(rng.choice(sorted(reg.instances)))
        elif action == 3:  # a shift
            res, _ = res.apply([Document(_split(rng.randrange(101)), "split")])
        elif action == 4:  # a policy comes or goes
            docs = [] if rng.random() < 0.5 else [Document(POLICY, "policy")]
            res, _ = res.apply([Document(_split(50), "split"), *docs])
        new = documents_for(res, reg, "default", "orders")
        change = delta.diff(old, new)
        if change is None:
            assert _normal(new) == _normal(old)
        else:
            delta.apply(have, api.decode(api.encode(change)))  # as it travels
        assert _normal(delta.ordered(have)) == _normal(new)
        old = new


def test_a_shift_in_a_large_mesh_sends_one_route_and_a_join_one_endpoint() -> None:
    reg, res = Registry(), Resources()
    for i in range(1000):
        reg.put(_instance(i), now=0.0)
    res, _ = res.apply([Document(_split(90), "split")])
    before = documents_for(res, reg, "default", "web")
    whole = len(api.encode({"snapshot": {"version": 1, "resources": before}}))

    shifted, _ = res.apply([Document(_split(10), "split")])
    after = documents_for(shifted, reg, "default", "web")
    change = delta.diff(before, after)
    assert change is not None and [delta.key(d) for d in change["upsert"]] == [
        ("HTTPRoute", "default", "orders")
    ]
    assert change["endpoints"] == change["remove"] == []
    assert len(api.encode(change)) < whole / 50

    reg.put(_instance(1000), now=0.0)
    joined = documents_for(shifted, reg, "default", "web")
    change = delta.diff(after, joined)
    assert change is not None and change["upsert"] == [] and len(change["endpoints"]) == 1
    assert change["endpoints"][0]["add"] == [
        {"address": "127.0.0.1", "port": 21000, "version": "v1"}
    ]
    assert delta.diff(joined, joined) is None


def test_a_patch_for_a_service_the_sidecar_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="default/orders"):
        delta.apply({}, {"endpoints": [{"key": ["Service", "default", "orders"], "add": [],
                                        "remove": []}]})  # fmt: skip
