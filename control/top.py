"""`meshctl top`'s numbers, from the counters sidecars report on their config watch (pure).

A sidecar sends `{"stats": {...}}` (sidecar/observe/metrics.py `Metrics.summary`: requests
served, failures, duration histogram buckets, TCP connections; all cumulative) every
STATS_S while they change, and nothing while they do not. The control plane keeps each
instance's recent samples with their arrival times; a view over a window is, per instance,
the newest sample less the last one from before the window, divided by the time between
them. When no sample came for a while the counts did not change since the newest one, so
the time runs to now (an instance that went quiet drops to 0 RPS instead of keeping its
last rate). Versions add their instances' rates and buckets; p50/p99 come from the added
buckets as Prometheus' histogram_quantile computes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sidecar.observe.metrics import BUCKETS_S

STATS_S = 2.0  # how often a sidecar reports while its counters change
HISTORY_S = 120.0  # the longest window `meshctl top` can ask for
WINDOW_S = 10.0
HISTORY = int(HISTORY_S / STATS_S) + 2


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # the control plane's clock when it arrived
    requests: int
    failures: int
    buckets: tuple[int, ...]  # per BUCKETS_S bound, then +Inf; not cumulative
    connections: int  # raw TCP
    connection_failures: int


def parse_sample(message: Any, at: float) -> Sample | None:
    """A sidecar's stats message, or None if it is malformed (it is then ignored)."""
    try:
        buckets = tuple(int(n) for n in message["buckets"])
        sample = Sample(
            at, int(message["requests"]), int(message["failures"]), buckets,
            int(message.get("connections", 0)), int(message.get("connection_failures", 0)),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None
    if len(buckets) != len(BUCKETS_S) + 1 or min(buckets, default=0) < 0:
        return None
    return sample


def history() -> deque[Sample]:
    return deque(maxlen=HISTORY)


@dataclass(frozen=True, slots=True)
class Delta:
    seconds: float
    requests: int
    failures: int
    buckets: tuple[int, ...]
    connections: int
    connection_failures: int


def delta(samples: Iterable[Sample], now: float, window_s: float) -> Delta | None:
    """What one instance did over the window ending now (None: it never reported)."""
    base = newest = None
    for s in samples:
        if base is None or s.at <= now - window_s:
            base = s
        newest = s
    if base is None or newest is None:
        return None
    quiet = now - newest.at > 1.5 * STATS_S  # nothing changed since the newest sample
    end = now if quiet else newest.at
    return Delta(
        max(end - base.at, 0.0), newest.requests - base.requests,
        newest.failures - base.failures,
        tuple(b - a for a, b in zip(base.buckets, newest.buckets, strict=True)),
        newest.connections - base.connections,
        newest.connection_failures - base.connection_failures,
    )  # fmt: skip


def quantile(q: float, buckets: tuple[int, ...]) -> float | None:
    """Prometheus' histogram_quantile over non-cumulative bucket counts (seconds), with
    linear interpolation inside the bucket; a rank in the +Inf bucket gives the highest
    finite bound. None when there were no observations."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(buckets):
        if below + n >= rank and n:
            if i == len(BUCKETS_S):
                return BUCKETS_S[-1]
            lower = BUCKETS_S[i - 1] if i else 0.0
            return lower + (BUCKETS_S[i] - lower) * (rank - below) / n
        below += n
    return BUCKETS_S[-1]


@dataclass(slots=True)
class _Version:
    instances: int = 0
    rps: float = 0.0
    cps: float = 0.0
    attempts: int = 0  # requests, and raw TCP connections
    failures: int = 0
    buckets: tuple[int, ...] = (0,) * (len(BUCKETS_S) + 1)


def rows(
    instances: Iterable[tuple[str, str, str, Iterable[Sample]]], now: float, window_s: float
) -> list[dict[str, Any]]:
    """One row per (namespace, service, version) from (namespace, service, version,
    samples) per instance: instances, rps, success (of requests and raw TCP connections;
    None: there were none), p50_ms, p99_ms, and TCP connections per second."""
    versions: dict[tuple[str, str, str], _Version] = {}
    for namespace, service, version, samples in instances:
        v = versions.setdefault((namespace, service, version), _Version())
        v.instances += 1
        d = delta(samples, now, window_s)
        if d is None or d.seconds <= 0:
            continue
        v.rps += d.requests / d.seconds
        v.cps += d.connections / d.seconds
        v.attempts += d.requests + d.connections
        v.failures += d.failures + d.connection_failures
        v.buckets = tuple(a + b for a, b in zip(v.buckets, d.buckets, strict=True))
    out = []
    for (namespace, service, version), v in sorted(versions.items()):
        p50, p99 = quantile(0.5, v.buckets), quantile(0.99, v.buckets)
        out.append({
            "namespace": namespace, "service": service, "version": version,
            "instances": v.instances, "rps": round(v.rps, 3),
            "success": round(1 - v.failures / v.attempts, 5) if v.attempts else None,
            "p50_ms": _ms(p50), "p99_ms": _ms(p99), "tcp_cps": round(v.cps, 3),
        })  # fmt: skip
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
