"""A real OTLP/gRPC trace receiver in the test process (opentelemetry-proto's TraceService),
keeping every span it is sent with its resource's attributes."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import trio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Received:
    resource: dict[str, Any]
    span: Any  # opentelemetry.proto.trace.v1.trace_pb2.Span
    scope: str

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))

    @property
    def attributes(self) -> dict[str, Any]:
        return {kv.key: value(kv.value) for kv in self.span.attributes}


def value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.requests = 0
        self.changed = threading.Condition()

    def Export(self, request: Any, context: Any) -> Any:  # the gRPC method's name
        with self.changed:
            self.requests += 1
            for rs in request.resource_spans:
                resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append(Received(resource, span, ss.scope.name))
            self.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> bool:
        """Until `predicate(spans)` holds (True) or `timeout` passes (False)."""

        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: predicate(self.spans), timeout)

        return await trio.to_thread.run_sync(wait)


@contextlib.contextmanager
def otlp_receiver(port: int = 0) -> Iterator[tuple[Receiver, int]]:
    """A receiver on 127.0.0.1 (`port`, or any) and the port it listens on."""
    receiver = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(0)
