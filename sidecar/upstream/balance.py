"""Load balancers over a cluster's endpoints: pure, with time and randomness injected.

The default is power-of-two-choices over peak-EWMA latency (Finagle, Linkerd): pick two
endpoints at random, take the one whose decayed peak latency times outstanding requests
is lower. A slow endpoint is avoided at once (the peak is taken as is) and forgiven
gradually (the estimate decays towards zero while it goes unobserved, so it is tried
again). Least-request is the same two choices by outstanding requests; round robin is a
counter.

Endpoints can carry weights (Consul's `Weights.Passing`): then the two candidates are drawn
with probability proportional to weight (so at equal load an endpoint of weight 3 gets three
times the picks of one of weight 1, while a slow or busy one is still avoided), and round
robin walks the cumulative weights. `cumulative` is None when all weights are equal (the
common, faster case).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from typing import Protocol

from sidecar.config.model import Endpoint
from sidecar.upstream.breaker import Outlier

DECAY_S = 10.0
DEFAULT_RTT_S = 0.001  # the guess for an endpoint we have not timed yet


class EndpointStats:
    """Live statistics of one endpoint; owned by its cluster."""

    __slots__ = ("endpoint", "ewma_s", "healthy", "outlier", "pending", "stamp")

    def __init__(self, endpoint: Endpoint, now: float) -> None:
        self.endpoint = endpoint
        self.pending = 0
        self.ewma_s = DEFAULT_RTT_S
        self.stamp = now
        self.outlier = Outlier()  # passive health: this endpoint's breaker
        self.healthy = True  # active health checks' verdict

    def cost(self, now: float) -> float:
        decayed = self.ewma_s * math.exp(-max(0.0, now - self.stamp) / DECAY_S)
        return (decayed + 1e-6) * (self.pending + 1)

    def observe(self, rtt_s: float, now: float) -> None:
        if rtt_s > self.ewma_s:
            self.ewma_s = rtt_s
        else:
            w = math.exp(-max(0.0, now - self.stamp) / DECAY_S)
            self.ewma_s = self.ewma_s * w + rtt_s * (1.0 - w)
        self.stamp = now


Cumulative = Sequence[int] | None  # running sums of the endpoints' weights


def cumulative_weights(weights: Sequence[int]) -> Cumulative:
    if len(set(weights)) <= 1:
        return None
    out, total = [], 0
    for w in weights:
        total += w
        out.append(total)
    return tuple(out)


class Balancer(Protocol):
    def pick(
        self,
        stats: Sequence[EndpointStats],
        rng: random.Random,
        now: float,
        cumulative: Cumulative = None,
    ) -> EndpointStats:
        """Choose one of a non-empty sequence."""
        ...


def _two(
    stats: Sequence[EndpointStats], rng: random.Random, cumulative: Cumulative
) -> tuple[EndpointStats, EndpointStats]:
    """Two distinct endpoints, drawn uniformly or by weight (len(stats) >= 2)."""
    n = len(stats)
    if cumulative is None:
        i = int(rng.random() * n)
        j = int(rng.random() * (n - 1))
        return stats[i], stats[j + 1 if j >= i else j]
    total = cumulative[-1]
    i = bisect.bisect_right(cumulative, rng.random() * total)
    j = i
    for _ in range(8):  # a distinct second draw; give up to the neighbour if unlucky
        j = bisect.bisect_right(cumulative, rng.random() * total)
        if j != i:
            break
    else:
        j = (i + 1) % n
    return stats[i], stats[j]


class PeakEwma:
    def pick(
        self, stats: Sequence[EndpointStats], rng: random.Random, now: float,
        cumulative: Cumulative = None,
    ) -> EndpointStats:  # fmt: skip
        if len(stats) == 1:
            return stats[0]
        a, b = _two(stats, rng, cumulative)
        return a if a.cost(now) <= b.cost(now) else b


class LeastRequest:
    def pick(
        self, stats: Sequence[EndpointStats], rng: random.Random, now: float,
        cumulative: Cumulative = None,
    ) -> EndpointStats:  # fmt: skip
        if len(stats) == 1:
            return stats[0]
        a, b = _two(stats, rng, cumulative)
        return a if a.pending <= b.pending else b


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def pick(
        self, stats: Sequence[EndpointStats], rng: random.Random, now: float,
        cumulative: Cumulative = None,
    ) -> EndpointStats:  # fmt: skip
        n = self._next
        self._next += 1
        if cumulative is None:
            return stats[n % len(stats)]
        return stats[bisect.bisect_right(cumulative, n % cumulative[-1])]


def make_balancer(policy: str) -> Balancer:
    if policy == "round_robin":
        return RoundRobin()
    if policy == "least_request":
        return LeastRequest()
    return PeakEwma()
