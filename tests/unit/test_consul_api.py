"""The pure Consul core against answers in the shapes Consul documents (tests/fixtures/consul)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.discovery.consul import (
    ConsulError,
    Registration,
    mesh_services,
    next_index,
    parse_health,
    parse_kv,
    parse_url,
    txn_errors,
    txn_indexes,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "consul"


def fixture(name: str) -> object:
    return json.loads((FIXTURES / name).read_text())


def test_health_of_a_plain_service_uses_its_address_and_weight() -> None:
    [redis] = parse_health(fixture("health_service_redis.json"), "redis")
    assert (redis.address, redis.port, redis.weight) == ("10.1.10.12", 8000, 10)
    assert (redis.namespace, redis.version, redis.protocol) == ("default", "", "HTTP")


def test_health_of_weft_instances_versions_and_node_address_fallback() -> None:
    v1, v2 = parse_health(fixture("health_service_orders.json"), "orders")
    assert (v1.id, v1.address, v1.port, v1.version) == (
        "orders-10.0.1.7-15006",
        "10.0.1.7",
        15006,
        "v1",
    )
    # an empty Service.Address means the node's address
    assert (v2.address, v2.version, v2.weight, v2.protocol) == ("10.0.1.8", "v2", 3, "HTTP")


def test_health_zero_weight_is_left_out_and_malformed_is_an_error() -> None:
    body = fixture("health_service_redis.json")
    assert isinstance(body, list)
    body[0]["Service"]["Weights"]["Passing"] = 0
    assert parse_health(body, "redis") == []
    with pytest.raises(ConsulError, match="entry 0 is malformed"):
        parse_health([{"Service": {"ID": "x"}}], "redis")
    with pytest.raises(ConsulError, match="expected a JSON array"):
        parse_health({"not": "a list"}, "redis")


def test_catalog_lists_only_services_weft_registered() -> None:
    assert mesh_services(fixture("catalog_services.json")) == ["catalog", "orders"]


def test_kv_values_decode_and_null_is_empty() -> None:
    route, folder = parse_kv(fixture("kv_recurse.json"))
    assert json.loads(route.value) == {"apiVersion": "gateway.networking.k8s.io/v1"}
    assert route.modify_index == 200
    assert folder.value == b""
    with pytest.raises(ConsulError):
        parse_kv([{"Key": "k", "Value": "not base64!", "ModifyIndex": 1}])


def test_txn_answers() -> None:
    assert txn_indexes(fixture("txn_committed.json")) == {
        "weft/resources/HTTPRoute/default/orders": 215
    }
    assert "index is stale" in txn_errors(fixture("txn_rolled_back.json"))


@pytest.mark.parametrize(
    ("previous", "answered", "expected"),
    [
        (0, "42", 42),  # first answer
        (42, "42", 42),  # wait ended without change
        (42, "57", 57),
        (57, "12", 0),  # went backwards: start over
        (0, "0", 1),  # never 0 again after an answer (that would not block)
    ],
)
def test_blocking_index_rules(previous: int, answered: str, expected: int) -> None:
    assert next_index(previous, answered) == expected


def test_missing_index_header_is_an_error() -> None:
    with pytest.raises(ConsulError, match="X-Consul-Index"):
        next_index(3, None)


def test_url_and_environment() -> None:
    c = parse_url("consul://10.0.0.2:8500", {})
    assert (c.base_url, c.prefix, c.token, c.tls) == ("http://10.0.0.2:8500", "weft", "", False)
    c = parse_url(
        "consul:///mesh/prod",
        {
            "CONSUL_HTTP_ADDR": "https://consul:8501",
            "CONSUL_HTTP_TOKEN": "t0k",
            "CONSUL_CACERT": "/ca.pem",
        },
    )
    assert (c.base_url, c.prefix, c.token, c.ca_file) == (
        "https://consul:8501",
        "mesh/prod",
        "t0k",
        "/ca.pem",
    )
    assert c.headers() == {"X-Consul-Token": "t0k"}
    c = parse_url(
        "consul://h:1", {"CONSUL_HTTP_SSL": "true", "CONSUL_HTTP_TOKEN": "env"}, token="flag"
    )
    assert (c.base_url, c.token) == ("https://h:1", "flag")
    assert parse_url("consul://", {}).base_url == "http://127.0.0.1:8500"
    for bad in (
        "http://h:1",
        "consul://h",
        "consul://h:99999",
        "consul://u:p@h:1",
        "consul://h:1/a/../b",
    ):
        with pytest.raises(ValueError):
            parse_url(bad, {})


def test_token_file(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("from-file\n")
    assert (
        parse_url("consul://h:1", {"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "t")}).token
        == "from-file"
    )
    with pytest.raises(ValueError, match="CONSUL_HTTP_TOKEN_FILE"):
        parse_url("consul://h:1", {"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing")})


def test_registration_body() -> None:
    reg = Registration(
        service="orders",
        namespace="default",
        version="v2",
        protocol="HTTP",
        address="10.0.1.7",
        port=15006,
        check_url="http://10.0.1.7:15000/ready",
        identity="spiffe://weft.local/ns/default/svc/orders",
    )
    body = reg.body()
    assert body["ID"] == "orders-10.0.1.7-15006"
    assert (body["Name"], body["Address"], body["Port"], body["Tags"]) == (
        "orders",
        "10.0.1.7",
        15006,
        ["weft"],
    )
    assert body["Meta"] == {
        "version": "v2",
        "namespace": "default",
        "protocol": "HTTP",
        "spiffe_id": "spiffe://weft.local/ns/default/svc/orders",
    }
    check = body["Check"]
    assert (check["HTTP"], check["Interval"], check["Status"]) == (
        "http://10.0.1.7:15000/ready",
        "5s",
        "passing",
    )
    assert check["DeregisterCriticalServiceAfter"] == "1m"
    # what the registration says about an instance is what discovery reads back
    entry = {"Node": {"Address": "10.9.9.9"}, "Service": {**body, "Service": body["Name"]}}
    [inst] = parse_health([entry], "orders")
    assert (inst.address, inst.port, inst.version, inst.namespace) == (
        "10.0.1.7",
        15006,
        "v2",
        "default",
    )
