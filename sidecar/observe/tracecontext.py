"""Trace context in and out of a hop, and the sampling decision (pure).

Incoming: W3C `traceparent` (with `tracestate` passed on untouched), else B3 in its single
(`b3`) or multi (`X-B3-*`) form. Outgoing: always `traceparent` naming this hop's span, and
`b3` too when the request came with B3 (so an app that only reads B3 stays in the trace).

Sampling is OpenTelemetry's: a root is sampled when the low 64 bits of its trace id fall under
ratio * 2^64 (`TraceIdRatioBased`), so every hop that sees the trace id decides alike; a
sampled parent is always honoured, and with `parent_based` an unsampled one is too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
B3_SINGLE = b"b3"
B3_MULTI = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags")
B3_FIELDS = frozenset((B3_SINGLE, *B3_MULTI))
# Fields a tracing hop replaces with its own (never forwarded as received).
REPLACED = (TRACEPARENT, TRACESTATE, B3_SINGLE, *B3_MULTI)

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_B3 = re.compile(rb"([0-9a-f]{32}|[0-9a-f]{16})-([0-9a-f]{16})(?:-([01d])(?:-[0-9a-f]{16})?)?")
_HEX16 = re.compile(rb"[0-9a-f]{16}|[0-9a-f]{32}")
_LOW64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Parent:
    """The caller's context: ids (0 = none: a new trace with the caller's decision only)
    and its sampling decision (None = not decided: the ratio decides)."""

    trace_id: int
    span_id: int
    sampled: bool | None
    b3: bool = False  # it came as B3: answer in B3 as well


def parse_traceparent(value: bytes) -> Parent | None:
    """A valid `traceparent` (W3C Trace Context level 1 §3.2), else None (start anew)."""
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version = m.group(1)
    if version == b"ff" or (version == b"00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55:56] != b"-":  # a later version may append fields
        return None
    trace_id, span_id = int(m.group(2), 16), int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, bool(int(m.group(4), 16) & 1))


def parse_b3(headers: list[tuple[bytes, bytes]]) -> Parent | None:
    """B3 from a request's fields: the single `b3` header, else the `X-B3-*` set."""
    fields = {n.lower(): v.strip() for n, v in headers if n.lower() in B3_FIELDS}
    single = fields.get(B3_SINGLE)
    if single is not None:
        if single in (b"0", b"1", b"d"):  # a decision alone
            return Parent(0, 0, single != b"0", b3=True)
        m = _B3.fullmatch(single)
        if m is None:
            return None
        flag = m.group(3)
        sampled = None if flag is None else flag != b"0"
        return _ids(m.group(1), m.group(2), sampled)
    flags = fields.get(b"x-b3-flags")
    decision = fields.get(b"x-b3-sampled")
    sampled = (
        True if flags == b"1" else None if decision is None else decision.lower() in (b"1", b"true")
    )
    trace, span = fields.get(b"x-b3-traceid"), fields.get(b"x-b3-spanid")
    if trace is not None and span is not None:
        trace, span = trace.lower(), span.lower()
        if _HEX16.fullmatch(trace) and len(span) == 16 and _HEX16.fullmatch(span):
            return _ids(trace, span, sampled)
    return Parent(0, 0, sampled, b3=True) if sampled is not None else None


def _ids(trace: bytes, span: bytes, sampled: bool | None) -> Parent | None:
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, sampled, b3=True)


def ratio_bound(ratio: float) -> int:
    """The trace-id bound for a ratio, as OpenTelemetry's TraceIdRatioBased computes it."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampling ratio must be within [0, 1], not {ratio}")
    return round(ratio * (_LOW64 + 1))


def sampled(trace_id: int, parent: bool | None, bound: int, parent_based: bool) -> bool:
    """Record this trace? A sampled parent always wins; an unsampled one too when
    `parent_based`; otherwise the trace id against the ratio's bound."""
    if parent is True or (parent is False and parent_based):
        return parent
    return (trace_id & _LOW64) < bound


def traceparent(trace_id: int, span_id: int, sampled: bool) -> bytes:
    return b"00-%032x-%016x-%s" % (trace_id, span_id, b"01" if sampled else b"00")


def b3(trace_id: int, span_id: int, sampled: bool) -> bytes:
    return b"%032x-%016x-%s" % (trace_id, span_id, b"1" if sampled else b"0")
