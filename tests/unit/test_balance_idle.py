"""Balancers and the idle tracker: pure cores with injected time and randomness."""

from __future__ import annotations

import dataclasses
import random

import pytest

from sidecar.config.model import Endpoint
from sidecar.transport.idle import IdleTracker, Tracked
from sidecar.upstream.balance import (
    EndpointStats,
    LeastRequest,
    PeakEwma,
    RoundRobin,
    cumulative_weights,
)


def _stats(n: int) -> list[EndpointStats]:
    return [EndpointStats(Endpoint(address="10.0.0.1", port=i + 1), now=0.0) for i in range(n)]


def test_peak_ewma_avoids_a_slow_endpoint_then_forgives_it() -> None:
    stats = _stats(2)
    rng = random.Random(1)
    stats[0].observe(0.5, now=1.0)  # one slow answer: the peak is taken at once
    stats[1].observe(0.001, now=1.0)
    picks = [PeakEwma().pick(stats, rng, now=1.0) for _ in range(100)]
    assert all(p is stats[1] for p in picks)
    # A minute later its estimate has decayed below what the other endpoint now shows.
    stats[1].observe(0.01, now=61.0)
    assert PeakEwma().pick(stats, rng, now=61.0) is stats[0]


def test_least_request_prefers_fewer_pending() -> None:
    stats = _stats(2)
    stats[0].pending = 5
    rng = random.Random(2)
    assert all(LeastRequest().pick(stats, rng, 0.0) is stats[1] for _ in range(50))


def test_round_robin_cycles() -> None:
    stats = _stats(3)
    rr = RoundRobin()
    got = [rr.pick(stats, random.Random(0), 0.0).endpoint.port for _ in range(6)]
    assert got == [1, 2, 3, 1, 2, 3]


def test_p2c_spreads_evenly_over_equal_endpoints() -> None:
    stats = _stats(4)
    rng = random.Random(3)
    counts = {s.endpoint.port: 0 for s in stats}
    for _ in range(4000):
        counts[PeakEwma().pick(stats, rng, 0.0).endpoint.port] += 1
    assert all(800 < c < 1200 for c in counts.values())


def test_idle_tracker_uses_header_limit_only_mid_head() -> None:
    tracker = IdleTracker(idle_timeout_s=60.0, header_timeout_s=5.0)
    state = {"n": 0, "head": False}
    cancelled: list[str] = []
    t = Tracked(
        activity=lambda: state["n"],
        in_head=lambda: state["head"],
        cancel=lambda: cancelled.append("x"),
    )
    tracker.add(t, now=0.0)
    assert tracker.expired(10.0) == []  # idle between requests: the 60 s limit applies
    state["head"] = True
    state["n"] += 1
    assert tracker.expired(11.0) == []  # progress seen: the clock restarts at 11
    assert tracker.expired(15.5) == []
    assert tracker.expired(16.0) == [t]
    state["head"] = False
    assert tracker.expired(71.0) == [t]


def test_header_timeout_is_a_deadline_that_trickled_bytes_do_not_move() -> None:
    """A head arriving one byte every 3 s is cut off at the header timeout (counted from
    the first sweep that saw it begin), as a silent one is; the next head starts anew."""
    tracker = IdleTracker(idle_timeout_s=60.0, header_timeout_s=10.0)
    state = {"n": 0, "head": True}
    t = Tracked(activity=lambda: state["n"], in_head=lambda: state["head"], cancel=lambda: None)
    tracker.add(t, now=0.0)
    for now in (3.0, 6.0, 9.0, 12.0):  # a byte every 3 s: never quiet for long
        state["n"] += 1
        assert tracker.expired(now) == []
    state["n"] += 1
    assert tracker.expired(13.0) == [t]  # 10 s after the first sweep that saw the head
    state["head"] = False  # the head completed: idle rules again
    assert tracker.expired(13.0) == []
    state["head"] = True
    state["n"] += 1
    assert tracker.expired(20.0) == []  # a new head: a new deadline from 20
    assert tracker.expired(29.0) == []
    assert tracker.expired(30.0) == [t]


def test_a_cluster_whose_protocol_changes_gets_a_connector_for_the_new_one() -> None:
    """A service first seen without its protocol (HTTP by default) and then as gRPC: the
    connector (in sidecars: which ALPN to offer over mTLS) must follow."""
    from sidecar.config.model import ClusterSpec, Endpoint
    from sidecar.upstream.manager import ClusterManager

    made: list[str] = []

    def connector(spec: ClusterSpec):  # type: ignore[no-untyped-def]
        made.append(spec.protocol)

        async def connect(address: str, port: int, timeout_s: float):  # type: ignore[no-untyped-def]
            raise AssertionError("not called")

        return connect

    manager = ClusterManager(connector=connector)
    ep = (Endpoint(address="127.0.0.1", port=1),)
    http = ClusterSpec(name="default/catalog:80", service="catalog", namespace="default",
                       protocol="HTTP", endpoints=ep)  # fmt: skip
    manager.sync({http.name: http}, 0.0)
    first = manager.get(http.name)
    grpc = dataclasses.replace(http, protocol="GRPC")
    manager.sync({grpc.name: grpc}, 1.0)
    second = manager.get(grpc.name)
    assert made == ["HTTP", "GRPC"] and second is not first
    assert second is not None and second.spec.protocol == "GRPC"
    more = (*ep, Endpoint(address="127.0.0.1", port=2))
    manager.sync({grpc.name: dataclasses.replace(grpc, endpoints=more)}, 2.0)
    assert manager.get(grpc.name) is second and made == ["HTTP", "GRPC"]  # same protocol: kept


def test_smooth_weighted_split_is_exact_over_small_windows() -> None:
    from sidecar.config.split import SmoothWeighted

    split = SmoothWeighted((90, 10))
    picks = [split.pick() for _ in range(1000)]
    assert picks.count(1) == 100
    for start in range(0, 1000, 10):  # 9 and 1 in every window of 10, not 9 in a row
        assert picks[start : start + 10].count(1) == 1
    three = SmoothWeighted((5, 0, 2))
    got = [three.pick() for _ in range(700)]
    assert got.count(1) == 0 and got.count(0) == 500 and got.count(2) == 200
    for start in range(0, 700, 7):
        assert got[start : start + 7].count(2) == 2
    assert got[:7] != sorted(got[:7])  # spread out, not grouped


def weighted_stats(*weights: int) -> list[EndpointStats]:
    return [
        EndpointStats(Endpoint(address="10.0.0.1", port=8000 + i, weight=w), 0.0)
        for i, w in enumerate(weights)
    ]


@pytest.mark.parametrize("balancer", [PeakEwma, LeastRequest, RoundRobin])
def test_weights_set_the_share_of_picks(balancer: type) -> None:
    """Consul's Weights.Passing 3:1 gives three times the picks, with every balancer."""
    stats = weighted_stats(3, 1)
    cumulative = cumulative_weights([3, 1])
    rng = random.Random(7)
    b = balancer()
    counts = {8000: 0, 8001: 0}
    for _ in range(4000):
        counts[b.pick(stats, rng, 0.0, cumulative).endpoint.port] += 1
    assert 0.70 <= counts[8000] / 4000 <= 0.80, counts


def test_equal_weights_take_the_unweighted_path() -> None:
    assert cumulative_weights([2, 2, 2]) is None
    assert cumulative_weights([1, 3]) == (1, 4)
