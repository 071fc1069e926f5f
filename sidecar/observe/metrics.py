"""Prometheus metrics kept in plain dicts; rendered in the text exposition format on demand.

Labels are bounded by construction: services, routes and peers come from configuration,
codes from the status line; no raw path or user value ever becomes a label.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]
# Computes gauges when /metrics is read (state the data path keeps anyway, e.g. breakers).
Collector = Callable[[], Iterable[tuple[str, Labels, float]]]

BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# weft_tcp_connections_total results where the connection never reached the app
TCP_FAILURES = ("no_route", "no_healthy_upstream", "connect_failed")

RequestKey = tuple[str, str, str, str, int]  # direction, service, peer, route, code
DurationKey = tuple[str, str, str, str]  # direction, service, peer, route


class Histogram:
    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS_S, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[RequestKey, int] = {}
        self.durations: dict[DurationKey, Histogram] = {}
        self.gauges: dict[str, float] = {}
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.histograms: dict[tuple[str, tuple[tuple[str, str], ...]], Histogram] = {}
        self.collectors: list[Collector] = []

    def request(self, key: DurationKey, code: int, duration_s: float) -> None:
        rkey = (key[0], key[1], key[2], key[3], code)  # compiled, `(*key, code)` is generic
        requests = self.requests
        requests[rkey] = requests.get(rkey, 0) + 1
        hist = self.durations.get(key)
        if hist is None:
            hist = self.durations[key] = Histogram()
        hist.observe(duration_s)

    def inc(self, name: str, labels: tuple[tuple[str, str], ...] = (), by: float = 1.0) -> None:
        k = (name, labels)
        self.counters[k] = self.counters.get(k, 0.0) + by

    def observe(self, name: str, labels: tuple[tuple[str, str], ...], value: float) -> None:
        hist = self.histograms.get((name, labels))
        if hist is None:
            hist = self.histograms[(name, labels)] = Histogram()
        hist.observe(value)

    def summary(self, directions: tuple[str, ...]) -> dict[str, object]:
        """This process's totals for the requests it served (`directions`: inbound, or edge
        for a gateway), as `meshctl top` needs them: requests, failures (5xx, or no
        response), the duration histogram's bucket counts (BUCKETS_S, then +Inf; not
        cumulative), TCP connections and those that could not reach the app. Sent to the
        control plane (config/watch.py)."""
        requests = failures = 0
        for key, n in self.requests.items():
            if key[0] in directions:
                requests += n
                if key[4] >= 500 or key[4] == 0:
                    failures += n
        buckets = [0] * (len(BUCKETS_S) + 1)
        for dkey, hist in self.durations.items():
            if dkey[0] in directions:
                buckets = [a + b for a, b in zip(buckets, hist.counts, strict=True)]
        connections = refused = 0.0
        for (name, labels), count in self.counters.items():
            if name == "weft_tcp_connections_total" and labels[0][1] in directions:
                connections += count
                if labels[-1][1] in TCP_FAILURES:
                    refused += count
        return {
            "requests": requests, "failures": failures, "buckets": buckets,
            "connections": int(connections), "connection_failures": int(refused),
        }  # fmt: skip

    def render(self) -> str:
        lines = [
            "# HELP weft_requests_total Requests handled, by outcome.",
            "# TYPE weft_requests_total counter",
        ]
        for (direction, service, peer, route, code), n in sorted(self.requests.items()):
            labels = _labels(
                direction=direction, service=service, peer=peer, route=route,
                code_class=code_class(code), code=str(code),
            )  # fmt: skip
            lines.append(f"weft_requests_total{{{labels}}} {n}")
        lines += [
            "# HELP weft_request_duration_seconds Request duration from first byte to last.",
            "# TYPE weft_request_duration_seconds histogram",
        ]
        for (direction, service, peer, route), h in sorted(self.durations.items()):
            base = _labels(direction=direction, service=service, peer=peer, route=route)
            _histogram(lines, "weft_request_duration_seconds", base, h)
        seen_h: set[str] = set()
        for (name, pairs), h in sorted(self.histograms.items()):
            if name not in seen_h:
                seen_h.add(name)
                lines.append(f"# TYPE {name} histogram")
            _histogram(lines, name, _labels(**dict(pairs)), h)
        seen: set[str] = set()
        for (name, pairs), value in sorted(self.counters.items()):
            if name not in seen:
                seen.add(name)
                lines.append(f"# TYPE {name} counter")
            lines.append(f"{name}{{{_labels(**dict(pairs))}}} {number_text(value)}")
        for name, value in sorted(self.gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {number_text(value)}")
        collected = sorted(g for collect in self.collectors for g in collect())
        for i, (name, pairs, value) in enumerate(collected):
            if i == 0 or collected[i - 1][0] != name:
                lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name}{{{_labels(**dict(pairs))}}} {number_text(value)}")
        return "\n".join(lines) + "\n"


def code_class(code: int) -> str:
    """2xx … 5xx; "none" when no response was sent (the client went away first)."""
    return f"{code // 100}xx" if 100 <= code <= 599 else "none"


def _histogram(lines: list[str], name: str, base: str, h: Histogram) -> None:
    acc = 0
    for bound, n in zip(BUCKETS_S, h.counts, strict=False):
        acc += n
        lines.append(f'{name}_bucket{{{base},le="{bound}"}} {acc}')
    lines.append(f'{name}_bucket{{{base},le="+Inf"}} {h.count}')
    lines.append(f"{name}_sum{{{base}}} {h.sum:.6f}")
    lines.append(f"{name}_count{{{base}}} {h.count}")


def number_text(value: float) -> str:
    """Exact for whole numbers (byte counters pass 1e6 quickly), repr otherwise."""
    return str(int(value)) if value == int(value) else repr(float(value))


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
