"""The trace exporter process: spans from a data plane's pipe to an OTLP/gRPC collector.

The data plane (observe/tracing.py) writes frames to stdin: 4 bytes payload length, 4 bytes
span count, then a marshal'd list of `spans.Finished` tuples. A reader thread keeps stdin
drained into a small backlog (frames past it are dropped at once, so a slow collector never
blocks the data plane); the main thread encodes each batch (observe/spans.py) under this
process's OpenTelemetry Resource and exports it with the SDK's `OTLPSpanExporter`, which
brings the channel, TLS, headers, compression, timeouts and retries (and their
OTEL_EXPORTER_OTLP_* variables). Each outcome goes back on stdout as one JSON line:
{"exported": n} or {"dropped": n, "reason": ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import marshal
import queue
import struct
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceMessage
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from sidecar import __version__
from sidecar.observe.spans import encode, varint

log = logging.getLogger("weft.exporter")

BACKLOG = 2  # frames (of up to 2,048 requests) waiting for an export; more are dropped
# One export request's spans at most: a batch that encodes larger (long URLs) goes out in
# parts, each well under gRPC's default 4 MiB receive limit, which collectors keep.
MAX_EXPORT_BYTES = 2 << 20
_FRAME = struct.Struct(">II")


@dataclass(frozen=True, slots=True)
class Batch:
    request: bytes  # a serialized ExportTraceServiceRequest
    count: int


EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _EncodedStub:
    """TraceService's Export on a channel, taking a request already serialized."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export = channel.unary_unary(
            EXPORT,
            request_serializer=None,  # bytes go out as they are
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


class Exporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter (channel, TLS, headers, compression, retries,
    reconnects), sending requests Weft encoded: its stub takes bytes, so a batch is not
    parsed into messages only to be serialized again (the two hooks its exporters implement
    are what to send and how many items it holds)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # SDKs older than the reconnect hook below make their stub here, not through it
        self._client = _EncodedStub(self._channel)  # type: ignore[assignment]

    def _initialize_channel_and_stub(self) -> None:  # the SDK calls it again to reconnect
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        self._client = _EncodedStub(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Any) -> Any:
        return data.request

    def _count_data(self, data: Any) -> int:
        return int(data.count)


def resource_message(service: str, namespace: str, version: str, instance: str) -> bytes:
    """This process's Resource (OTEL_RESOURCE_ATTRIBUTES merged in), encoded."""
    attrs: dict[str, str] = {"service.name": service, "service.namespace": namespace}
    if version:
        attrs["service.version"] = version
    if instance:
        attrs["service.instance.id"] = instance
    resource = Resource.create(attrs)
    message = ResourceMessage(
        attributes=[KeyValue(key=k, value=_any(v)) for k, v in resource.attributes.items()]
    )
    return bytes(message.SerializeToString())


def _any(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def export_requests(
    resource: bytes, records: list[tuple[Any, ...]], limit: int = MAX_EXPORT_BYTES
) -> Iterator[tuple[bytes, int]]:
    """(ExportTraceServiceRequest, span count) for these requests: one, or halves of the
    batch until each part's spans fit in `limit` bytes (a single request always goes out)."""
    spans = encode(records)
    if len(spans) > limit and len(records) > 1:
        half = len(records) // 2
        yield from export_requests(resource, records[:half], limit)
        yield from export_requests(resource, records[half:], limit)
        return
    yield request_bytes(resource, spans), span_count(records)


def span_count(records: list[tuple[Any, ...]]) -> int:
    return sum(2 if r[4] else 1 for r in records)  # an edge's CLIENT span too


def request_bytes(resource: bytes, spans: bytes) -> bytes:
    """ExportTraceServiceRequest{ResourceSpans{resource, ScopeSpans{scope, spans}}}."""
    scope = bytes(InstrumentationScope(name="weft", version=__version__).SerializeToString())
    scope_spans = b"\x0a" + varint(len(scope)) + scope + spans
    body = b"\x0a" + varint(len(resource)) + resource
    body += b"\x12" + varint(len(scope_spans)) + scope_spans
    return b"\x0a" + varint(len(body)) + body


class Reporter:
    """JSON lines on stdout, from both threads."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def __call__(self, **fields: object) -> None:
        with self._lock:
            self._out.write(json.dumps(fields) + "\n")
            self._out.flush()


def read_frames(stdin: IO[bytes], backlog: queue.Queue[bytes | None], report: Reporter) -> None:
    """Drain stdin into the backlog; a frame that does not fit is dropped and reported."""
    while True:
        head = stdin.read(_FRAME.size)
        if len(head) < _FRAME.size:
            break
        size, spans = _FRAME.unpack(head)
        payload = stdin.read(size)
        if len(payload) < size:
            break
        try:
            backlog.put_nowait(payload)
        except queue.Full:
            report(dropped=spans, reason="exporter_backlog")
    backlog.put(None)


def export_loop(
    exporter: OTLPSpanExporter, resource: bytes, backlog: queue.Queue[bytes | None],
    report: Reporter, endpoint: str,
) -> None:  # fmt: skip
    failing = False
    while (payload := backlog.get()) is not None:
        records = marshal.loads(payload)  # spans.Finished's fields, as tuples
        try:
            parts = list(export_requests(resource, records))
        except Exception:  # a record the encoder cannot take: its batch, not the process
            count = span_count(records)
            log.exception("could not encode %d spans", count)
            report(dropped=count, reason="encode_error")
            continue
        for request, count in parts:
            if exporter.export(Batch(request, count)) is SpanExportResult.SUCCESS:  # type: ignore[arg-type]
                if failing:
                    log.warning("exporting spans to %s again", endpoint)
                    failing = False
                report(exported=count)
            else:
                if not failing:
                    log.error("cannot export spans to %s; dropping them until it answers", endpoint)
                    failing = True
                report(dropped=count, reason="export_failed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.observe.exporter")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--version", default="")
    parser.add_argument("--instance", default="")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # failures reported above
    exporter = Exporter(
        endpoint=args.endpoint,
        insecure=not args.endpoint.startswith("https://"),
        timeout=args.timeout,
    )
    resource = resource_message(args.service, args.namespace, args.version, args.instance)
    report = Reporter(sys.stdout)
    backlog: queue.Queue[bytes | None] = queue.Queue(BACKLOG)
    reader = threading.Thread(
        target=read_frames, args=(sys.stdin.buffer, backlog, report), daemon=True
    )
    reader.start()
    try:
        export_loop(exporter, resource, backlog, report, args.endpoint)
    except KeyboardInterrupt:
        pass
    finally:
        exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
