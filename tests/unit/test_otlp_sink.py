"""The benchmark's OTLP receiver counts spans from the wire as protobuf's parser does."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from bench.otlp_sink import count_spans
from sidecar.observe.exporter import request_bytes, resource_message
from sidecar.observe.spans import SERVER, Finished, encode


def _parsed(request: bytes) -> int:
    message = ExportTraceServiceRequest.FromString(request)
    return sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)


def test_counts_weft_requests() -> None:
    record = Finished(SERVER, 7, 8, 9, 10, 1.0, 0.1, 0.2, "GET", "/a", "r", "http", "a", "/a",
                      200, "svc", "10.0.0.1:80", 0, "1.1", "10.0.0.2", "", "")  # fmt: skip
    for n in (0, 1, 5):
        request = request_bytes(resource_message("s", "ns", "v1", "i"), encode([record] * n))
        assert count_spans(request) == _parsed(request) == n * 2  # with the edge's CLIENT span


def test_counts_across_resources_and_scopes() -> None:
    spans = [Span(name=f"s{i}", trace_id=b"\x01" * 16, span_id=b"\x02" * 8) for i in range(4)]
    message = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(scope_spans=[
                ScopeSpans(scope=InstrumentationScope(name="a"), spans=spans[:1]),
                ScopeSpans(spans=spans[1:3]),
            ]),
            ResourceSpans(scope_spans=[ScopeSpans(spans=spans[3:], schema_url="x")]),
            ResourceSpans(),
        ]
    )  # fmt: skip
    request = message.SerializeToString()
    assert count_spans(request) == _parsed(request) == 4
    assert count_spans(b"") == 0
