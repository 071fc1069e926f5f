"""A small OTLP/gRPC trace receiver in the control plane, for looking at traces without
Jaeger (`meshctl traces`).

Theory of operation. `meshctl server --otlp-listen HOST:PORT` serves OpenTelemetry's
`TraceService/Export` there (plaintext, as a collector's 4317 is); proxies export to it
as they would to Jaeger (`--otlp-endpoint`). `TraceStore` keeps the most recent traces in
memory, bounded in traces and in spans per trace (a new trace pushes out the one least
recently added to), each span reduced to what a waterfall shows. The admin API's `Traces`
call lists them or returns one; nothing is written to disk. For more (search, retention,
many replicas), export to Jaeger or any OTLP collector instead.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc

MAX_TRACES = 256
MAX_SPANS = 512  # per trace

# the attributes a waterfall line shows, and as what
SHOWN = {"http.response.status_code": "http", "rpc.grpc.status_code": "grpc",
         "peer.service": "peer", "error.type": "error"}  # fmt: skip
SETTLED_S = 5.0  # a trace with no new span for this long is probably complete


@dataclass(frozen=True, slots=True)
class SpanRow:
    span_id: str
    parent_id: str
    service: str
    name: str
    kind: int  # OTLP SpanKind: 2 server, 3 client
    start_ns: int
    end_ns: int
    error: bool
    attributes: dict[str, Any] = field(default_factory=dict)


class TraceStore:
    """The most recent traces' spans, by trace id (hex)."""

    def __init__(self, max_traces: int = MAX_TRACES, max_spans: int = MAX_SPANS) -> None:
        self.max_traces = max_traces
        self.max_spans = max_spans
        self.traces: OrderedDict[str, list[SpanRow]] = OrderedDict()
        self.received: dict[str, float] = {}  # trace id -> when its last span came
        self.dropped = 0  # spans past a trace's maximum

    def add(self, trace_id: str, row: SpanRow, now: float) -> None:
        spans = self.traces.get(trace_id)
        if spans is None:
            while len(self.traces) >= self.max_traces:
                old, _ = self.traces.popitem(last=False)
                self.received.pop(old, None)
            spans = self.traces[trace_id] = []
        if len(spans) >= self.max_spans:
            self.dropped += 1
            return
        spans.append(row)
        self.received[trace_id] = now

    def summaries(
        self, limit: int, service: str = "", now: float | None = None
    ) -> list[dict[str, Any]]:
        """The newest traces first (by when they started): id, root span, span count,
        duration, errors, and whether it is `settled` (its proxies export in batches, so
        the spans of a trace arrive over a second or two)."""
        now = time.time() if now is None else now
        out = []
        newest = sorted(
            reversed(self.traces), key=lambda t: -min(s.start_ns for s in self.traces[t])
        )
        for trace_id in newest:
            spans = self.traces[trace_id]
            if service and not any(s.service == service for s in spans):
                continue
            root = _root(spans)
            start = min(s.start_ns for s in spans)
            out.append({
                "trace_id": trace_id, "root": f"{root.service}: {root.name}",
                "spans": len(spans), "services": sorted({s.service for s in spans}),
                "duration_ms": (max(s.end_ns for s in spans) - start) / 1e6,
                "errors": sum(1 for s in spans if s.error), "start_ns": start,
                "settled": now - self.received.get(trace_id, 0.0) >= SETTLED_S,
            })  # fmt: skip
            if len(out) >= limit:
                break
        return out

    def find(self, prefix: str) -> tuple[str, list[dict[str, Any]]] | None:
        """The trace whose id starts with `prefix` (the newest such), its spans in order."""
        for trace_id in reversed(self.traces):
            if trace_id.startswith(prefix.lower()):
                spans = sorted(self.traces[trace_id], key=lambda s: s.start_ns)
                return trace_id, [asdict(s) for s in spans]
        return None


def _root(spans: list[SpanRow]) -> SpanRow:
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids]
    return min(roots or spans, key=lambda s: s.start_ns)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def ingest(store: TraceStore, request: Any, now: float | None = None) -> int:
    """Put an ExportTraceServiceRequest's spans in `store`; how many there were."""
    now = time.time() if now is None else now
    count = 0
    for rs in request.resource_spans:
        service = next(
            (str(_value(kv.value)) for kv in rs.resource.attributes if kv.key == "service.name"),
            "?",
        )
        for ss in rs.scope_spans:
            for span in ss.spans:
                attrs = {kv.key: _value(kv.value) for kv in span.attributes if kv.key in SHOWN}
                row = SpanRow(
                    span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(),
                    service=service, name=span.name, kind=span.kind,
                    start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                    error=span.status.code == 2, attributes=attrs,
                )  # fmt: skip
                store.add(span.trace_id.hex(), row, now)
                count += 1
    return count


EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def otlp_handler(store: TraceStore) -> grpc.GenericRpcHandler:
    """OTLP/gRPC's TraceService/Export, into `store` (grpc.aio)."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

    async def export(request: Any, context: Any) -> Any:
        ingest(store, request)
        return pb.ExportTraceServiceResponse()

    service, _, method = EXPORT[1:].partition("/")
    return grpc.method_handlers_generic_handler(service, {
        method: grpc.unary_unary_rpc_method_handler(
            export, request_deserializer=pb.ExportTraceServiceRequest.FromString,
            response_serializer=pb.ExportTraceServiceResponse.SerializeToString,
        ),
    })  # fmt: skip


def waterfall(trace_id: str, spans: list[dict[str, Any]], width: int = 40) -> str:
    """A trace as text: one line per span, indented by depth, with a bar on the trace's
    time line, its duration and what it answered."""
    if not spans:
        return f"trace {trace_id}: no spans"
    start = min(s["start_ns"] for s in spans)
    total = max(max(s["end_ns"] for s in spans) - start, 1)
    children: dict[str, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for s in spans:
        children.setdefault(s["parent_id"] if s["parent_id"] in ids else "", []).append(s)
    rows: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda x: x["start_ns"]):
            rows.append((depth, s))
            walk(s["span_id"], depth + 1)

    walk("", 0)
    label_w = max(len("  " * d + f"{s['service']} {s['name']}") for d, s in rows)
    lines = [f"trace {trace_id}  {len(spans)} spans  {total / 1e6:.1f} ms"]
    for depth, s in rows:
        label = "  " * depth + f"{s['service']} {s['name']}"
        a = int((s["start_ns"] - start) / total * width)
        b = max(a + 1, round((s["end_ns"] - start) / total * width))
        bar = " " * a + "█" * (b - a) + " " * (width - b)
        kind = {2: "server", 3: "client"}.get(s["kind"], "")
        shown = " ".join(f"{SHOWN[k]}={v}" for k, v in s["attributes"].items() if k in SHOWN)
        mark = "  ERROR" if s["error"] else ""
        lines.append(
            f"{label.ljust(label_w)}  |{bar}|  {(s['end_ns'] - s['start_ns']) / 1e6:8.1f} ms  "
            f"{kind:<6} {shown}{mark}".rstrip()
        )
    return "\n".join(lines)
