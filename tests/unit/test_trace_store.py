"""The control plane's trace store: OTLP requests in, bounded, listed and drawn."""

from __future__ import annotations

import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from control.traces import TraceStore, ingest, waterfall

T1 = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")


def _request(service: str, spans: list[Span]) -> ExportTraceServiceRequest:
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))]
    )
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=spans)])]
    )


def _span(sid: int, parent: int, name: str, start_ms: int, end_ms: int, *, trace: bytes = T1,
          kind: int = 2, status: int = 200, error: bool = False) -> Span:  # fmt: skip
    return Span(
        trace_id=trace, span_id=sid.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=name, kind=kind,
        start_time_unix_nano=start_ms * 1_000_000, end_time_unix_nano=end_ms * 1_000_000,
        attributes=[KeyValue(key="http.response.status_code", value=AnyValue(int_value=status)),
                    KeyValue(key="url.path", value=AnyValue(string_value="/secret?token=1"))],
        status=Status(code=2 if error else 0),
    )  # fmt: skip


def test_a_trace_from_three_services_is_one_waterfall() -> None:
    store = TraceStore()
    assert ingest(store, _request("edge", [_span(1, 0, "GET", 0, 100),
                                           _span(2, 1, "GET", 5, 95, kind=3)])) == 2  # fmt: skip
    ingest(store, _request("web", [_span(3, 2, "GET", 10, 90)]))
    ingest(store, _request("catalog", [_span(4, 3, "shop.Catalog/List", 20, 40, status=503,
                                               error=True)]))  # fmt: skip
    (summary,) = store.summaries(10)
    assert summary["trace_id"] == T1.hex() and summary["root"] == "edge: GET"
    assert summary["spans"] == 4 and summary["errors"] == 1
    assert summary["services"] == ["catalog", "edge", "web"]
    assert summary["duration_ms"] == 100.0
    assert not summary["settled"]  # its spans came just now: more may follow
    assert store.summaries(10, now=time.time() + 6)[0]["settled"]
    found = store.find(T1.hex()[:8])
    assert found is not None
    text = waterfall(*found, width=20)
    lines = text.splitlines()
    assert lines[0] == f"trace {T1.hex()}  4 spans  100.0 ms"
    assert [line.split("|")[0].rstrip() for line in lines[1:]] == [
        "edge GET", "  edge GET", "    web GET", "      catalog shop.Catalog/List"]  # fmt: skip
    assert lines[1].split("|")[1] == "█" * 20  # the root spans the whole trace
    assert lines[4].split("|")[1] == "    ████            "  # 20..40 ms of 100
    assert lines[4].endswith("server http=503  ERROR")
    assert "secret" not in text  # only the attributes a waterfall shows are kept


def test_the_store_is_bounded() -> None:
    store = TraceStore(max_traces=3, max_spans=2)
    for i in range(5):
        trace = bytes([i + 1]) * 16
        ingest(store, _request("s", [_span(j + 1, 0, "GET", 0, 1, trace=trace) for j in range(4)]))
    newest_first = [(bytes([i]) * 16).hex() for i in (5, 4, 3)]
    assert [s["trace_id"] for s in store.summaries(10)] == newest_first
    assert all(s["spans"] == 2 for s in store.summaries(10))
    assert store.dropped == 5 * 2
    assert store.find("ff") is None
    assert [s["trace_id"] for s in store.summaries(1)] == [(bytes([5]) * 16).hex()]
    assert store.summaries(10, service="other") == []
