"""Pure cores of resilience: retry rules, backoff, budget, breakers, ejection, health verdicts,
splits that skip unhealthy versions. Time is a number the test moves (a fake clock)."""

from __future__ import annotations

import random

import pytest

from sidecar.config.model import (
    CircuitLimits,
    ClusterSpec,
    Endpoint,
    HealthCheckPolicy,
    OutlierPolicy,
    RetryBudget,
    RetryPolicy,
)
from sidecar.config.split import SmoothWeighted
from sidecar.upstream.breaker import Outlier, State, may_eject, over_limit
from sidecar.upstream.cluster import Cluster
from sidecar.upstream.health import Verdict
from sidecar.upstream.retry import Budget, Failure, backoff_s, retryable

# -- which failures may be retried ---------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE"])
def test_never_sent_is_retried_for_every_method(method: str) -> None:
    assert retryable(RetryPolicy(), method, Failure.NOT_SENT)


def test_reset_and_timeout_retried_only_for_idempotent_methods() -> None:
    p = RetryPolicy()
    for failure in (Failure.RESET, Failure.TIMEOUT):
        assert retryable(p, "GET", failure)
        assert retryable(p, "PUT", failure)
        assert not retryable(p, "POST", failure)
        assert not retryable(p, "PATCH", failure)


def test_status_retried_only_when_named_and_safe() -> None:
    p = RetryPolicy(codes=frozenset({503}))
    assert retryable(p, "GET", Failure.STATUS, 503)
    assert not retryable(p, "GET", Failure.STATUS, 500)
    assert not retryable(p, "POST", Failure.STATUS, 503)  # a double payout
    unsafe = RetryPolicy(codes=frozenset({503}), non_idempotent=True)  # the route said so
    assert retryable(unsafe, "POST", Failure.STATUS, 503)
    assert retryable(unsafe, "POST", Failure.RESET)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    p = RetryPolicy(backoff_base_s=0.025, backoff_max_s=0.25)
    assert [backoff_s(p, n, 0.999999) for n in (1, 2, 3, 4, 5)] == pytest.approx(
        [0.025, 0.05, 0.1, 0.2, 0.25], rel=1e-3
    )
    assert backoff_s(p, 3, 0.0) == 0.0
    rng = random.Random(7)
    waits = [backoff_s(p, 2, rng.random()) for _ in range(1000)]
    assert min(waits) >= 0.0 and max(waits) < 0.05
    assert len({round(w, 6) for w in waits}) > 900  # spread out, not in lockstep


# -- the budget ------------------------------------------------------------------------------


def test_budget_allows_ratio_of_requests_plus_floor() -> None:
    budget = Budget(RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10.0), now=100.0)
    for _ in range(500):
        budget.request(100.5)
    granted = sum(budget.withdraw(100.5) for _ in range(1000))
    assert granted == 0.2 * 500 + 1.0 * 10


def test_budget_window_slides() -> None:
    budget = Budget(RetryBudget(ratio=0.2, min_per_s=0.0, window_s=10.0), now=0.0)
    for _ in range(100):
        budget.request(0.2)
    assert sum(budget.withdraw(0.3) for _ in range(50)) == 20
    assert not budget.withdraw(9.9)  # still within the window: spent
    # 10 s later the requests and the retries they paid for have left the window
    assert budget.allowed(10.5) == 0.0
    for _ in range(10):
        budget.request(10.5)
    assert sum(budget.withdraw(10.6) for _ in range(10)) == 2


def test_budget_caps_amplification_under_sustained_failure() -> None:
    """Every request fails and wants 2 retries: extra load stays ~20% + floor."""
    cfg = RetryBudget(ratio=0.2, min_per_s=2.0, window_s=10.0)
    budget = Budget(cfg, now=0.0)
    requests = retries = 0
    t = 0.0
    while t < 60.0:  # 200 requests per second for a minute
        budget.request(t)
        requests += 1
        for _ in range(2):
            retries += budget.withdraw(t)
        t += 0.005
    assert retries <= 0.2 * requests + cfg.min_per_s * 60.0 + 1
    assert (requests + retries) / requests < 1.25


# -- breakers ------------------------------------------------------------------------------

POLICY = OutlierPolicy(consecutive_gateway_errors=3, base_ejection_s=30.0, max_ejection_s=100.0)


def test_consecutive_gateway_errors_open_and_any_success_resets() -> None:
    o = Outlier()
    assert not o.record(POLICY, 503, 0.0)
    assert not o.record(POLICY, 0, 0.1)  # a reset or connect failure counts too
    assert not o.record(POLICY, 200, 0.2)  # ... and a success starts again
    assert not o.record(POLICY, 502, 0.3)
    assert not o.record(POLICY, 504, 0.4)
    assert o.record(POLICY, 503, 0.5)
    o2 = Outlier()
    for t in range(10):
        assert not o2.record(POLICY, 500, float(t))  # 5xx counting is off by default


def test_a_peer_apps_own_errors_are_not_gateway_errors() -> None:
    o = Outlier()
    for t in range(10):  # a peer's app answering 502 itself: the instance serves
        assert not o.record(POLICY, 502, float(t), app_error=True)
    assert not o.record(POLICY, 503, 10.0)  # its sidecar's own 503s do count
    assert not o.record(POLICY, 502, 10.1, app_error=True)  # an app answered: count reset
    assert not o.record(POLICY, 503, 10.2)
    assert not o.record(POLICY, 0, 10.3)
    assert o.record(POLICY, 504, 10.4)
    counting = OutlierPolicy(consecutive_5xx=2, consecutive_gateway_errors=0)
    o2 = Outlier()  # 5xx counting, when asked for, counts an app's errors too
    assert not o2.record(counting, 502, 0.0, app_error=True)
    assert o2.record(counting, 500, 0.1, app_error=True)


def test_consecutive_5xx_when_configured() -> None:
    p = OutlierPolicy(consecutive_5xx=2, consecutive_gateway_errors=0)
    o = Outlier()
    assert not o.record(p, 500, 0.0)
    assert o.record(p, 501, 0.1)


def test_ejection_grows_with_repeats_is_capped_and_decays() -> None:
    o = Outlier()
    assert o.state(0.0) is State.CLOSED
    assert o.open(POLICY, 0.0) == 30.0
    assert o.state(29.9) is State.OPEN
    assert o.state(30.0) is State.HALF_OPEN
    assert o.record(POLICY, 503, 30.1)  # the half-open trial failed: open again, longer
    assert o.open(POLICY, 30.1) == 60.0
    assert o.record(POLICY, 503, 90.2)
    assert o.open(POLICY, 90.2) == 90.0
    assert o.record(POLICY, 503, 180.3)
    assert o.open(POLICY, 180.3) == 100.0  # capped at maxEjectionTime
    assert not o.record(POLICY, 200, 280.4)  # the trial passed: closed
    assert o.state(280.4) is State.CLOSED
    # healthy for 3 base periods: the multiplier drops from 4 to 1 before the next ejection
    assert o.open(POLICY, 280.4 + 95.0) == 60.0


def test_max_ejection_percent() -> None:
    p = OutlierPolicy(max_ejection_percent=50)
    assert may_eject(p, 0, 3) and not may_eject(p, 1, 3)
    assert may_eject(p, 1, 4) and not may_eject(p, 2, 4)
    assert may_eject(p, 0, 1)  # one endpoint may always be ejected ...
    assert not may_eject(OutlierPolicy(max_ejection_percent=0), 1, 1)  # ... but only one
    assert may_eject(OutlierPolicy(max_ejection_percent=100), 1, 2)


def test_limits_answer_at_once_naming_the_limit() -> None:
    lim = CircuitLimits(max_connections=2, max_pending_requests=1, max_requests=3)
    assert over_limit(lim, 2, 0, 2, connecting=False) is None  # an idle connection is free
    assert over_limit(lim, 3, 0, 0, connecting=False) == "max_requests"
    assert over_limit(lim, 1, 1, 0, connecting=True) == "max_pending_requests"
    assert over_limit(lim, 1, 0, 2, connecting=True) == "max_connections"


def _cluster(n: int, **kw: object) -> Cluster:
    eps = tuple(Endpoint(address="127.0.0.1", port=9000 + i) for i in range(n))
    spec = ClusterSpec(name="ns/svc:80", service="svc", namespace="ns", endpoints=eps, **kw)  # type: ignore[arg-type]
    return Cluster(spec, 0.0)


def test_cluster_ejects_within_max_and_routes_around() -> None:
    c = _cluster(3, outlier=POLICY, lb_policy="round_robin")
    a, b, _ = c.stats
    for t in range(3):
        c.observe(a, 503, float(t))
    assert c.open_count(3.0) == 1
    rng = random.Random(1)
    picks = {c.pick(rng, 3.0).endpoint.port for _ in range(30)}  # type: ignore[union-attr]
    assert picks == {9001, 9002}
    for t in range(3):  # a second bad endpoint is not ejected: 2 of 3 > 50%
        assert c.observe(b, 503, 4.0 + t) == 0.0
    assert c.open_count(10.0) == 1
    # after 30 s: a is half-open and gets exactly one trial at a time
    one = _cluster(1, outlier=POLICY, panic_threshold=0)
    for t in range(3):
        one.observe(one.stats[0], 503, float(t))
    assert not one.has_endpoints(10.0)
    assert one.has_endpoints(33.0)  # time alone brings the trial back
    trial = c.pick(rng, 33.0)
    assert trial is a
    a.pending = 1
    assert c.pick(rng, 33.0) is not a
    a.pending = 0
    c.observe(a, 200, 33.1)
    assert a.outlier.state(33.1) is State.CLOSED
    assert c.open_count(33.1) == 0


def test_cluster_with_health_checks_waits_for_a_passing_check() -> None:
    c = _cluster(2, outlier=POLICY, health_check=HealthCheckPolicy())
    a = c.stats[0]
    for t in range(3):
        c.observe(a, 0, float(t))
    rng = random.Random(2)
    assert all(c.pick(rng, 40.0) is not a for _ in range(20))  # time is up, no check yet
    a.outlier.close(POLICY, 41.0)  # what a passing check does (upstream/health.py)
    c.refresh(41.0)
    assert any(c.pick(rng, 41.0) is a for _ in range(20))


def test_cluster_avoids_endpoints_already_tried() -> None:
    c = _cluster(3)
    rng = random.Random(3)
    first = c.stats[0].endpoint
    assert all(c.pick(rng, 0.0, [first]).endpoint != first for _ in range(50))  # type: ignore[union-attr]
    one = _cluster(1)  # nowhere else to go: the same one again
    assert one.pick(rng, 0.0, [one.stats[0].endpoint]) is one.stats[0]


def test_unhealthy_endpoints_leave_rotation() -> None:
    c = _cluster(2, panic_threshold=0)
    c.stats[0].healthy = c.stats[1].healthy = False
    c.refresh(0.0)
    assert c.pick(random.Random(), 0.0) is None and not c.has_endpoints(0.0)


def test_under_the_panic_threshold_every_endpoint_takes_traffic() -> None:
    rng = random.Random(4)
    c = _cluster(4, outlier=OutlierPolicy(max_ejection_percent=100), lb_policy="round_robin")
    for s in c.stats[:2]:  # 2 of 4 healthy: 50% is not under 50%
        s.outlier.open(POLICY, 0.0)
    c.refresh(0.0)
    assert {c.pick(rng, 1.0).endpoint.port for _ in range(20)} == {9002, 9003}  # type: ignore[union-attr]
    assert c.healthy(1.0) and not c.panic
    c.stats[2].healthy = False  # 1 of 4: panic, all four take traffic
    c.refresh(1.0)
    assert c.panic and c.healthy(1.0)
    assert {c.pick(rng, 1.0).endpoint.port for _ in range(20)} == {9000, 9001, 9002, 9003}  # type: ignore[union-attr]
    c.stats[3].healthy = False  # none healthy: still served (panic), but not healthy
    c.refresh(1.0)
    assert c.has_endpoints(1.0) and not c.healthy(1.0)
    c.stats[2].healthy = c.stats[3].healthy = True  # back over the threshold
    c.refresh(1.0)
    assert not c.panic
    assert {c.pick(rng, 1.0).endpoint.port for _ in range(20)} == {9002, 9003}  # type: ignore[union-attr]


def test_a_split_with_no_healthy_backend_falls_back_to_its_weights() -> None:
    from sidecar.config.model import Backend, RouteAction
    from sidecar.http.request import pick_backend

    backends = (Backend(cluster="a", weight=3), Backend(cluster="b", weight=1))
    action = RouteAction(backends=backends, split=SmoothWeighted((3, 1)), route="r", rule=0)
    healthy = {"a": False, "b": True}
    picks = [pick_backend(action, lambda b: healthy[b.cluster or ""]) for _ in range(8)]
    assert {p.cluster for p in picks if p} == {"b"}  # a's share goes to b
    healthy["b"] = False
    picks = [pick_backend(action, lambda b: healthy[b.cluster or ""]) for _ in range(8)]
    assert [p.cluster for p in picks if p].count("a") == 6  # by weight, 3:1


# -- health verdicts -----------------------------------------------------------------------


def test_health_thresholds() -> None:
    p = HealthCheckPolicy(healthy_threshold=2, unhealthy_threshold=3)
    v = Verdict()
    assert [v.observe(False, p) for _ in range(3)] == [False, False, True]
    assert not v.healthy
    assert [v.observe(True, p), v.observe(False, p), v.observe(True, p)] == [False] * 3
    assert v.observe(True, p) and v.healthy


# -- splits --------------------------------------------------------------------------------


def test_split_90_10_holds_over_every_window() -> None:
    split = SmoothWeighted((90, 10))
    picks = [split.pick() for _ in range(1000)]
    assert picks.count(1) == 100
    for i in range(0, 901):
        assert 5 <= picks[i : i + 100].count(1) <= 15


def test_split_gives_an_unusable_share_to_the_others() -> None:
    split = SmoothWeighted((60, 30, 10))
    picks = [split.pick([True, False, True]) for _ in range(700)]
    assert 1 not in picks
    assert picks.count(0) == 600 and picks.count(2) == 100  # 60:10, in proportion
    assert split.pick([False, False, False]) == -1
    back = [split.pick() for _ in range(1000)]
    assert abs(back.count(1) - 300) <= 2
