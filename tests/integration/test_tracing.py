"""Traces from the edge to a real OTLP/gRPC receiver: spans, links, attributes, context
propagation (W3C and B3), sampling, and a collector that is down."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import trio

from sidecar.modes.edge import EdgeServer
from sidecar.observe.tracing import DROPPED, EXPORTED, TraceOptions
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.net import free_port
from tests.support.otlp import Received, otlp_receiver

SERVER, CLIENT = 2, 3
ERROR = 2


def by_id(spans: list[Received]) -> dict[bytes, Received]:
    return {r.span.span_id: r for r in spans}


async def edge(
    nursery: trio.Nursery, tmp_path: Path, backend: int, access_log: Any = None, **trace: Any
) -> tuple[EdgeServer, int]:
    text = config(
        {"api": backend, "dead": free_port()}, [("api", "/api", "api"), ("dead", "/dead", "dead")]
    )
    return await start_edge(
        nursery, tmp_path / "edge.yaml", text, trace=TraceOptions(**trace), access_log=access_log
    )


async def counted(
    server: EdgeServer, name: str, want: float, labels: tuple[tuple[str, str], ...] = ()
) -> None:
    """Until the exporter has reported `want` spans under `name` (a counter)."""
    assert server.tracer is not None
    with trio.fail_after(30):
        while server.metrics.counters.get((name, labels), 0) < want:
            await server.tracer.reported.wait()


async def test_edge_spans_links_and_attributes(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    with (
        otlp_receiver() as (receiver, port),
        EchoServer("api") as api,
        log_path.open("w") as access_log,
    ):
        async with trio.open_nursery() as nursery:
            server, edge_port = await edge(
                nursery, tmp_path, api.port, access_log, endpoint=f"127.0.0.1:{port}"
            )
            caller_trace, caller_span = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{edge_port}", timeout=10
            ) as http:
                fresh = await http.get("/api/items/7?q=1")
                joined = await http.get(
                    "/api/x",
                    headers={
                        "traceparent": f"00-{caller_trace:032x}-{caller_span:016x}-01",
                        "tracestate": "vendor=abc",
                    },
                )
                b3 = await http.get(
                    "/api/b3",
                    headers={"X-B3-TraceId": "80f198ee56343ba864fe8b2a57d3eff7",
                             "X-B3-SpanId": "e457b5a2e4d86bd1", "X-B3-Sampled": "1"},
                )  # fmt: skip
                dead = await http.get("/dead/")
                missing = await http.get("/nowhere")
            assert [r.status_code for r in (fresh, joined, b3, dead, missing)] == [
                200,
                200,
                200,
                503,
                404,
            ]
            with trio.fail_after(30):
                assert await receiver.wait_for(lambda s: len(s) >= 9, 30), receiver.spans
            nursery.cancel_scope.cancel()

    spans = receiver.spans
    assert {r.service for r in spans} == {"edge"}
    assert {r.scope for r in spans} == {"weft"}
    ids = by_id(spans)
    # 1. a request with no context: a new trace, SERVER span with a CLIENT child, and the
    #    backend got the CLIENT span's id as its parent
    seen = fresh.json()["headers"]
    version, trace_hex, parent_hex, flags = seen["traceparent"][0].split("-")
    assert (version, flags) == ("00", "01")
    client = ids[bytes.fromhex(parent_hex)]
    assert client.span.kind == CLIENT and client.span.trace_id.hex() == trace_hex
    server = ids[client.span.parent_span_id]
    assert server.span.kind == SERVER and server.span.parent_span_id == b""
    assert server.span.name == client.span.name == "GET /api/*"
    attrs = server.attributes
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == "/api/*"  # the route's template, never the raw path
    assert attrs["url.path"] == "/api/items/7"
    assert attrs["http.response.status_code"] == 200
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["weft.route"] == "default/api"
    cattrs = client.attributes
    assert "http.route" not in cattrs and cattrs["url.template"] == "/api/*"
    # the CLIENT span is the call upstream: the endpoint it reached, not the client's URL
    assert cattrs["url.full"] == f"http://127.0.0.1:{api.port}/api/items/7"
    assert (cattrs["server.address"], cattrs["server.port"]) == ("127.0.0.1", api.port)
    assert attrs["url.scheme"] == "http" and attrs["server.address"] == "127.0.0.1"
    assert cattrs["network.peer.address"] == "127.0.0.1"
    assert cattrs["network.peer.port"] == api.port
    assert cattrs["peer.service"] == "api"
    assert server.span.start_time_unix_nano <= client.span.start_time_unix_nano
    assert client.span.end_time_unix_nano <= server.span.end_time_unix_nano
    assert server.span.status.code == 0
    logged = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert logged[0]["trace_id"] == trace_hex and logged[0]["path"] == "/api/items/7?q=1"
    assert logged[1]["trace_id"] == f"{caller_trace:032x}"
    assert len({line["trace_id"] for line in logged}) == 5  # every request has its own
    # 2. a caller's sampled context: the same trace, the caller's span as parent, tracestate on
    seen = joined.json()["headers"]
    _, trace_hex, parent_hex, _ = seen["traceparent"][0].split("-")
    assert trace_hex == f"{caller_trace:032x}"
    assert seen["tracestate"] == ["vendor=abc"]
    client = ids[bytes.fromhex(parent_hex)]
    server = ids[client.span.parent_span_id]
    assert server.span.parent_span_id == caller_span.to_bytes(8, "big")
    assert server.span.flags & 0x300 == 0x300  # the parent is remote
    # 3. B3 in, W3C (and B3, for apps that only read it) out; the X-B3-* fields are replaced
    seen = b3.json()["headers"]
    _, trace_hex, parent_hex, _ = seen["traceparent"][0].split("-")
    assert trace_hex == "80f198ee56343ba864fe8b2a57d3eff7"
    assert seen["b3"] == [f"{trace_hex}-{parent_hex}-1"]
    assert not [k for k in seen if k.startswith("x-b3-")]
    server = ids[ids[bytes.fromhex(parent_hex)].span.parent_span_id]
    assert server.span.parent_span_id == bytes.fromhex("e457b5a2e4d86bd1")
    # 4. a dead upstream (503) marks both spans as errors; a 404 for no route is no server
    #    error, and with no upstream call there is no CLIENT span
    dead_spans = [r for r in spans if r.span.name == "GET /dead/*"]
    assert sorted(r.span.kind for r in dead_spans) == [SERVER, CLIENT]
    assert all(r.span.status.code == ERROR for r in dead_spans)
    assert dead_spans[0].attributes["error.type"]
    lone = [r for r in spans if r.span.name == "GET"]
    assert len(lone) == 1 and lone[0].attributes["http.response.status_code"] == 404
    assert lone[0].span.status.code == 0


async def test_sampling_ratio_zero_still_follows_a_sampled_caller(tmp_path: Path) -> None:
    with otlp_receiver() as (receiver, port), EchoServer("api") as api:
        async with trio.open_nursery() as nursery:
            server, edge_port = await edge(
                nursery, tmp_path, api.port, endpoint=f"127.0.0.1:{port}", ratio=0.0
            )
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{edge_port}", timeout=10
            ) as http:
                unsampled = [await http.get(f"/api/{i}") for i in range(20)]
                caller = "0af7651916cd43dd8448eb211c80319c"
                sampled = await http.get(
                    "/api/s", headers={"traceparent": f"00-{caller}-b7ad6b7169203331-01"}
                )
            await counted(server, EXPORTED, 2)
            nursery.cancel_scope.cancel()
    # unsampled requests still carry a context (flag 00), so later hops agree not to sample
    assert all(r.json()["headers"]["traceparent"][0].endswith("-00") for r in unsampled)
    assert sampled.json()["headers"]["traceparent"][0].endswith("-01")
    assert len(receiver.spans) == 2
    assert {r.span.trace_id.hex() for r in receiver.spans} == {caller}


async def test_a_collector_that_is_down_costs_spans_not_requests(tmp_path: Path) -> None:
    collector = free_port()  # nothing listens there yet
    with EchoServer("api") as api:
        async with trio.open_nursery() as nursery:
            server, edge_port = await edge(
                nursery, tmp_path, api.port, endpoint=f"127.0.0.1:{collector}", timeout_s=1.0
            )
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{edge_port}", timeout=10
            ) as http:
                answers = [await http.get(f"/api/{i}") for i in range(40)]
                assert [r.status_code for r in answers] == [200] * 40
                await counted(server, DROPPED, 2, (("reason", "export_failed"),))
                # the collector comes up: spans of new requests reach it
                with otlp_receiver(collector) as (receiver, _), trio.fail_after(60):
                    while not receiver.spans:
                        assert (await http.get("/api/again")).status_code == 200
                        await server.tracer.reported.wait()  # type: ignore[union-attr]
            metrics = server.metrics.render()
            nursery.cancel_scope.cancel()
    assert 'weft_trace_spans_dropped_total{reason="export_failed"}' in metrics
    assert "weft_trace_spans_exported_total" in metrics


async def test_grpc_spans_follow_the_rpc_conventions(tmp_path: Path) -> None:
    """A gRPC call through the edge: spans named `package.Service/Method` with the RPC
    attributes; a FAILED_PRECONDITION answer fails the CLIENT span, not the SERVER one."""
    from tests.integration.test_grpc import CONFIG, SERVICE, _echo_server

    with otlp_receiver() as (receiver, port), _echo_server() as (backend, _):
        async with trio.open_nursery() as nursery:
            _, edge_port = await start_edge(
                nursery, tmp_path / "c.yaml", CONFIG.format(port=backend),
                trace=TraceOptions(endpoint=f"127.0.0.1:{port}"),
            )  # fmt: skip

            def calls() -> None:
                import grpc

                with grpc.insecure_channel(f"127.0.0.1:{edge_port}") as ch:
                    unary = ch.unary_unary(f"/{SERVICE}/Unary")
                    assert unary(b"hi", timeout=10).startswith(b"echo:hi")
                    with contextlib.suppress(grpc.RpcError):
                        unary(b"fail", timeout=10)

            await trio.to_thread.run_sync(calls)
            assert await receiver.wait_for(lambda s: len(s) >= 4, 30), receiver.spans
            nursery.cancel_scope.cancel()
    spans = receiver.spans
    assert {r.span.name for r in spans} == {f"{SERVICE}/Unary"}
    codes = sorted((r.attributes["rpc.grpc.status_code"], r.span.kind, r.span.status.code)
                   for r in spans)  # fmt: skip
    assert codes == [(0, SERVER, 0), (0, CLIENT, 0), (9, SERVER, 0), (9, CLIENT, ERROR)]
    for r in spans:
        a = r.attributes
        assert (a["rpc.system"], a["rpc.service"], a["rpc.method"]) == ("grpc", SERVICE, "Unary")
