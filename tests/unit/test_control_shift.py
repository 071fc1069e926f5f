"""The split `meshctl shift` writes (pure)."""

from __future__ import annotations

import pytest

from control.shift import check_weights, parse_weights, split_route


def test_weights_are_parsed_and_checked() -> None:
    assert parse_weights(["v1=90", "v2=10"]) == {"v1": 90, "v2": 10}
    for bad, why in [(["v1"], "expected VERSION=WEIGHT"), (["v1=x"], "whole number"),
                     (["v1=50", "v1=50"], "given twice"), (["v1=-1"], "whole number")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            parse_weights(bad)
    check_weights("orders", {"v1": 100, "v2": 0}, {"v1", "v2"})
    with pytest.raises(ValueError, match="add up to 99"):
        check_weights("orders", {"v1": 99}, {"v1"})
    with pytest.raises(
        ValueError, match=r"no instances of version v9 \(versions: none registered\)"
    ):
        check_weights("orders", {"v9": 100}, set())


def test_a_new_split_route_and_an_existing_route_keeping_its_matches() -> None:
    new = split_route(None, "default", "orders", {"v1": 90, "v2": 10})
    assert new["spec"]["parentRefs"] == [{"kind": "Service", "name": "orders"}]
    assert [(r["version"], r["weight"]) for r in new["spec"]["rules"][0]["backendRefs"]] == [
        ("v1", 90), ("v2", 10)]  # fmt: skip
    existing = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "orders"},
        "spec": {"parentRefs": [{"kind": "Service", "name": "orders"}], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
             "backendRefs": [{"name": "orders", "port": 8080}]},
            {"backendRefs": [{"name": "legacy", "port": 80}]}]},
    }  # fmt: skip
    out = split_route(existing, "default", "orders", {"v2": 100})
    rules = out["spec"]["rules"]
    assert rules[0]["matches"] == existing["spec"]["rules"][0]["matches"]  # type: ignore[index]
    assert rules[0]["backendRefs"] == [
        {"name": "orders", "port": 8080, "version": "v2", "weight": 100}
    ]
    assert rules[1]["backendRefs"] == [{"name": "legacy", "port": 80}]
    assert existing["spec"]["rules"][0]["backendRefs"] == [{"name": "orders", "port": 8080}]  # type: ignore[index]
