"""gRPC streams across graceful stops: a backend restarted under streaming load (it sends
GOAWAY and finishes its streams) and a callee's sidecar drained mid-stream lose no message,
through the edge and through a sidecar pair; a client's cancel is not an error."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import trio
import trio.testing

from control.server import ControlPlane
from sidecar.modes.sidecar import SidecarServer
from tests.support.edge import start_edge
from tests.support.plane import mesh_sidecar, running_plane

SERVICE = "weft.test.Stream"
METHOD = f"/{SERVICE}/Count"
MESSAGES = 5
STREAMS = 4

EDGE = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: h, port: 80, protocol: HTTP}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: counter}}
spec:
  ports: [{{port: 50051, protocol: GRPC}}]
  endpoints: [{{address: 127.0.0.1, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: counter}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: counter, port: 50051}}]}}]
"""
# What a gRPC client does while servers restart: try again on UNAVAILABLE (a server that
# is stopping refuses calls that reach it after its GOAWAY was sent).
RETRY_UNAVAILABLE = (
    '{"methodConfig": [{"name": [{"service": "weft.test.Stream"}], "retryPolicy": {'
    '"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "0.5s", '
    '"backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}'
)


class Counter:
    """Streams `n` messages: the first at once, the rest once `go` is set (so a test can
    stop the server between them), unless the client cancels."""

    def __init__(self, go: threading.Event) -> None:
        self.go = go
        self.cancelled = threading.Event()

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        context.add_callback(self.cancelled.set)
        yield b"0"
        if not self.go.wait(20):
            return
        for i in range(1, int(request)):
            yield b"%d" % i

    def echo(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        context.add_callback(self.cancelled.set)
        yield from requests


@contextlib.contextmanager
def _server(port: int, go: threading.Event) -> Iterator[tuple[grpc.Server, int, Counter]]:
    counter = Counter(go)
    handlers = {
        "Count": grpc.unary_stream_rpc_method_handler(counter.count),
        "Echo": grpc.stream_stream_rpc_method_handler(counter.echo),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield server, bound, counter
    finally:
        server.stop(None)


class Load:
    """Server-streaming calls through a proxy at `port`, each in a thread."""

    def __init__(self, port: int, authority: str) -> None:
        options = [
            ("grpc.default_authority", authority),
            ("grpc.service_config", RETRY_UNAVAILABLE),
        ]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
        self.stub = self.channel.unary_stream(METHOD)

    def call(self, started: threading.Event | None = None) -> list[bytes] | str:
        try:
            stream = self.stub(b"%d" % MESSAGES, timeout=30)
            got = [next(stream)]
            if started is not None:
                started.set()
            got.extend(stream)
        except grpc.RpcError as err:
            return f"{err.code().name}: {err.details()}"
        finally:
            if started is not None:
                started.set()
        return got


Disrupt = Callable[[], Awaitable[None]]


async def _across(
    load: Load, go: threading.Event, disrupt: Disrupt, *, later: bool
) -> list[list[bytes] | str | None]:
    """STREAMS calls that have their first message, then `disrupt()`, then (if `later`)
    as many new calls while the first ones are still open, then the first ones finish."""
    results: list[list[bytes] | str | None] = [None] * (2 * STREAMS if later else STREAMS)

    async def run(i: int, started: threading.Event | None) -> None:
        results[i] = await trio.to_thread.run_sync(load.call, started)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            started = [threading.Event() for _ in range(STREAMS)]
            for i, event in enumerate(started):
                nursery.start_soon(run, i, event)
            for event in started:
                await trio.to_thread.run_sync(event.wait)
            await disrupt()
            if later:
                async with trio.open_nursery() as more:
                    for i in range(STREAMS, 2 * STREAMS):
                        more.start_soon(run, i, None)
            go.set()
    return results


WHOLE = [b"%d" % i for i in range(MESSAGES)]


def _rolling_restart(port: int, old: grpc.Server, stack: contextlib.ExitStack) -> Disrupt:
    """Stop `old` gracefully and start its successor on the same port (a new `go`, set)."""

    async def restart() -> None:
        stopped = old.stop(grace=20)
        ready = threading.Event()
        ready.set()
        stack.enter_context(_server(port, ready))
        stack.callback(stopped.wait, 20)

    return restart


async def test_a_rolling_restart_behind_the_edge_loses_no_stream(tmp_path: Path) -> None:
    go = threading.Event()
    with contextlib.ExitStack() as stack:
        old, port, _ = stack.enter_context(_server(0, go))
        async with trio.open_nursery() as nursery:
            _, edge_port = await start_edge(nursery, tmp_path / "c.yaml", EDGE.format(port=port))
            load = Load(edge_port, "counter")
            got = await _across(load, go, _rolling_restart(port, old, stack), later=True)
            load.channel.close()
            nursery.cancel_scope.cancel()
    assert got == [WHOLE] * (2 * STREAMS)


async def test_an_endpoint_leaving_the_configuration_finishes_its_open_streams(
    tmp_path: Path,
) -> None:
    """A reload that moves the service to another endpoint: the streams open on the old
    one's HTTP/2 connection run to their end there, new calls go to the new one."""
    go = threading.Event()
    ready = threading.Event()
    ready.set()
    with _server(0, go) as (_, old_port, _), _server(0, ready) as (_, new_port, _):
        async with trio.open_nursery() as nursery:
            path = tmp_path / "c.yaml"
            edge, edge_port = await start_edge(nursery, path, EDGE.format(port=old_port))

            async def move() -> None:
                path.write_text(EDGE.format(port=new_port))
                assert edge.reload(), edge.last_error

            load = Load(edge_port, "counter")
            got = await _across(load, go, move, later=True)
            (cluster,) = edge.clusters.clusters.values()
            await trio.testing.wait_all_tasks_blocked()
            open_after = cluster.pools.connections  # the old endpoint's closed once done
            load.channel.close()
            nursery.cancel_scope.cancel()
    assert got == [WHOLE] * (2 * STREAMS)
    assert open_after == 1


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    with running_plane(tmp_path) as srv:
        yield srv


async def _mesh(
    nursery: trio.Nursery, plane: ControlPlane, app_port: int
) -> tuple[SidecarServer, int]:
    """A `counter` sidecar (GRPC) in front of `app_port` and a caller's outbound port."""
    target = f"127.0.0.1:{plane.port}"
    callee = mesh_sidecar(plane.data_dir, target, "counter", app_port, protocol="GRPC")
    caller = mesh_sidecar(plane.data_dir, target, "client", 1)
    await nursery.start(callee.run)
    await nursery.start(caller.run)
    with trio.fail_after(10):  # until the caller knows where counter is
        while True:
            changed = caller.config_changed
            snap = caller.outbound.snapshot if caller.outbound is not None else None
            cluster = snap.clusters.get("default/counter:80") if snap else None
            if cluster is not None and cluster.endpoints:
                return callee, caller.outbound_port
            await changed.wait()


async def test_a_rolling_restart_behind_a_sidecar_pair_loses_no_stream(plane: ControlPlane) -> None:
    go = threading.Event()
    with contextlib.ExitStack() as stack:
        old, port, _ = stack.enter_context(_server(0, go))
        async with trio.open_nursery() as nursery:
            _, out_port = await _mesh(nursery, plane, port)
            load = Load(out_port, "counter")
            got = await _across(load, go, _rolling_restart(port, old, stack), later=True)
            load.channel.close()
            nursery.cancel_scope.cancel()
    assert got == [WHOLE] * (2 * STREAMS)


async def test_draining_the_callees_sidecar_mid_stream_loses_no_stream(
    plane: ControlPlane,
) -> None:
    go = threading.Event()
    with _server(0, go) as (_, port, _):
        async with trio.open_nursery() as nursery:
            callee, out_port = await _mesh(nursery, plane, port)

            async def drain() -> None:
                callee.drain()

            load = Load(out_port, "counter")
            got = await _across(load, go, drain, later=False)
            load.channel.close()
            nursery.cancel_scope.cancel()
    assert got == [WHOLE] * STREAMS


async def test_a_client_cancel_is_not_logged_as_an_error(
    plane: ControlPlane, caplog: pytest.LogCaptureFixture
) -> None:
    with _server(0, threading.Event()) as (_, port, counter):
        async with trio.open_nursery() as nursery:
            _, out_port = await _mesh(nursery, plane, port)
            load = Load(out_port, "counter")

            def cancel_after_first() -> None:
                """A bidi call whose request stream is still open when the client cancels."""
                done = threading.Event()

                def requests() -> Iterator[bytes]:
                    yield b"hello"
                    done.wait(20)

                stream = load.channel.stream_stream(f"/{SERVICE}/Echo")(requests(), timeout=30)
                assert next(stream) == b"hello"
                stream.cancel()
                done.set()

            with caplog.at_level(logging.DEBUG, logger="weft"):
                await trio.to_thread.run_sync(cancel_after_first)
                reached = await trio.to_thread.run_sync(counter.cancelled.wait, 10)
            load.channel.close()
            nursery.cancel_scope.cancel()
    assert reached, "the cancel did not reach the app"
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
