"""Tracing in the data plane: a span per request, handed to the exporter process.

Theory of operation. `begin` reads the caller's context (observe/tracecontext.py), decides
sampling and makes the hop's span ids and the trace header lines for the upstream request;
that is all a request pays before it is forwarded. When a sampled request ends, `finish`
appends one flat tuple to a bounded queue. `run` sends the queue in batches (every
`interval_s`, or sooner when `batch` requests wait) to the exporter process
(`python -m sidecar.observe.exporter`), which encodes them as OTLP and exports them with
the OpenTelemetry SDK's OTLP/gRPC exporter. Encoding and gRPC thus run in another process
(another core; grpcio never loads into the data plane), and a collector that is down or
slow costs the data plane nothing: the exporter drops what it cannot send and says so, a
full queue drops here, and both count in `weft_trace_spans_dropped_total{reason}`.
"""

from __future__ import annotations

import json
import logging
import marshal
import random
import struct
import subprocess
import sys
from dataclasses import dataclass
from functools import partial

import trio

from sidecar.observe.metrics import Metrics
from sidecar.observe.spans import CLIENT, SERVER
from sidecar.observe.tracecontext import (
    Parent,
    b3,
    parse_b3,
    parse_traceparent,
    ratio_bound,
    sampled,
    traceparent,
)
from sidecar.protocol.http1 import RequestHead

log = logging.getLogger("weft.trace")

DROPPED = "weft_trace_spans_dropped_total"
EXPORTED = "weft_trace_spans_exported_total"
RESTART_S = (1.0, 2.0, 5.0, 10.0, 30.0)
_FRAME = struct.Struct(">II")  # payload bytes, spans in it


@dataclass(frozen=True, slots=True)
class TraceOptions:
    endpoint: str  # the OTLP/gRPC collector, host:port or http(s)://host:port
    ratio: float = 1.0  # of new traces recorded
    parent_based: bool = True  # an unsampled caller's decision is followed too
    service: str = "edge"
    namespace: str = "default"
    version: str = ""
    instance: str = ""
    timeout_s: float = 10.0  # one export, the exporter's retries included


class Span:
    """One request's trace ids, and the header lines that carry them upstream."""

    __slots__ = ("client_id", "headers", "kind", "parent_id", "sampled", "span_id", "trace_id")

    def __init__(
        self, trace_id: int, span_id: int, parent_id: int, kind: int, client_id: int,
        sampled: bool, headers: bytes,
    ) -> None:  # fmt: skip
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # 0: a root
        self.kind = kind
        self.client_id = client_id  # the edge's CLIENT span (0: none)
        self.sampled = sampled
        self.headers = headers  # CRLF-terminated lines for the upstream request


class Tracer:
    """One per process: shared by a sidecar's inbound and outbound sides."""

    def __init__(
        self,
        options: TraceOptions,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
        max_queue: int = 8192,
        batch: int = 2048,  # per frame: fewer, larger exports cost less per span than 512
        interval_s: float = 1.0,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self.bound = ratio_bound(options.ratio)
        self.parent_based = options.parent_based
        self._bits = (rng or random.Random()).getrandbits
        self.max_queue = max_queue
        self.batch = batch
        self.interval_s = interval_s
        self.pending: list[tuple[object, ...]] = []
        self._spans = 0  # spans in `pending` (an edge request makes two)
        self._full = trio.Event()
        self.reported = trio.Event()  # set (and replaced) on each report of the exporter

    # -- the data path ------------------------------------------------------------------
    def begin(self, head: RequestHead, direction: str) -> Span:
        """The span of a request arriving at this hop (`direction` of the listener)."""
        parent: Parent | None = None
        if head.traceparent:
            parent = parse_traceparent(head.traceparent)
        if parent is None and head.b3:
            parent = parse_b3(head.headers)
        bits = self._bits
        if parent is not None and parent.trace_id:
            trace_id, parent_id = parent.trace_id, parent.span_id
        else:
            trace_id, parent_id = bits(128) or 1, 0
        decision = sampled(
            trace_id, parent.sampled if parent is not None else None, self.bound,
            self.parent_based,
        )  # fmt: skip
        span_id = bits(64) or 1
        client_id = (bits(64) or 1) if direction == "edge" else 0
        out_id = client_id or span_id
        lines = b"traceparent: " + traceparent(trace_id, out_id, decision) + b"\r\n"
        if head.tracestate and parent is not None and not parent.b3:
            lines += b"tracestate: " + head.tracestate + b"\r\n"
        if parent is not None and parent.b3:
            lines += b"b3: " + b3(trace_id, out_id, decision) + b"\r\n"
        kind = CLIENT if direction == "outbound" else SERVER
        return Span(trace_id, span_id, parent_id, kind, client_id, decision, lines)

    def finish(self, record: tuple[object, ...], spans: int) -> None:
        """Queue a sampled request's record (spans.Finished's fields, as a plain tuple)."""
        if len(self.pending) >= self.max_queue:
            self.metrics.inc(DROPPED, (("reason", "queue_full"),), spans)
            return
        self.pending.append(record)
        self._spans += spans
        if len(self.pending) == self.batch:
            self._full.set()

    # -- the exporter process -----------------------------------------------------------
    def command(self) -> list[str]:
        o = self.options
        return [
            sys.executable, "-m", "sidecar.observe.exporter", "--endpoint", o.endpoint,
            "--service", o.service, "--namespace", o.namespace, "--version", o.version,
            "--instance", o.instance, "--timeout", str(o.timeout_s),
        ]  # fmt: skip

    async def run(self) -> None:
        """Keep an exporter process running and feed it; restart it (with backoff) if it
        dies or cannot start, counting what it took with it as dropped."""
        failures = 0
        while True:
            try:
                why = await self._run_exporter()
            except OSError as exc:  # could not even start it
                why = str(exc)
            if self._spans:
                self.metrics.inc(DROPPED, (("reason", "exporter_down"),), self._spans)
                self.pending, self._spans = [], 0
            delay = RESTART_S[min(failures, len(RESTART_S) - 1)]
            failures += 1
            log.error("the trace exporter process stopped (%s); restarting in %gs", why, delay)
            await trio.sleep(delay)

    async def _run_exporter(self) -> str:
        """Run one exporter process until it exits; its exit status."""
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                partial(
                    trio.run_process, self.command(), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, check=False,
                )
            )  # fmt: skip
            assert proc.stdin is not None and proc.stdout is not None
            nursery.start_soon(self._feed, proc.stdin)
            await self._results(proc.stdout)  # returns when the process is gone
            nursery.cancel_scope.cancel()
        return f"exit status {proc.returncode}"

    async def _feed(self, stdin: trio.abc.SendStream) -> None:
        while True:
            with trio.move_on_after(self.interval_s):
                await self._full.wait()
            self._full = trio.Event()
            if not self.pending:
                continue
            batch, spans = self.pending, self._spans
            self.pending, self._spans = [], 0
            data = marshal.dumps(batch)
            try:
                await stdin.send_all(_FRAME.pack(len(data), spans) + data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.metrics.inc(DROPPED, (("reason", "exporter_down"),), spans)
                return

    async def _results(self, stdout: trio.abc.ReceiveStream) -> None:
        """Count what the exporter reports, one JSON object per line."""
        buf = b""
        while data := await stdout.receive_some():
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                self._count(line)
            self.reported.set()
            self.reported = trio.Event()

    def _count(self, line: bytes) -> None:
        try:
            report = json.loads(line)
        except ValueError:
            return
        if report.get("exported"):
            self.metrics.inc(EXPORTED, (), report["exported"])
        if report.get("dropped"):
            reason = str(report.get("reason", "export_failed"))
            self.metrics.inc(DROPPED, (("reason", reason),), report["dropped"])
