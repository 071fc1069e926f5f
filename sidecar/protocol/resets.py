"""A connection's budget of stream resets from its client (HTTP/2 rapid reset).

CVE-2023-44487: a client opens a stream and resets it at once, over and over; each costs
the server the work of starting a request while the client pays two frames, and the
stream limit never binds because each stream is closed as soon as it opens. As nghttp2
and Envoy do since, a connection gets a token bucket of resets: `burst` at once, refilled
at `rate_per_s`. A client that goes past it is told GOAWAY ENHANCE_YOUR_CALM and closed.
Browsers and gRPC clients that cancel now and then never come near it. Pure: the caller
passes the clock.
"""

from __future__ import annotations

RESET_BURST = 200
RESET_RATE_PER_S = 33.0


class ResetBudget:
    __slots__ = ("at", "burst", "rate_per_s", "tokens")

    def __init__(self, now: float, burst: int = RESET_BURST, rate_per_s: float = RESET_RATE_PER_S):
        self.burst = burst
        self.rate_per_s = rate_per_s
        self.tokens = float(burst)
        self.at = now

    def spend(self, now: float) -> bool:
        """Take one reset; False when the budget is exhausted."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True
