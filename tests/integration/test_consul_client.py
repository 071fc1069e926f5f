"""The real Consul client code against the Consul HTTP API test double, over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from sidecar.discovery.consul import (
    CasConflict,
    ConsulError,
    Registration,
    parse_health,
    parse_url,
    txn_delete,
    txn_set,
)
from sidecar.discovery.consul_client import ConsulClient
from tests.support.consul_double import ConsulDouble
from tests.support.pki import TestCA
from tests.unit.test_consul_api import fixture


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble().serving() as double:
        yield double


def client(double: ConsulDouble, **kw: str) -> ConsulClient:
    return ConsulClient(parse_url(double.url, {}, **kw), wait="1s")


def registration(port: int, check_url: str, version: str = "v1") -> Registration:
    return Registration(
        service="orders",
        namespace="default",
        version=version,
        protocol="HTTP",
        address="127.0.0.1",
        port=port,
        check_url=check_url,
    )


async def test_the_double_answers_in_the_documented_shape(consul: ConsulDouble) -> None:
    c = client(consul)
    reg = registration(15006, f"http://127.0.0.1:{consul.port}/v1/agent/service/x")
    await c.register(reg)
    _, body = await c.blocking_get("/v1/health/service/orders", {"passing": "true"}, 0)
    recorded = fixture("health_service_orders.json")
    assert isinstance(recorded, list)
    for part in ("Node", "Service"):
        assert set(recorded[0][part]) <= set(body[0][part]) | {"Proxy"}, part
    assert set(recorded[0]["Checks"][1]) == set(body[0]["Checks"][1])
    await c.aclose()


async def test_register_watch_and_deregister(consul: ConsulDouble) -> None:
    c = client(consul)
    seen: list[list[tuple[str, int]]] = []
    changed = trio.Event()

    async def watch() -> None:
        nonlocal changed
        async for _, body in c.watch("/v1/health/service/orders", {"passing": "true"}):
            seen.append([(i.version, i.port) for i in parse_health(body, "orders")])
            changed.set()
            changed = trio.Event()

    ok_url = f"http://127.0.0.1:{consul.port}/v1/catalog/services"  # answers 200
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            while not seen:
                await changed.wait()
            assert seen[-1] == []
            await c.register(registration(15006, ok_url))
            await c.register(registration(15007, ok_url, "v2"))
            while len(seen[-1]) < 2:
                await changed.wait()
            assert seen[-1] == [("v1", 15006), ("v2", 15007)]
            assert await c.registered("orders-127.0.0.1-15006")
            await c.deregister("orders-127.0.0.1-15006")
            while len(seen[-1]) != 1:
                await changed.wait()
            assert seen[-1] == [("v2", 15007)]
            assert not await c.registered("orders-127.0.0.1-15006")
            nursery.cancel_scope.cancel()
    # every request after the first carried the index to block on
    gets = [p for m, p in consul.requests if p.startswith("/v1/health/service/orders")]
    assert "index=" not in gets[0] and all("index=" in p and "wait=1s" in p for p in gets[1:])
    await c.aclose()


async def test_a_failing_check_takes_the_instance_out(consul: ConsulDouble) -> None:
    c = client(consul)
    reg = Registration(
        service="orders",
        namespace="default",
        version="v1",
        protocol="HTTP",
        address="127.0.0.1",
        port=15006,
        check_url=f"http://127.0.0.1:{consul.port}/nowhere",
        check_interval="100ms",
    )
    await c.register(reg)
    assert len(consul.passing("orders")) == 1  # registered passing (the sidecar is ready)
    with trio.fail_after(10):
        await trio.to_thread.run_sync(
            consul.wait_for, lambda d: not d._health("orders", passing=True)
        )
    await c.aclose()


async def test_index_going_backwards_starts_over(consul: ConsulDouble) -> None:
    c = client(consul)
    await c.register(registration(15006, "http://127.0.0.1:1/"))
    answers: list[int] = []
    got = trio.Event()

    async def watch() -> None:
        nonlocal got
        async for _, body in c.watch("/v1/health/service/orders", {}):
            answers.append(len(body))
            got.set()
            got = trio.Event()

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await got.wait()
            consul.rewind("services", 3)  # a restore: the index is now far below ours
            await c.register(registration(15007, "http://127.0.0.1:1/"))  # index 4
            await got.wait()  # when the wait ran out, with an index below the one sent
            assert answers == [1, 2]

            def reset(d: ConsulDouble) -> bool:  # the next query starts over without an index
                health = [p for _, p in d.requests if p.startswith("/v1/health/service/")]
                return sum("index=" not in p for p in health) == 2

            await trio.to_thread.run_sync(consul.wait_for, reset)
            nursery.cancel_scope.cancel()
    await c.aclose()


async def test_unchanged_answers_do_not_spin(consul: ConsulDouble) -> None:
    """A blocking query answered at once each time (no change) is rate-limited."""
    consul.instant = True
    c = client(consul)
    yielded = 0
    with trio.move_on_after(0.5):
        async for _ in c.watch("/v1/catalog/services", {}):
            yielded += 1
    assert yielded == 1  # the answer never changed
    assert consul.count("/v1/catalog/services") <= 0.5 / 0.05 + 2
    await c.aclose()


async def test_consul_down_keeps_the_last_answer_and_backs_off(consul: ConsulDouble) -> None:
    c = client(consul)
    bodies: list[object] = []
    first, second = trio.Event(), trio.Event()

    async def watch() -> None:
        async for _, body in c.watch("/v1/catalog/services", {}):
            bodies.append(body)
            (second if first.is_set() else first).set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await first.wait()
            consul.fail_with(500)
            await trio.to_thread.run_sync(consul.wait_for, lambda d: d.count("/v1/catalog") >= 3)
            consul.fail_with(0)
            await c.register(registration(15006, "http://127.0.0.1:1/"))
            await second.wait()
            nursery.cancel_scope.cancel()
    assert bodies[0] == {"consul": []} and "orders" in bodies[1]  # nothing yielded while down


async def test_acl_token_is_sent_and_required() -> None:
    with ConsulDouble(token="s3cret").serving() as consul:
        bad = client(consul)
        with pytest.raises(ConsulError, match="HTTP 403"):
            await bad.register(registration(15006, "http://127.0.0.1:1/"))
        good = client(consul, token="s3cret")
        await good.register(registration(15006, "http://127.0.0.1:1/"))
        assert await good.registered("orders-127.0.0.1-15006")
        await bad.aclose()
        await good.aclose()


async def test_registration_is_checked_as_consul_does(consul: ConsulDouble) -> None:
    c = client(consul)
    with pytest.raises(ConsulError, match="HTTP 400"):
        await c.call("PUT", "/v1/agent/service/register", body={"Name": "x", "Bogus": 1})
    await c.aclose()


async def test_kv_transactions_check_and_set(consul: ConsulDouble) -> None:
    c = client(consul)
    indexes = await c.txn([txn_set("weft/resources/a", b'{"a": 1}', 0)])
    idx = indexes["weft/resources/a"]
    with pytest.raises(CasConflict, match="index is stale"):
        await c.txn([txn_set("weft/resources/a", b"{}", 0)])  # exists already
    with pytest.raises(CasConflict):
        await c.txn(
            [txn_set("weft/resources/b", b"{}", 0), txn_set("weft/resources/a", b"{}", idx - 1)]
        )
    _, entries = await c.kv_list("weft/resources")
    assert [(e.key, json.loads(e.value)) for e in entries] == [("weft/resources/a", {"a": 1})]
    await c.txn([txn_delete("weft/resources/a", idx)])
    _, entries = await c.kv_list("weft/resources")
    assert entries == []
    await c.aclose()


async def test_unreachable_consul_is_a_clear_error() -> None:
    c = ConsulClient(parse_url("consul://127.0.0.1:1", {}), timeout_s=2)
    with pytest.raises(ConsulError, match=r"Consul at http://127.0.0.1:1: ConnectError"):
        await c.register(registration(15006, "http://127.0.0.1:1/"))
    await c.aclose()


async def test_tls_to_consul_with_consul_environment_variables(tmp_path: Path) -> None:
    """CONSUL_CACERT and CONSUL_TLS_SERVER_NAME, as Consul's CLI reads them."""
    ca = TestCA()
    cert, key = ca.issue("consul.test").write(tmp_path, "consul")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    with ConsulDouble(tls=server).serving() as consul:
        env = {"CONSUL_CACERT": str(ca.write(tmp_path / "ca.pem")),
               "CONSUL_TLS_SERVER_NAME": "consul.test"}  # fmt: skip
        good = ConsulClient(parse_url(consul.url, env))
        await good.register(registration(15006, "http://127.0.0.1:1/"))
        assert await good.registered("orders-127.0.0.1-15006")
        await good.aclose()
        untrusted = ConsulClient(parse_url(consul.url, {"CONSUL_TLS_SERVER_NAME": "consul.test"}))
        with pytest.raises(ConsulError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.registered("orders-127.0.0.1-15006")
        await untrusted.aclose()
        wrong_name = ConsulClient(parse_url(consul.url, {"CONSUL_CACERT": env["CONSUL_CACERT"]}))
        with pytest.raises(ConsulError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            await wrong_name.registered("orders-127.0.0.1-15006")
        await wrong_name.aclose()
