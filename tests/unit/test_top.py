"""`meshctl top`'s arithmetic: windows over reported counters, quantiles as Prometheus
computes them, versions added up; and its table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control.top import Sample, delta, parse_sample, quantile, rows
from mesh_ctl.mesh_cli import render_top
from sidecar.observe.metrics import BUCKETS_S, Histogram

N = len(BUCKETS_S) + 1


def _sample(at: float, requests: int, failures: int = 0, fast: int | None = None) -> Sample:
    """`requests` of which `fast` (default all) took ≤ 1 ms and the rest ≤ 100 ms."""
    fast = requests if fast is None else fast
    buckets = [0] * N
    buckets[BUCKETS_S.index(0.001)] = fast
    buckets[BUCKETS_S.index(0.1)] = requests - fast
    return Sample(at, requests, failures, tuple(buckets), 0, 0)


def test_steady_traffic_is_measured_between_samples() -> None:
    # 100 requests a second, reported every 2 s from t=0
    samples = [_sample(t, 100 * t) for t in range(0, 31, 2)]
    d = delta(samples, now=31.0, window_s=10.0)
    assert d is not None
    assert d.seconds == 10.0 and d.requests == 1000  # t=20 to t=30: not until "now"


def test_an_instance_that_went_quiet_drops_to_zero() -> None:
    samples = [_sample(t, 100 * t) for t in range(0, 11, 2)]  # traffic stopped at t=10
    d = delta(samples, now=30.0, window_s=10.0)
    assert d is not None and d.requests == 0 and d.seconds == 20.0
    d = delta(samples, now=15.0, window_s=10.0)  # 4 s of 10 busy: counted over 15 - 4
    assert d is not None and d.requests == 600 and d.seconds == 11.0


def test_a_new_instance_is_measured_from_its_first_report() -> None:
    samples = [_sample(100.0, 0), _sample(102.0, 50), _sample(104.0, 100)]
    d = delta(samples, now=104.5, window_s=60.0)
    assert d is not None and d.seconds == 4.0 and d.requests == 100
    assert delta([], now=1.0, window_s=10.0) is None


def test_quantiles_match_prometheus_histogram_quantile() -> None:
    h = Histogram()
    for v in [0.0002] * 50 + [0.003] * 40 + [0.2] * 10:
        h.observe(v)
    buckets = tuple(h.counts)
    # rank 50 of 100: the last of the ≤ 0.5 ms bucket, so its upper bound
    assert quantile(0.5, buckets) == pytest.approx(0.0005)
    # rank 90: the end of the (2.5, 5] ms bucket
    assert quantile(0.9, buckets) == pytest.approx(0.005)
    # rank 99 lies in (0.1, 0.25] holding 10: 0.1 + 0.15 * 9/10
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.15 * 0.9)
    assert quantile(0.5, (0,) * N) is None
    slow = [0] * N
    slow[-1] = 3  # over the last bound: the highest finite bound, as Prometheus answers
    assert quantile(0.5, tuple(slow)) == BUCKETS_S[-1]


def test_versions_add_their_instances() -> None:
    now = 100.0
    v1a = [_sample(90, 0), _sample(99, 900, failures=9)]  # 100 rps, 1% failing
    v1b = [_sample(90, 0), _sample(99, 450)]  # 50 rps
    v2 = [_sample(90, 0), _sample(99, 90, failures=0, fast=0)]  # 10 rps, all slow
    idle = [_sample(10, 0)]
    out = rows(
        [("default", "orders", "v1", v1a), ("default", "orders", "v1", v1b),
         ("default", "orders", "v2", v2), ("shop", "web", "", idle),
         ("shop", "inventory", "", [])],
        now, 10.0,
    )  # fmt: skip
    by = {(r["service"], r["version"]): r for r in out}
    v1 = by[("orders", "v1")]
    assert v1["instances"] == 2 and v1["rps"] == pytest.approx(150.0)
    assert v1["success"] == pytest.approx(1 - 9 / 1350, abs=1e-5)
    assert v1["p50_ms"] <= 1.0 and v1["p99_ms"] <= 1.0
    slow = by[("orders", "v2")]
    assert slow["rps"] == pytest.approx(10.0) and 50 <= slow["p50_ms"] <= 100
    web = by[("web", "")]
    assert web["rps"] == 0 and web["success"] is None and web["p99_ms"] is None
    assert by[("inventory", "")]["instances"] == 1  # connected, not reported yet
    assert [r["namespace"] for r in out] == ["default", "default", "shop", "shop"]


def test_tcp_services_count_connections() -> None:
    samples = [Sample(0.0, 0, 0, (0,) * N, 0, 0), Sample(9.0, 0, 0, (0,) * N, 90, 9)]
    (row,) = rows([("default", "inventory", "", samples)], 9.5, 10.0)
    assert row["tcp_cps"] == pytest.approx(10.0) and row["rps"] == 0
    assert row["success"] == pytest.approx(0.9)


def test_malformed_stats_are_ignored() -> None:
    good = {"requests": 3, "failures": 1, "buckets": [1] * N, "connections": 2}
    assert parse_sample(good, 5.0) == Sample(5.0, 3, 1, (1,) * N, 2, 0)
    for bad in (
        None, [], {}, {**good, "requests": "x"}, {**good, "buckets": [1] * (N - 1)},
        {**good, "buckets": [-1] * N}, {**good, "buckets": 7},
    ):  # fmt: skip
        assert parse_sample(bad, 5.0) is None


def test_the_table() -> None:
    reply = {
        "window_s": 10.0,
        "services": [
            {"namespace": "default", "service": "orders", "version": "v2", "instances": 2,
             "rps": 12.345, "success": 0.99, "p50_ms": 1.3, "p99_ms": 80.0, "tcp_cps": 0.0},
            {"namespace": "default", "service": "web", "version": "", "instances": 1,
             "rps": 0.0, "success": None, "p50_ms": None, "p99_ms": None, "tcp_cps": 0.0},
        ],
    }  # fmt: skip
    head, orders, web = render_top(reply).splitlines()
    assert head.split() == ["SERVICE", "VERSION", "INST", "RPS", "SUCCESS", "P50", "ms", "P99",
                            "ms", "TCP/s"]  # fmt: skip
    assert orders.split() == ["default/orders", "v2", "2", "12.3", "99.00%", "1.3", "80.0", "0.0"]
    assert web.split() == ["default/web", "-", "1", "0.0", "-", "-", "-", "0.0"]
    assert "no sidecars connected" in render_top({"window_s": 10.0, "services": []})


def test_the_watch_counts_acks_nacks_and_keeps_samples(tmp_path: Path) -> None:
    """What a sidecar sends on its watch, as the control plane's reader takes it."""
    from control.registry import Instance
    from control.state import ControlState, Subscriber
    from control.watch import ConfigService

    async def run() -> tuple[ControlState, Subscriber]:
        state = ControlState(tmp_path, 0.0)
        inst = Instance(id="i1", namespace="default", service="orders", version="v1",
                        address="127.0.0.1", port=1)  # fmt: skip
        sub = Subscriber(instance=inst)
        state.connect(sub, 0.0)
        sub.sent, sub.changed_at = state.generation, state.changed_at  # as if pushed

        async def messages() -> AsyncIterator[object]:
            stats = {"requests": 4, "failures": 1, "buckets": [4] + [0] * (N - 1)}
            for message in (
                {"stats": stats}, {"stats": {"requests": "many"}}, "noise",
                {"ack": {"version": sub.sent}}, {"nack": {"version": sub.sent, "error": "bad"}},
                {"ack": {"version": sub.sent}},  # again: its push was already timed
            ):  # fmt: skip
                yield message

        await ConfigService(state, tmp_path)._read(messages(), sub)
        return state, sub

    state, sub = asyncio.run(run())
    registry = state.metrics.registry
    assert registry.get_sample_value("weft_control_config_acks_total") == 2
    assert registry.get_sample_value("weft_control_config_nacks_total") == 1
    assert registry.get_sample_value("weft_control_config_push_seconds_count") == 1
    assert registry.get_sample_value("weft_control_sidecars_connected") == 1
    assert [s.requests for s in sub.samples] == [4]  # the malformed one was dropped
    assert sub.error == "" and state.registry.instances["i1"].ready
