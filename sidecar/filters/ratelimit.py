"""Local rate limits (BackendTrafficPolicy.rateLimit, `type: Local`): token buckets per
rule and per key, answered 429 at the edge.

Theory of operation. A rule says which requests it counts (`clientSelectors`: a header,
present with a value or per distinct value; a client CIDR, shared or per distinct client;
none: every request of the route) and how many (`requests` per `unit`). Each rule keeps a
token bucket per key: `requests` tokens, refilled smoothly at `requests/unit`: a client
may burst up to the limit and is then held to the rate, one request every
unit/requests. Unlike fixed windows there is no edge where a second full limit passes at
once; any window of one unit holds at most the burst plus what refills during it (Envoy's
local limit has the same bound). A request takes a token from every rule that
counts it; if any bucket is empty it is answered `429` with `Retry-After` and the
`RateLimit-Limit/-Remaining/-Reset` fields (draft-ietf-httpapi-ratelimit-headers), which
forwarded answers carry too.

Buckets outlive a configuration: `RateLimitState` owns them (one per proxy process) and
gives each compiled filter its tables on every snapshot swap, keeping those of rules that
did not change. Keys are bounded per rule (least recently used out): a flood of distinct
client addresses costs bounded memory, and an evicted key starts again with a full bucket.
Time is injected (`clock`), so the arithmetic is tested with a fake clock.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sidecar.config.headerops import HeaderOps
from sidecar.filters.chain import Exchange, LocalReply, address

MAX_KEYS = 100_000  # per rule
UNITS = {"Second": 1.0, "Minute": 60.0, "Hour": 3600.0, "Day": 86400.0}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class HeaderSelector:
    name: bytes  # lower case
    value: bytes | None  # None: per distinct value (`type: Distinct`)


@dataclass(frozen=True, slots=True)
class CidrSelector:
    network: Network
    distinct: bool  # per client address, or one bucket for the whole range


@dataclass(frozen=True, slots=True)
class LimitRule:
    requests: int
    unit_s: float
    headers: tuple[HeaderSelector, ...] = ()
    cidr: CidrSelector | None = None

    def key(self, x: Exchange) -> tuple[bytes | str, ...] | None:
        """What this request counts under, or None when the rule does not count it."""
        out: list[bytes | str] = []
        for h in self.headers:
            value = x.header(h.name)
            if value is None or (h.value is not None and value != h.value):
                return None
            if h.value is None:
                out.append(value)
        if self.cidr is not None:
            addr = address(x.client)
            if addr is None or addr not in self.cidr.network:
                return None
            if self.cidr.distinct:
                out.append(x.client)
        return tuple(out)


class Buckets:
    """One rule's token buckets by key: (tokens, when) with LRU eviction."""

    __slots__ = ("max_keys", "rate", "rule", "state")

    def __init__(self, rule: LimitRule, max_keys: int = MAX_KEYS) -> None:
        self.rule = rule
        self.rate = rule.requests / rule.unit_s  # tokens per second
        self.max_keys = max_keys
        self.state: OrderedDict[tuple[bytes | str, ...], tuple[float, float]] = OrderedDict()

    def take(self, key: tuple[bytes | str, ...], now: float) -> tuple[bool, float, float]:
        """(allowed, tokens left, seconds until a token is back) for one request."""
        cap = float(self.rule.requests)
        found = self.state.pop(key, None)
        tokens = cap if found is None else min(cap, found[0] + (now - found[1]) * self.rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self.state[key] = (tokens, now)
        if len(self.state) > self.max_keys:
            self.state.popitem(last=False)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        return allowed, tokens, wait


class RateLimitFilter:
    __slots__ = ("buckets", "clock", "name", "rules")

    def __init__(self, name: str, rules: tuple[LimitRule, ...]) -> None:
        self.name = name  # the policy's namespace/name: its buckets' owner key
        self.rules = rules
        self.buckets: list[Buckets] = [Buckets(r) for r in rules]  # replaced by the owner
        self.clock: Callable[[], float] = time.monotonic

    def describe(self) -> str:
        limits = ", ".join(f"{r.requests}/{r.unit_s:g}s" for r in self.rules)
        return f"rate limit {self.name}: {limits}"

    def on_request(self, x: Exchange) -> LocalReply | None:
        now = self.clock()
        tightest: tuple[float, int, float] | None = None  # (remaining, limit, reset)
        refused: float | None = None
        for b in self.buckets:
            key = b.rule.key(x)
            if key is None:
                continue
            allowed, left, wait = b.take(key, now)
            if not allowed:
                refused = max(refused or 0.0, wait)
            reset = (b.rule.requests - left) / b.rate
            if tightest is None or left < tightest[0]:
                tightest = (left, b.rule.requests, reset)
        if tightest is None:
            return None
        left, limit, reset = tightest
        return verdict(x, limit, left, reset, refused)


_FIELDS = frozenset({b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset"})


def verdict(
    x: Exchange, limit: int, left: float, reset_s: float, refused_for_s: float | None
) -> LocalReply | None:
    """The answer to a counted request: 429 with Retry-After when refused, else the
    RateLimit-* fields (draft-ietf-httpapi-ratelimit-headers) on the forwarded answer."""
    fields = (
        (b"ratelimit-limit", b"%d" % limit),
        (b"ratelimit-remaining", b"%d" % max(0, math.floor(left))),
        (b"ratelimit-reset", b"%d" % math.ceil(reset_s)),
    )
    if refused_for_s is not None:
        retry = (b"retry-after", b"%d" % max(1, math.ceil(refused_for_s)))
        return LocalReply(429, b"too many requests\n", (*fields, retry), "rate_limited")
    x.response_ops.append(HeaderOps(drop=_FIELDS, append=fields))
    return None


class RateLimitState:
    """The buckets of every rate-limit filter in force, kept across snapshots: a filter
    of an unchanged policy gets the buckets its predecessor filled."""

    def __init__(self) -> None:
        self.tables: dict[str, tuple[tuple[LimitRule, ...], list[Buckets]]] = {}

    def sync(self, filters: Iterable[RateLimitFilter]) -> None:
        kept: dict[str, tuple[tuple[LimitRule, ...], list[Buckets]]] = {}
        for f in filters:
            old = kept.get(f.name) or self.tables.get(f.name)
            if old is not None and old[0] == f.rules:
                f.buckets = old[1]
            kept[f.name] = (f.rules, f.buckets)
        self.tables = kept
