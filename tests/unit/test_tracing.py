"""Trace context parsing, sampling, the span encoder (against the SDK's), the tracer's
queue, and the exporter's request framing."""

from __future__ import annotations

import random

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from sidecar.config.compile import route_template
from sidecar.observe.exporter import export_requests, request_bytes, resource_message
from sidecar.observe.metrics import Metrics
from sidecar.observe.spans import CLIENT, SERVER, Finished, encode
from sidecar.observe.tracecontext import (
    Parent,
    parse_b3,
    parse_traceparent,
    ratio_bound,
    sampled,
)
from sidecar.observe.tracing import DROPPED, TraceOptions, Tracer
from sidecar.protocol.http1 import MESH_TRACE_KINDS, RequestHead, RequestParser

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


# -- traceparent (W3C Trace Context §3.2) ---------------------------------------------------
def test_traceparent_valid() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01".encode()) == Parent(
        int(TRACE, 16), int(SPAN, 16), True
    )
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode()) == Parent(
        int(TRACE, 16), int(SPAN, 16), False
    )
    # a later version may append fields after a dash; flags other than sampled are ignored
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-09-what-the-future".encode()) == Parent(
        int(TRACE, 16), int(SPAN, 16), True
    )


@pytest.mark.parametrize(
    "value",
    [
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper-case hex
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace id
        f"00-{TRACE}-{SPAN}-1",  # short flags
        f"00-{TRACE}-{SPAN[:8]}_{SPAN[9:]}-01",
        f"cc-{TRACE}-{SPAN}-01x",  # a later version, but no dash after the flags
        "",
        "garbage",
    ],
)
def test_traceparent_invalid(value: str) -> None:
    assert parse_traceparent(value.encode()) is None


# -- B3 -----------------------------------------------------------------------------------
def test_b3_single_and_multi() -> None:
    t64 = "a3ce929d0e0e4736"
    assert parse_b3([(b"b3", f"{TRACE}-{SPAN}-1-{t64}".encode())]) == Parent(
        int(TRACE, 16), int(SPAN, 16), True, b3=True
    )
    assert parse_b3([(b"b3", f"{t64}-{SPAN}".encode())]) == Parent(
        int(t64, 16), int(SPAN, 16), None, b3=True
    )  # 64-bit trace ids are kept (left-padded); no decision: the ratio decides
    assert parse_b3([(b"b3", b"0")]) == Parent(0, 0, False, b3=True)
    assert parse_b3([(b"b3", b"d")]) == Parent(0, 0, True, b3=True)
    multi = [(b"X-B3-TraceId", TRACE.encode()), (b"X-B3-SpanId", SPAN.encode()),
             (b"X-B3-Sampled", b"0")]  # fmt: skip
    assert parse_b3(multi) == Parent(int(TRACE, 16), int(SPAN, 16), False, b3=True)
    assert parse_b3([*multi[:2], (b"x-b3-flags", b"1")]) == Parent(
        int(TRACE, 16), int(SPAN, 16), True, b3=True
    )  # debug implies sampled
    assert parse_b3([(b"x-b3-sampled", b"true")]) == Parent(0, 0, True, b3=True)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"b3", b"xyz")],
        [(b"b3", f"{TRACE}-{SPAN}-2".encode())],
        [(b"b3", f"{TRACE}-{SPAN[:-1]}".encode())],
        [(b"x-b3-traceid", TRACE.encode())],  # no span id and no decision
        [(b"x-b3-traceid", b"z" * 32), (b"x-b3-spanid", SPAN.encode())],
        [(b"x-b3-traceid", b"0" * 32), (b"x-b3-spanid", SPAN.encode())],
    ],
)
def test_b3_invalid(headers: list[tuple[bytes, bytes]]) -> None:
    assert parse_b3(headers) is None


# -- sampling -----------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.25, 0.5, 1.0])
def test_ratio_sampling_decides_as_the_sdk_does(ratio: float) -> None:
    rng = random.Random(7)
    sdk = TraceIdRatioBased(ratio)
    bound = ratio_bound(ratio)
    assert bound == sdk.bound
    ids = [rng.getrandbits(128) for _ in range(2000)]
    ours = [sampled(t, None, bound, True) for t in ids]
    theirs = [sdk.should_sample(None, t, "x").decision.is_sampled() for t in ids]
    assert ours == theirs


def test_a_sampled_parent_always_wins() -> None:
    never = ratio_bound(0.0)
    assert sampled(1, True, never, parent_based=True)
    assert sampled(1, True, never, parent_based=False)
    always = ratio_bound(1.0)
    assert not sampled(1, False, always, parent_based=True)
    assert sampled(1, False, always, parent_based=False)  # traceidratio: the ratio decides
    with pytest.raises(ValueError, match="within"):
        ratio_bound(1.5)


# -- the tracer in the data path ------------------------------------------------------------
def _head(*headers: tuple[bytes, bytes]) -> RequestHead:
    parser = RequestParser(kinds=MESH_TRACE_KINDS)
    parser.feed(
        b"GET / HTTP/1.1\r\nHost: a\r\n"
        + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
        + b"\r\n"
    )
    head = parser.events.popleft()
    assert isinstance(head, RequestHead)
    return head


def test_tracer_begin_shapes_by_direction() -> None:
    tracer = Tracer(TraceOptions("x"), Metrics(), rng=random.Random(1))
    caller = (b"traceparent", f"00-{TRACE}-{SPAN}-01".encode())
    edge = tracer.begin(_head(caller, (b"tracestate", b"a=1")), "edge")
    assert (edge.kind, edge.trace_id, edge.parent_id) == (SERVER, int(TRACE, 16), int(SPAN, 16))
    assert edge.client_id and edge.sampled
    assert edge.headers == (
        f"traceparent: 00-{TRACE}-{edge.client_id:016x}-01\r\ntracestate: a=1\r\n".encode()
    )
    inbound = tracer.begin(_head(caller), "inbound")
    assert inbound.kind == SERVER and not inbound.client_id
    assert f"-{inbound.span_id:016x}-01".encode() in inbound.headers
    outbound = tracer.begin(_head(), "outbound")
    assert outbound.kind == CLIENT and outbound.parent_id == 0 and outbound.trace_id
    # a bad traceparent starts a new trace and drops the tracestate that went with it
    bad = tracer.begin(_head((b"traceparent", b"00-zz"), (b"tracestate", b"a=1")), "inbound")
    assert bad.parent_id == 0 and b"tracestate" not in bad.headers
    b3 = tracer.begin(_head((b"b3", f"{TRACE}-{SPAN}-0".encode())), "inbound")
    assert not b3.sampled
    assert b3.headers.endswith(f"b3: {TRACE}-{b3.span_id:016x}-0\r\n".encode())


def test_the_parser_cuts_trace_fields_only_when_tracing() -> None:
    head = _head((b"traceparent", b"x"), (b"X-B3-Sampled", b"1"), (b"tracestate", b"a=1"))
    assert head.cut == [b"traceparent", b"X-B3-Sampled", b"tracestate"]
    assert head.b3 and head.traceparent == b"x" and head.tracestate == b"a=1"
    plain = RequestParser()
    plain.feed(b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: x\r\n\r\n")
    head = plain.events.popleft()
    assert isinstance(head, RequestHead) and head.cut == [] and head.traceparent == b""


def test_a_full_queue_drops_and_counts() -> None:
    metrics = Metrics()
    tracer = Tracer(TraceOptions("x"), metrics, max_queue=3)
    for _ in range(5):
        tracer.finish(("record",), 2)
    assert len(tracer.pending) == 3
    assert metrics.counters[(DROPPED, (("reason", "queue_full"),))] == 4


# -- the span encoder ------------------------------------------------------------------------
def _record(kind: int, client_id: int, status: int, error: str = "") -> Finished:
    return Finished(
        kind=kind, trace_id=int(TRACE, 16), span_id=0x1111, parent_id=int(SPAN, 16),
        client_id=client_id, start_s=1_700_000_000.25, upstream_s=0.001, duration_s=0.0042,
        method="POST", template="/orders/*", route="shop/orders", scheme="http",
        authority="orders:8080", path="/orders/7", status=status, peer_service="orders",
        upstream="10.0.0.5:9000", retries=1, version="1.1", client="10.0.0.9",
        identity="spiffe://weft.local/ns/shop/svc/web", error=error,
    )  # fmt: skip


def _sdk_span(r: Finished, span_id: int, parent: int, kind: SpanKind, start: int, end: int,
              attributes: dict[str, object], error: str, remote: bool) -> ReadableSpan:  # fmt: skip
    ctx = SpanContext(r.trace_id, span_id, False, TraceFlags(1))
    parent_ctx = SpanContext(r.trace_id, parent, remote, TraceFlags(1)) if parent else None
    status = Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET)
    return ReadableSpan(name=f"{r.method} {r.template}", context=ctx, parent=parent_ctx,
                        resource=Resource({}), attributes=attributes, kind=kind,
                        start_time=start, end_time=end, status=status)  # fmt: skip


def test_encoded_spans_equal_the_sdk_encoders() -> None:
    """Weft's writer and the SDK's encoder, given the same span, give the same message
    (attributes in the writer's order; a span's attributes have no meaningful order)."""
    r = _record(SERVER, 0x2222, 502, "UpstreamConnectError")
    start = int(r.start_s * 1e9)
    end = start + int(r.duration_s * 1e9)
    up = start + int(r.upstream_s * 1e9)
    server_attrs = {
        "http.request.method": "POST", "url.scheme": "http",
        "http.route": "/orders/*", "weft.route": "shop/orders", "http.response.status_code": 502,
        "server.address": "orders", "client.address": "10.0.0.9",
        "network.protocol.version": "1.1", "weft.peer.identity": r.identity,
        "error.type": "UpstreamConnectError", "url.path": "/orders/7",
    }  # fmt: skip
    client_attrs = {  # the edge's call: to the endpoint it reached
        "http.request.method": "POST",
        "url.template": "/orders/*", "weft.route": "shop/orders", "http.response.status_code": 502,
        "server.address": "10.0.0.5", "server.port": 9000, "peer.service": "orders",
        "network.peer.address": "10.0.0.5", "network.peer.port": 9000,
        "http.request.resend_count": 1,
        "error.type": "UpstreamConnectError", "url.full": "http://10.0.0.5:9000/orders/7",
    }  # fmt: skip
    sdk = [
        _sdk_span(r, 0x1111, int(SPAN, 16), SpanKind.SERVER, start, end, server_attrs,
                  "UpstreamConnectError", True),
        _sdk_span(r, 0x2222, 0x1111, SpanKind.CLIENT, up, end, client_attrs,
                  "UpstreamConnectError", False),
    ]  # fmt: skip
    theirs = encode_spans(sdk).resource_spans[0].scope_spans[0].spans
    ours = ScopeSpans.FromString(encode([r])).spans
    assert list(ours) == list(theirs)


def test_encoder_span_kinds_and_statuses() -> None:
    ok = ScopeSpans.FromString(encode([_record(SERVER, 0, 200)])).spans
    assert len(ok) == 1 and ok[0].status.code == 0
    keys = {kv.key for kv in ok[0].attributes}
    assert "error.type" not in keys and "weft.upstream.address" in keys  # no CLIENT child
    outbound = ScopeSpans.FromString(encode([_record(CLIENT, 0, 404)])).spans
    assert outbound[0].kind == CLIENT and outbound[0].status.code == 2  # 4xx fails a client
    assert outbound[0].flags == 0x300  # its parent (the app's context) is remote
    root = _record(SERVER, 0, 500)._replace(parent_id=0)
    span = ScopeSpans.FromString(encode([root])).spans[0]
    assert span.parent_span_id == b"" and span.flags == 0x100


def test_export_request_framing() -> None:
    resource = resource_message("orders", "shop", "v2", "abc")
    request = ExportTraceServiceRequest.FromString(
        request_bytes(resource, encode([_record(SERVER, 7, 200)] * 3))
    )
    rs = request.resource_spans[0]
    attrs = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
    assert attrs["service.name"] == "orders" and attrs["service.version"] == "v2"
    assert attrs["service.namespace"] == "shop" and attrs["service.instance.id"] == "abc"
    assert attrs["telemetry.sdk.name"] == "opentelemetry"
    assert rs.scope_spans[0].scope.name == "weft"
    assert len(rs.scope_spans[0].spans) == 6


def test_a_large_batch_goes_out_in_parts_under_the_byte_limit() -> None:
    """Long URLs make a batch's request large: it is split, every span still sent once."""
    resource = resource_message("orders", "shop", "v2", "abc")
    records = [
        _record(SERVER, 0x100 + i, 200)._replace(span_id=0x1000 + i, path="/" + "x" * 900)
        for i in range(40)
    ]  # fmt: skip
    whole = len(encode(records))
    parts = list(export_requests(resource, records, limit=whole // 5))
    assert len(parts) > 1
    seen = []
    for request, count in parts:
        spans = ExportTraceServiceRequest.FromString(request).resource_spans[0].scope_spans[0].spans
        assert count == len(spans) and sum(len(s.SerializeToString()) for s in spans) <= whole // 5
        seen += [s.span_id for s in spans]
    assert len(seen) == len(set(seen)) == 80  # each request's SERVER and CLIENT span, once
    assert [request for request, _ in export_requests(resource, records)] == [
        request_bytes(resource, encode(records))
    ]  # under the default limit: one request, as before


def test_span_names_follow_the_http_and_rpc_conventions() -> None:
    def names(r: Finished) -> list[str]:
        return [span.name for span in ScopeSpans.FromString(encode([r])).spans]

    edge = _record(SERVER, 0x2222, 200)
    assert names(edge) == ["POST /orders/*", "POST /orders/*"]  # server: http.route
    assert names(edge._replace(template="")) == ["POST", "POST"]  # every path: no route
    outbound = _record(CLIENT, 0, 200)._replace(peer_service="orders")
    spans = ScopeSpans.FromString(encode([outbound])).spans
    assert spans[0].name == "POST /orders/*"  # client: url.template
    attrs = {kv.key: kv.value for kv in spans[0].attributes}
    assert "http.route" not in attrs and attrs["url.template"].string_value == "/orders/*"
    assert attrs["url.full"].string_value == "http://orders:8080/orders/7"  # the app's URL
    assert attrs["server.address"].string_value == "orders"


@pytest.mark.parametrize(
    ("kind", "code", "failed"),
    [(SERVER, 0, False), (SERVER, 5, False), (SERVER, 14, True), (SERVER, 4, True),
     (CLIENT, 0, False), (CLIENT, 5, True)],
)  # fmt: skip
def test_grpc_spans(kind: int, code: int, failed: bool) -> None:
    call = _record(kind, 0, 200)._replace(
        method="POST", path="/shop.Catalog/List", rpc="shop.Catalog/List", grpc_status=code
    )
    span = ScopeSpans.FromString(encode([call])).spans[0]
    assert span.name == "shop.Catalog/List"
    attrs = {kv.key: kv.value for kv in span.attributes}
    assert attrs["rpc.system"].string_value == "grpc"
    assert attrs["rpc.service"].string_value == "shop.Catalog"
    assert attrs["rpc.method"].string_value == "List"
    assert attrs["rpc.grpc.status_code"].int_value == code
    assert (span.status.code == 2) is failed
    if failed:
        names = {4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND", 14: "UNAVAILABLE"}
        assert attrs["error.type"].string_value == names[code]


def test_route_templates() -> None:
    assert route_template("PathPrefix", "/") == ""  # every path: no route template
    assert route_template("PathPrefix", "/api/") == "/api/*"
    assert route_template("Exact", "/healthz") == "/healthz"
    assert route_template("RegularExpression", "/v[0-9]+/.*") == "/v[0-9]+/.*"


def test_the_encoders_cache_is_bounded() -> None:
    """Client-chosen values (authorities, paths) cannot grow the caches without bound."""
    from sidecar.observe import spans

    records = [
        _record(SERVER, 0, 200)._replace(authority=f"h{i}.example", path=f"/p/{i}")
        for i in range(20000)
    ]
    encode(records)
    assert 0 < len(spans._SHAPES) <= spans._CACHE_MAX
    assert 0 < len(spans._URLS) <= spans._CACHE_MAX


# -- the command line ---------------------------------------------------------------------------
def _trace_flags(*argv: str) -> TraceOptions | None:
    from mesh_ctl.cli import build_parser
    from mesh_ctl.telemetry import trace_options

    return trace_options(build_parser().parse_args(["edge", "-f", "x.yaml", *argv]))


def test_trace_flags_and_opentelemetry_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh_ctl.common import CliError

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert _trace_flags() is None  # no endpoint: no tracing
    assert _trace_flags("--otlp-endpoint", "c:4317") == TraceOptions("c:4317", 1.0, True)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert _trace_flags() == TraceOptions("http://jaeger:4317", 0.25, False)
    assert _trace_flags("--trace-sampling", "0.5", "--trace-sampler",
                        "parentbased_traceidratio") == TraceOptions("http://jaeger:4317", 0.5, True)  # fmt: skip
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_off")
    assert _trace_flags() == TraceOptions("http://jaeger:4317", 0.0, True)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "jaeger_remote")
    with pytest.raises(CliError, match="OTEL_TRACES_SAMPLER=jaeger_remote"):
        _trace_flags()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "half")
    with pytest.raises(CliError, match="not a number"):
        _trace_flags()
    with pytest.raises(CliError, match=r"within 0\.\.1"):
        _trace_flags("--trace-sampling", "2")
