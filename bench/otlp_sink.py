"""An OTLP/gRPC trace receiver for the benchmark: takes spans and counts them.

`python -m bench.otlp_sink PORT` listens on 127.0.0.1:PORT until SIGTERM, then prints the
number of spans it received (so a run shows that tracing really exported).

It shares the load generator's core, so it must take as little of it as it can: CPU it
takes there starves wrk, and a proxy that is no longer saturated spends more per request (a
busy loop on that core takes the plain edge from ~52 to ~90 µs per request). So it runs at
the lowest priority (nice 19: the core's idle time), and it does not build protobuf
messages: it walks the request's wire format down to the `Span` entries (skipping their
contents) and counts them. `count_spans` is checked against protobuf's own parse in
tests/unit/test_otlp_sink.py.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
# ExportTraceServiceRequest.resource_spans = 1; ResourceSpans.scope_spans = 2;
# ScopeSpans.spans = 2.
_PATH = (1, 2, 2)


def _varint(data: bytes | memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(data: memoryview) -> Any:
    """(field number, payload) of each length-delimited field; others are skipped."""
    i, end = 0, len(data)
    while i < end:
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            size, i = _varint(data, i)
            yield number, data[i : i + size]
            i += size
        else:
            raise ValueError(f"wire type {wire} in an OTLP request")


def count_spans(request: bytes) -> int:
    """The number of spans in a serialized ExportTraceServiceRequest."""

    def walk(data: memoryview, depth: int) -> int:
        wanted = _PATH[depth]
        if depth == len(_PATH) - 1:
            return sum(1 for number, _ in _fields(data) if number == wanted)
        return sum(walk(sub, depth + 1) for number, sub in _fields(data) if number == wanted)

    return walk(memoryview(request), 0)


class Sink:
    def __init__(self) -> None:
        self.spans = 0
        self.lock = threading.Lock()

    def export(self, request: bytes, context: Any) -> bytes:
        n = count_spans(request)
        with self.lock:
            self.spans += n
        return b""  # an empty ExportTraceServiceResponse: all accepted


def main() -> int:
    os.nice(19)  # the load core's idle time only: wrk and the backend come first
    sink = Sink()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(sink.export)  # bytes in and out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{int(sys.argv[1])}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1)
    print(sink.spans, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
