"""Retry decisions (pure): what may be sent again, how long to wait, and the budget.

Theory of operation. A try ends in one of four ways that may be retried:
- NOT_SENT: the connect failed, the stream was refused, or the peer's sidecar answered
  that it could not reach its app (`x-weft-error: connect_failure`). The app never saw the
  request, so every method is retried.
- RESET: the upstream closed or reset before a response; TIMEOUT: the per-try timeout
  fired before a response; STATUS: a response whose status the policy names. The app may
  have acted on these, so they are retried only for idempotent methods, or when the route
  says so (`non_idempotent`): a POST is never sent twice by default.
Whatever the cause, a request whose body streamed past the policy's buffer is never
replayed, no more than `attempts` retries are made, and each retry must be paid for by the
cluster's budget: retries within a sliding window may add at most `ratio` of the requests
in it plus a floor per second, so a failing service sees at most ~1.2x its load, not 3x.
"""

from __future__ import annotations

import enum

from sidecar.config.model import IDEMPOTENT, RetryBudget, RetryPolicy


class Failure(enum.Enum):
    NOT_SENT = "connect_failure"
    RESET = "reset"
    TIMEOUT = "per_try_timeout"
    STATUS = "status"


def retryable(policy: RetryPolicy, method: str, failure: Failure, status: int = 0) -> bool:
    """May a try that ended in `failure` be retried (attempts and budget aside)?"""
    if failure is Failure.NOT_SENT:
        return True
    if not (policy.non_idempotent or method in IDEMPOTENT):
        return False
    return failure is not Failure.STATUS or status in policy.codes


def backoff_s(policy: RetryPolicy, retry: int, unit: float) -> float:
    """The wait before retry number `retry` (1, 2, ...): exponential, capped, with full
    jitter (`unit` is uniform in [0, 1)) so that callers failing together spread out."""
    cap = min(policy.backoff_max_s, policy.backoff_base_s * (2.0 ** (retry - 1)))
    return cap * unit


class Budget:
    """A cluster's retry budget over a sliding window of one-second buckets."""

    __slots__ = ("buckets", "config", "requests", "retries", "stamp")

    def __init__(self, config: RetryBudget, now: float) -> None:
        self.config = config
        self.buckets = max(1, int(config.window_s))
        self.requests = [0] * self.buckets
        self.retries = [0] * self.buckets
        self.stamp = int(now)  # the second the newest bucket counts

    def _advance(self, now: float) -> int:
        second = int(now)
        gap = second - self.stamp
        if gap > 0:
            n = self.buckets
            for s in range(self.stamp + 1, self.stamp + 1 + min(gap, n)):
                self.requests[s % n] = 0
                self.retries[s % n] = 0
            self.stamp = second
        return self.stamp % self.buckets

    def request(self, now: float) -> None:
        """Count one request (its first try)."""
        second = int(now)
        index = second % self.buckets if second == self.stamp else self._advance(now)
        self.requests[index] += 1

    def allowed(self, now: float) -> float:
        """Retries the window still allows (may be fractional or negative)."""
        self._advance(now)
        c = self.config
        cap = c.ratio * sum(self.requests) + c.min_per_s * self.buckets
        return cap - sum(self.retries)

    def withdraw(self, now: float) -> bool:
        """Take one retry if the budget allows it."""
        if self.allowed(now) < 1.0:
            return False
        self.retries[self._advance(now)] += 1
        return True
