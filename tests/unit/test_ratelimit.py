"""Local rate limits: token buckets with a fake clock, keys from headers and CIDRs, the
answer's fields, bounded keys, and buckets kept across configurations."""

from __future__ import annotations

import ipaddress
import itertools

from sidecar.filters.chain import Exchange
from sidecar.filters.ratelimit import (
    Buckets,
    CidrSelector,
    HeaderSelector,
    LimitRule,
    RateLimitFilter,
    RateLimitState,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _x(client: str = "10.0.0.1", **headers: str) -> Exchange:
    fields = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Exchange("GET", "api", "/", "", fields, client)


def _filter(*rules: LimitRule) -> tuple[RateLimitFilter, Clock]:
    f = RateLimitFilter("ns/p", rules)
    clock = Clock()
    f.clock = clock
    return f, clock


def test_a_bucket_bursts_to_the_limit_then_refills_smoothly() -> None:
    f, clock = _filter(LimitRule(requests=10, unit_s=60.0))
    answers = [f.on_request(_x()) for _ in range(12)]
    assert [a is None for a in answers] == [True] * 10 + [False] * 2
    refused = answers[10]
    assert refused is not None and refused.status == 429 and refused.detail == "rate_limited"
    fields = dict(refused.headers)
    assert fields[b"ratelimit-limit"] == b"10" and fields[b"ratelimit-remaining"] == b"0"
    assert fields[b"retry-after"] == b"6"  # one token every 6 s
    clock.now += 5.9
    assert f.on_request(_x()) is not None
    clock.now += 0.2  # 6.1 s after the last refill point: one token back
    assert f.on_request(_x()) is None
    assert f.on_request(_x()) is not None
    # paced attempts for 5 minutes: the burst, then exactly the refill rate; no window of
    # one unit ever holds more than the burst plus what refills during it
    f2, clock2 = _filter(LimitRule(requests=10, unit_s=60.0))
    admitted = []
    for step in range(600):  # one attempt every 0.5 s
        clock2.now = 1000.0 + step * 0.5
        if f2.on_request(_x()) is None:
            admitted.append(clock2.now)
    assert len(admitted) == 10 + 49  # 10 at once, then one every 6 s (t=6 … t=294)
    for i, t in enumerate(admitted):
        assert len([u for u in admitted[i:] if u < t + 60.0]) <= 10 + 10
    after_burst = admitted[10:]
    assert all(b - a == 6.0 for a, b in itertools.pairwise(after_burst))


def test_forwarded_answers_carry_the_fields() -> None:
    f, _ = _filter(LimitRule(requests=3, unit_s=1.0))
    x = _x()
    assert f.on_request(x) is None
    (ops,) = x.response_ops
    fields = dict(ops.apply([(b"ratelimit-limit", b"999")]))
    assert fields[b"ratelimit-limit"] == b"3" and fields[b"ratelimit-remaining"] == b"2"
    assert fields[b"ratelimit-reset"] == b"1"


def test_keys_from_headers_and_client_ranges() -> None:
    per_user = LimitRule(requests=1, unit_s=60.0, headers=(HeaderSelector(b"x-user", None),))
    gold = LimitRule(requests=1, unit_s=60.0, headers=(HeaderSelector(b"x-plan", b"free"),))
    office = LimitRule(requests=1, unit_s=60.0,
                       cidr=CidrSelector(ipaddress.ip_network("10.1.0.0/16"), distinct=True))  # fmt: skip
    f, _ = _filter(per_user, gold, office)
    assert f.on_request(_x(x_user="a")) is None
    assert f.on_request(_x(x_user="b")) is None  # another user: another bucket
    assert f.on_request(_x(x_user="a")) is not None
    assert f.on_request(_x()) is None  # no x-user: that rule does not count it
    assert f.on_request(_x(x_plan="free")) is None and f.on_request(_x(x_plan="free")) is not None
    assert f.on_request(_x(x_plan="pro")) is None  # only "free" is limited
    assert f.on_request(_x("10.1.0.1")) is None and f.on_request(_x("10.1.0.2")) is None
    assert f.on_request(_x("10.1.0.1")) is not None
    shared = LimitRule(requests=1, unit_s=60.0,
                       cidr=CidrSelector(ipaddress.ip_network("10.1.0.0/16"), distinct=False))  # fmt: skip
    g, _ = _filter(shared)
    assert g.on_request(_x("10.1.0.1")) is None and g.on_request(_x("10.1.0.2")) is not None


def test_keys_are_bounded() -> None:
    b = Buckets(LimitRule(requests=1, unit_s=60.0), max_keys=100)
    for i in range(10_000):
        b.take((f"10.0.{i // 256}.{i % 256}",), 0.0)
    assert len(b.state) == 100
    assert b.take(("10.0.0.0",), 0.0)[0]  # evicted long ago: a full bucket again
    assert not b.take(("10.0.39.15",), 0.0)[0]  # the newest stay


def test_buckets_survive_a_reload_of_an_unchanged_policy() -> None:
    rule = LimitRule(requests=1, unit_s=60.0)
    state = RateLimitState()
    first, _ = _filter(rule)
    state.sync([first])
    assert first.on_request(_x()) is None
    again, _ = _filter(rule)  # the next snapshot's filter for the same policy
    state.sync([again])
    assert again.buckets is first.buckets and again.on_request(_x()) is not None
    changed, _ = _filter(LimitRule(requests=2, unit_s=60.0))
    state.sync([changed])  # a new limit starts afresh
    assert changed.buckets is not first.buckets and changed.on_request(_x()) is None
    state.sync([])
    assert state.tables == {}
