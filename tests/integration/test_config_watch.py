"""Config.Watch against a real control plane, with grpcio as the client: registration,
snapshots on every relevant change, ACK → ready, deregistration when the stream ends."""

from __future__ import annotations

import asyncio
import datetime
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ca import keystore, tokens
from ca.spiffe import SpiffeId
from control import api
from control.api import CONTROL_PLANE_HOST
from control.server import ControlPlane
from sidecar.config.parse import Document
from tests.support.plane import running_plane

ORDERS = SpiffeId("weft.local", "default", "orders")


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    with running_plane(tmp_path) as srv:
        yield srv


class _Watch:
    """A bidi stream fed from a queue (grpcio's sync API)."""

    def __init__(self, plane: ControlPlane) -> None:
        bundle = (plane.data_dir / "ca" / "root.pem").read_bytes()
        creds = grpc.ssl_channel_credentials(root_certificates=bundle)
        options = [("grpc.ssl_target_name_override", CONTROL_PLANE_HOST)]
        self.channel = grpc.secure_channel(f"127.0.0.1:{plane.port}", creds, options=options)
        self.out: queue.Queue[Any] = queue.Queue()
        call = self.channel.stream_stream(
            f"/{api.CONFIG_SERVICE}/Watch", request_serializer=api.encode,
            response_deserializer=api.decode,
        )  # fmt: skip
        self.replies = call(iter(self.out.get, None), timeout=20)

    def send(self, message: dict[str, Any]) -> None:
        self.out.put(message)

    def snapshot(self) -> dict[str, Any]:
        reply: dict[str, Any] = next(self.replies)["snapshot"]
        return reply

    def close(self) -> None:
        self.out.put(None)
        self.channel.close()


def _hello(
    plane: ControlPlane, identity: SpiffeId, service: str = "orders", use: str = "session",
    calls: Any = None,
) -> dict[str, Any]:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    session = tokens.create(keystore.token_key(plane.data_dir), identity, now=now,
                            ttl=datetime.timedelta(minutes=5), use=use)  # fmt: skip
    instance = {"id": "orders-1", "namespace": "default", "service": service, "version": "v1",
                "address": "127.0.0.1", "port": 25006}  # fmt: skip
    hello = {"session": session, "instance": instance}
    return {"hello": hello if calls is None else {**hello, "calls": calls}}


def _endpoints(snapshot: dict[str, Any], service: str) -> list[int]:
    for doc in snapshot["resources"]:
        if doc["kind"] == "Service" and doc["metadata"]["name"] == service:
            return [e["port"] for e in doc["spec"]["endpoints"]]
    return []


def test_register_ack_ready_push_and_deregister(plane: ControlPlane) -> None:
    watch = _Watch(plane)
    try:
        watch.send(_hello(plane, ORDERS))
        first = watch.snapshot()
        assert _endpoints(first, "orders") == []  # registered, not ready yet
        watch.send({"ack": {"version": first["version"]}})
        second = watch.snapshot()  # its own instance is now an endpoint
        assert _endpoints(second, "orders") == [25006] and second["version"] > first["version"]
        watch.send({"ack": {"version": second["version"]}})
        route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                 "metadata": {"name": "orders"},
                 "spec": {"parentRefs": [{"kind": "Service", "name": "orders"}],
                          "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]}}  # fmt: skip
        assert plane.state is not None and plane._loop is not None
        asyncio.run_coroutine_threadsafe(
            plane.state.apply([Document(route, "r.yaml")]), plane._loop
        ).result(10)
        third = watch.snapshot()
        assert any(d["kind"] == "HTTPRoute" for d in third["resources"])
        watch.send({"drain": {}})
        assert _endpoints(watch.snapshot(), "orders") == []  # draining: not an endpoint
        watch.send({"ack": {"version": third["version"]}})  # ready again
        assert _endpoints(watch.snapshot(), "orders") == [25006]
        web = _Watch(plane)
        try:
            hello = _hello(plane, SpiffeId("weft.local", "default", "web"), service="web")
            hello["hello"]["instance"]["id"] = "web-1"
            web.send(hello)
            assert _endpoints(web.snapshot(), "orders") == [25006]
            watch.close()  # the orders sidecar goes away: web is told at once
            assert _endpoints(web.snapshot(), "orders") == []
        finally:
            web.close()
    finally:
        watch.close()


def test_a_sidecar_that_says_what_it_calls_gets_only_that(plane: ControlPlane) -> None:
    """Scoped configuration: web calls orders only. It is sent orders (and its own
    service), not payments, and a change to payments alone is not pushed to it."""
    assert plane.state is not None and plane._loop is not None

    def apply(*docs: dict[str, Any]) -> None:
        assert plane.state is not None and plane._loop is not None
        change = plane.state.apply([Document(d, "r.yaml") for d in docs])
        asyncio.run_coroutine_threadsafe(change, plane._loop).result(10)

    def service(name: str, port: int) -> dict[str, Any]:
        return {"apiVersion": "weft.dev/v1alpha1", "kind": "Service", "metadata": {"name": name},
                "spec": {"ports": [{"port": 80}],
                         "endpoints": [{"address": "127.0.0.1", "port": port}]}}  # fmt: skip

    apply(service("orders", 21001), service("payments", 21002))
    web = _Watch(plane)
    try:
        hello = _hello(plane, SpiffeId("weft.local", "default", "web"), service="web",
                       calls=["orders", "default/orders"])  # fmt: skip
        hello["hello"]["instance"]["id"] = "web-1"
        web.send(hello)
        first = web.snapshot()
        names = {d["metadata"]["name"] for d in first["resources"] if d["kind"] == "Service"}
        assert names == {"orders", "web"}
        web.send({"ack": {"version": first["version"]}})
        second = web.snapshot()
        assert _endpoints(second, "web") == [25006]  # its own instance, now ready
        web.send({"ack": {"version": second["version"]}})
        apply(service("payments", 21003))  # not what web calls: nothing for it
        apply(service("orders", 21004))
        pushed = web.snapshot()
        assert _endpoints(pushed, "orders") == [21004]
        assert "payments" not in {d["metadata"]["name"] for d in pushed["resources"]}
    finally:
        web.close()


@pytest.mark.parametrize(
    ("make", "code", "reason"),
    [
        (lambda p: _hello(p, ORDERS, use="join"), grpc.StatusCode.UNAUTHENTICATED,
         "a join token cannot be used as a session token"),
        (lambda p: _hello(p, ORDERS, service="payments"), grpc.StatusCode.PERMISSION_DENIED,
         "cannot register an instance of default/payments"),
        (lambda p: {"hello": {}}, grpc.StatusCode.INVALID_ARGUMENT, "bad hello"),
        (lambda p: _hello(p, ORDERS, calls=["Payments"]), grpc.StatusCode.INVALID_ARGUMENT,
         "'Payments' is not a service name"),
        (lambda p: _hello(p, ORDERS, calls="payments"), grpc.StatusCode.INVALID_ARGUMENT,
         "calls: expected a list"),
        (lambda p: _hello(p, ORDERS, calls=["payments\n"]), grpc.StatusCode.INVALID_ARGUMENT,
         "is not a service name"),
    ],
)  # fmt: skip
def test_a_hello_that_proves_nothing_is_refused(
    plane: ControlPlane, make: Any, code: grpc.StatusCode, reason: str
) -> None:
    watch = _Watch(plane)
    try:
        watch.send(make(plane))
        with pytest.raises(grpc.RpcError) as err:
            watch.snapshot()
        assert err.value.code() == code and reason in str(err.value.details())
    finally:
        watch.close()


async def test_the_sidecar_client_speaks_grpc_over_its_own_http2(plane: ControlPlane) -> None:
    """sidecar/config/watch.py (no grpcio) against grpcio's server: snapshots, ACK, NACK."""
    import trio

    from sidecar.config.watch import ConfigWatch

    bundle = (plane.data_dir / "ca" / "root.pem").read_bytes()
    seen: list[tuple[int, list[int]]] = []
    got = trio.Event()

    async def apply(version: int, resources: list[dict[str, Any]]) -> str | None:
        seen.append((version, _endpoints({"resources": resources}, "orders")))
        if len(seen) == 2:
            got.set()
        return None

    watch = ConfigWatch(
        f"127.0.0.1:{plane.port}", lambda: bundle, lambda: _hello(plane, ORDERS), apply
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        with trio.fail_after(10):
            await got.wait()
        nursery.cancel_scope.cancel()
    assert seen[0][1] == [] and seen[1][1] == [25006]  # the ACK made the instance ready
    assert watch.connected and watch.failures == 0 and watch.refused == 0

    refused = ConfigWatch(
        f"127.0.0.1:{plane.port}", lambda: bundle,
        lambda: _hello(plane, ORDERS, use="join"), apply,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        ended = refused.ended
        nursery.start_soon(refused.run)
        with trio.fail_after(10):
            await ended.wait()
        nursery.cancel_scope.cancel()
    assert "a join token cannot be used as a session token" in refused.last_error
    assert refused.refused == refused.ends >= 1
