"""Circuit breaking (pure): per-cluster limits and per-endpoint outlier detection.

Limits. A cluster admits a request only while its in-flight requests, connections being
opened and open connections are under the BackendTrafficPolicy's limits; over one, the
caller answers 503 at once with `x-weft-overload: <limit>` (nothing queues).

Outlier detection. Each endpoint has a breaker in the standard sense:
- CLOSED: traffic flows; consecutive gateway errors (502/503/504, connect failures, resets,
  timeouts) or consecutive 5xx responses are counted, any other answer resets the count.
  Behind a peer's sidecar, a 502/503/504 its app answered itself (the sidecar marks the
  errors it answers, `x-weft-error`) is a 5xx, not a gateway error: an app reporting that
  its own dependencies fail is not an instance that cannot serve.
- OPEN: the endpoint is ejected (gets no traffic) until its ejection ends. The time is the
  base time multiplied by how many times it was ejected (capped), so an endpoint that keeps
  failing stays out longer; the count decays by one for each base period spent healthy.
  No more than `max_ejection_percent` of a cluster's endpoints are open at once (but one
  always may be).
- HALF_OPEN: the ejection time is over. With active health checks the endpoint waits for
  a passing check; without, it takes one trial request at a time. A success closes the
  breaker; a failure opens it again at once, for longer.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from sidecar.config.model import CircuitLimits, OutlierPolicy

GATEWAY_ERRORS = frozenset({502, 503, 504})


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def over_limit(
    limits: CircuitLimits, requests: int, pending: int, connections: int, connecting: bool
) -> str | None:
    """The limit a new request would break, if any (`connecting`: it needs a new
    connection because none is idle)."""
    if requests >= limits.max_requests:
        return "max_requests"
    if connecting:
        if pending >= limits.max_pending_requests:
            return "max_pending_requests"
        if connections >= limits.max_connections:
            return "max_connections"
    return None


class Outlier:
    """One endpoint's breaker."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejections", "returned", "until")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejections = 0  # the multiplier of the next ejection, minus one
        self.until = 0.0  # open until then
        self.returned = 0.0  # when the last ejection ended (or 0: never ejected)

    def state(self, now: float) -> State:
        if self.until == 0.0:
            return State.CLOSED
        return State.OPEN if now < self.until else State.HALF_OPEN

    def record(
        self, policy: OutlierPolicy, status: int, now: float, *, app_error: bool = False
    ) -> bool:
        """Count one outcome (`status` 0: no response: connect failure, reset, timeout;
        `app_error`: the peer's app answered this 5xx itself); True when the breaker should
        open (the caller checks the cluster's maximum)."""
        gateway = status == 0 or (status in GATEWAY_ERRORS and not app_error)
        counted = gateway or (status >= 500 and (not app_error or policy.consecutive_5xx > 0))
        if not counted:
            if self.until and now >= self.until:  # the half-open trial passed
                self.close(policy, now)
            self.consecutive_5xx = self.consecutive_gateway = 0
            return False
        if self.until:
            return now >= self.until  # a half-open trial failed: open again
        self.consecutive_5xx = self.consecutive_5xx + 1 if status >= 500 else 0
        self.consecutive_gateway = self.consecutive_gateway + 1 if gateway else 0
        return bool(
            (policy.consecutive_5xx and self.consecutive_5xx >= policy.consecutive_5xx)
            or (
                policy.consecutive_gateway_errors
                and self.consecutive_gateway >= policy.consecutive_gateway_errors
            )
        )

    def open(self, policy: OutlierPolicy, now: float) -> float:
        """Eject; returns the ejection time."""
        if self.returned and policy.base_ejection_s > 0:
            healthy_periods = int((now - self.returned) / policy.base_ejection_s)
            self.ejections = max(0, self.ejections - healthy_periods)
        self.ejections += 1
        duration = min(policy.max_ejection_s, policy.base_ejection_s * self.ejections)
        self.until = now + duration
        self.consecutive_5xx = self.consecutive_gateway = 0
        return duration

    def close(self, policy: OutlierPolicy, now: float) -> None:
        self.until = 0.0
        self.returned = now


def may_eject(policy: OutlierPolicy, open_now: int, endpoints: int) -> bool:
    """Would one more open breaker stay within the cluster's maximum percentage? One
    endpoint may always be ejected (as in Envoy), so a version whose only instance fails
    leaves a split and its share goes to the others."""
    return open_now == 0 or (open_now + 1) * 100 <= policy.max_ejection_percent * endpoints


def count_open(outliers: Sequence[Outlier], now: float) -> int:
    return sum(1 for o in outliers if o.until and now < o.until)
