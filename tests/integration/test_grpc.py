"""gRPC through the edge: grpcio client and server, all four call kinds, status and
trailers intact, deadlines enforced by the proxy; HTTP/1.1 clients of HTTP/2 upstreams."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import trio

from tests.support.edge import start_edge

SERVICE = "weft.test.Echo"

CONFIG = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: h, port: 80, protocol: HTTP}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: echo}}
spec:
  ports: [{{port: 50051, protocol: GRPC}}]
  endpoints: [{{address: 127.0.0.1, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: grpc}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: echo, port: 50051}}]}}]
"""


class EchoService:
    """Bytes in, bytes out; `fail` aborts with a status, `slow` waits for cancellation."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-echo-trailer", "t1"),))
        if request == b"fail":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
        if request == b"slow":
            context.add_callback(self.cancelled.set)
            deadline = time.monotonic() + 10
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.01)
            return b""
        md = dict(context.invocation_metadata())
        return b"echo:" + request + b":" + md.get("x-forwarded-proto", "").encode()

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"+".join(requests)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield r.upper()


@contextlib.contextmanager
def _echo_server() -> Iterator[tuple[int, EchoService]]:
    """A grpcio server of EchoService on an ephemeral loopback port."""
    svc = EchoService()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(svc.unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(svc.server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(svc.client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(svc.bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, svc
    finally:
        server.stop(None)


@pytest.fixture
def grpc_server() -> Iterator[tuple[int, EchoService]]:
    with _echo_server() as running:
        yield running


def _calls(port: int) -> dict[str, object]:
    """Run every call kind with a grpcio client (blocking; run in a thread)."""
    out: dict[str, object] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        unary = ch.unary_unary(f"/{SERVICE}/Unary")
        reply, call = unary.with_call(b"hi", timeout=10)
        out["unary"] = reply
        out["trailers"] = dict(call.trailing_metadata() or ())
        try:
            unary(b"fail", timeout=10)
        except grpc.RpcError as err:
            out["fail"] = (err.code(), err.details(), dict(err.trailing_metadata() or ()))
        out["server_stream"] = list(ch.unary_stream(f"/{SERVICE}/ServerStream")(b"5", timeout=10))
        out["client_stream"] = ch.stream_unary(f"/{SERVICE}/ClientStream")(
            iter([b"a", b"b", b"c"]), timeout=10
        )
        big = [bytes([i]) * 100_000 for i in range(20)]  # 2 MB each way: flow control
        out["bidi"] = list(ch.stream_stream(f"/{SERVICE}/Bidi")(iter(big), timeout=20))
        out["bidi_expected"] = [b.upper() for b in big]
    return out


async def test_all_four_call_kinds_through_the_edge(
    tmp_path: Path, grpc_server: tuple[int, EchoService]
) -> None:
    port, _ = grpc_server
    async with trio.open_nursery() as nursery:
        server, edge_port = await start_edge(nursery, tmp_path / "c.yaml", CONFIG.format(port=port))
        got = await trio.to_thread.run_sync(_calls, edge_port)
        metrics = server.metrics.render()
        nursery.cancel_scope.cancel()
    assert got["unary"] == b"echo:hi:http"
    assert got["trailers"]["x-echo-trailer"] == "t1"  # type: ignore[index]
    assert got["fail"] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "asked to fail",
        {"x-echo-trailer": "t1"},
    )
    assert got["server_stream"] == [b"0", b"1", b"2", b"3", b"4"]
    assert got["client_stream"] == b"a+b+c"
    assert got["bidi"] == got["bidi_expected"]
    assert (
        'peer="default/echo:50051",route="default/grpc",code_class="2xx",code="200"} 5' in metrics
    )


async def test_grpc_timeout_is_enforced_by_the_proxy(
    tmp_path: Path, grpc_server: tuple[int, EchoService]
) -> None:
    """A raw HTTP/2 client that never cancels: the proxy ends the call at its deadline with
    DEADLINE_EXCEEDED and cancels the upstream call."""
    port, svc = grpc_server
    async with trio.open_nursery() as nursery:
        _, edge_port = await start_edge(nursery, tmp_path / "c.yaml", CONFIG.format(port=port))
        stream = await trio.open_tcp_stream("127.0.0.1", edge_port)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(
            1,
            [(":method", "POST"), (":path", f"/{SERVICE}/Unary"), (":scheme", "http"),
             (":authority", "echo"), ("content-type", "application/grpc"), ("te", "trailers"),
             ("grpc-timeout", "300m")],
        )  # fmt: skip
        client.send_data(1, b"\x00\x00\x00\x00\x04slow", end_stream=True)
        await stream.send_all(client.data_to_send())
        headers: dict[bytes, bytes] = {}
        started = trio.current_time()
        with trio.fail_after(10):
            while not headers:
                data = await stream.receive_some(65536)
                assert data
                for ev in client.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        headers = dict(ev.headers)
        elapsed = trio.current_time() - started
        cancelled = await trio.to_thread.run_sync(svc.cancelled.wait, 10)
        nursery.cancel_scope.cancel()
    assert headers[b":status"] == b"200" and headers[b"grpc-status"] == b"4"
    assert 0.25 < elapsed < 5
    assert cancelled


async def test_http1_client_to_an_http2_upstream(
    tmp_path: Path, grpc_server: tuple[int, EchoService]
) -> None:
    """HTTP/1.1 in, HTTP/2 out: the length-less response is chunked with trailers."""
    port, _ = grpc_server
    async with trio.open_nursery() as nursery:
        _, edge_port = await start_edge(nursery, tmp_path / "c.yaml", CONFIG.format(port=port))
        stream = await trio.open_tcp_stream("127.0.0.1", edge_port)
        body = b"\x00\x00\x00\x00\x02yo"
        await stream.send_all(
            b"POST /weft.test.Echo/Unary HTTP/1.1\r\nHost: echo\r\nTE: trailers\r\n"
            b"Content-Type: application/grpc\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        data = b""
        with trio.fail_after(10):
            while not data.endswith(b"\r\n\r\n") or b"grpc-status" not in data:
                chunk = await stream.receive_some(65536)
                assert chunk, data
                data += chunk
        nursery.cancel_scope.cancel()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding: chunked" in head.lower()
    assert b"echo:yo:http" in rest
    assert rest == (
        b"11\r\n\x00\x00\x00\x00\x0cecho:yo:http\r\n"
        b"0\r\ngrpc-status: 0\r\ngrpc-message: \r\nx-echo-trailer: t1\r\n\r\n"
    )


GRPC_ROUTES = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: h, port: 80, protocol: HTTP}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: a}}
spec:
  ports: [{{port: 50051, protocol: GRPC}}]
  endpoints: [{{address: 127.0.0.1, port: {a}}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: b}}
spec:
  ports: [{{port: 50051, protocol: GRPC}}]
  endpoints: [{{address: 127.0.0.1, port: {b}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{method: {{service: weft.test.Echo, method: Unary}}}}]
    backendRefs: [{{name: a, port: 50051}}]
  - matches:
    - method: {{type: RegularExpression, service: "weft[.]test[.].*", method: "Server.*"}}
    - method: {{service: weft.test.Echo, method: Unary}}  # more header matches: wins
      headers: [{{name: x-tier, value: gold}}]
    backendRefs: [{{name: b, port: 50051}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{add: [{{name: x-served-by, value: b}}]}}
"""


def _routed(port: int) -> dict[str, object]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        unary = ch.unary_unary(f"/{SERVICE}/Unary")
        _, plain_call = unary.with_call(b"x", timeout=10)
        _, gold_call = unary.with_call(b"x", metadata=(("x-tier", "gold"),), timeout=10)
        streamed = list(ch.unary_stream(f"/{SERVICE}/ServerStream")(b"2", timeout=10))
        try:
            ch.unary_unary("/other.Service/Unary")(b"x", timeout=10)
            missing = None
        except grpc.RpcError as err:
            missing = err.code()
    return {
        "plain": dict(plain_call.initial_metadata() or ()),
        "gold": dict(gold_call.initial_metadata() or ()),
        "streamed": streamed,
        "missing": missing,
    }


async def test_grpcroute_matches_service_method_and_headers(tmp_path: Path) -> None:
    with _echo_server() as (a, _), _echo_server() as (b, _):
        async with trio.open_nursery() as nursery:
            text = GRPC_ROUTES.format(a=a, b=b)
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            got = await trio.to_thread.run_sync(_routed, port)
            metrics = edge.metrics.render()
            nursery.cancel_scope.cancel()
    assert "x-served-by" not in got["plain"]  # type: ignore[operator]
    assert got["gold"]["x-served-by"] == "b"  # type: ignore[index]
    assert got["streamed"] == [b"0", b"1"]
    assert got["missing"] == grpc.StatusCode.UNIMPLEMENTED  # 404 from the proxy
    assert 'peer="default/b:50051",route="default/echo",code_class="2xx",code="200"} 2' in metrics
    assert 'peer="default/a:50051",route="default/echo",code_class="2xx",code="200"} 1' in metrics


NODE_MODULES = Path(__file__).resolve().parents[2] / ".cache" / "node" / "node_modules"


@pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_MODULES / "@grpc" / "grpc-js").is_dir(),
    reason="node and @grpc/grpc-js (make test installs it where npm exists)",
)
async def test_grpc_js_client(tmp_path: Path, grpc_server: tuple[int, EchoService]) -> None:
    port, _ = grpc_server
    script = Path(__file__).resolve().parents[1] / "support" / "grpc_client.js"
    async with trio.open_nursery() as nursery:
        _, edge_port = await start_edge(nursery, tmp_path / "c.yaml", CONFIG.format(port=port))
        proc = await trio.run_process(
            ["node", str(script), f"127.0.0.1:{edge_port}", SERVICE],
            capture_stdout=True,
            capture_stderr=True,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
            check=False,
        )
        nursery.cancel_scope.cancel()
    assert proc.returncode == 0, proc.stderr.decode()
    got = json.loads(proc.stdout)
    assert got["unary"] == "echo:from-js:http"
    assert got["fail"] == {"code": 9, "details": "asked to fail"}  # FAILED_PRECONDITION
    assert got["bidi"] == ["A", "BB", "CCC"]


async def test_an_upstream_reset_while_the_body_streams_is_a_502_not_a_dropped_connection(
    tmp_path: Path, grpc_server: tuple[int, EchoService]
) -> None:
    """grpcio resets a stream without `te: trailers` (INTERNAL_ERROR) while the request body
    is still streaming: the client gets 502 on that stream and keeps its connection."""
    port, _ = grpc_server
    async with trio.open_nursery() as nursery:
        _, edge_port = await start_edge(nursery, tmp_path / "c.yaml", CONFIG.format(port=port))
        stream = await trio.open_tcp_stream("127.0.0.1", edge_port)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        base = [(":method", "POST"), (":path", f"/{SERVICE}/Unary"), (":scheme", "http"),
                (":authority", "echo"), ("content-type", "application/grpc")]  # fmt: skip
        client.send_headers(1, base)  # no te: trailers, and the body follows later
        await stream.send_all(client.data_to_send())
        statuses: dict[int, bytes] = {}
        with trio.fail_after(10):
            while 1 not in statuses:
                data = await stream.receive_some(65536)
                assert data, "the proxy dropped the connection"
                for ev in client.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        statuses[ev.stream_id] = dict(ev.headers)[b":status"]
                await stream.send_all(client.data_to_send())
            client.send_headers(3, [*base, ("te", "trailers")])
            client.send_data(3, b"\x00\x00\x00\x00\x02ok", end_stream=True)
            await stream.send_all(client.data_to_send())
            while 3 not in statuses:
                data = await stream.receive_some(65536)
                assert data, "the proxy dropped the connection"
                for ev in client.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived):
                        statuses[ev.stream_id] = dict(ev.headers)[b":status"]
        nursery.cancel_scope.cancel()
    assert statuses == {1: b"502", 3: b"200"}
