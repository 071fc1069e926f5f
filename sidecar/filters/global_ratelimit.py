"""Global rate limits (BackendTrafficPolicy.rateLimit, `type: Global`): one count shared
by every edge process, kept in Redis, exact.

Theory of operation. Each rule keeps, per key (its client selectors, as for local
limits), a sliding-window log in a Redis sorted set: one entry per admitted request,
scored by the time Redis admitted it. A request runs one Lua script (EVALSHA) over the
keys of every rule that counts it: the script drops entries older than the rule's
window, counts what is left, and — only when every rule has room — adds the request to
all of them. Redis runs a script atomically, so concurrent requests from any number of
edges are counted one at a time, and the time is Redis's own (`TIME`), so edges' clocks
do not matter. The result is exact: any window of one `unit` holds at most `requests`
admissions, wherever it starts — no burst at a window's edge (fixed windows let twice the
limit through there), no error of one replica's share (per-replica counters). A refused
request adds nothing, so clients that keep knocking do not extend their wait.

The cost is memory: one entry per admitted request still in its window (the reason
`requests` is capped at 100,000 per rule), and one round trip to Redis per counted
request. Keys carry the policy in a hash tag (`{ns/name}`), so in Redis Cluster all the
keys of one policy live in one slot and a script may touch them together.

Redis unreachable, slow (over REDIS_TIMEOUT_S) or refusing: the request passes (the
default, fail open: a rate limiter should not take the API down) or is refused 503
(`--ratelimit-fail-closed`); either way it is counted in
`weft_ratelimit_redis_errors_total` and logged at most once per 10 s.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import ssl
from collections.abc import Awaitable
from itertools import count
from typing import TYPE_CHECKING

import trio

from sidecar.errors import ConfigError, why
from sidecar.filters.chain import Exchange, LocalReply, Verdict
from sidecar.filters.ratelimit import LimitRule, verdict

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sidecar.filters.redis_client import RedisClient
    from sidecar.observe.metrics import Metrics

log = logging.getLogger("weft.ratelimit")

REDIS_TIMEOUT_S = 1.0
UNAVAILABLE = LocalReply(503, b"rate limit service unavailable\n", (), "ratelimit_unavailable")

# KEYS: one sorted set per rule that counts the request. ARGV[1]: a member unique to this
# request; then per key, its window (microseconds) and its limit. Returns
# {refused (0/1), microseconds until the fullest refusing window frees a slot, count per key}.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local refused, wait = 0, 0
local out = {0, 0}
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i])
  local limit = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  out[i + 2] = n
  if n >= limit then
    refused = 1
    local oldest = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    local free = tonumber(oldest[2]) + window - now
    if free > wait then wait = free end
  end
end
if refused == 0 then
  for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, now, ARGV[1])
    redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[2 * i]) / 1000))
  end
end
out[1] = refused
out[2] = wait
return out
"""


def global_limits(url: str | None, *, fail_closed: bool = False,
                  tls: ssl.SSLContext | None = None) -> GlobalLimits | None:  # fmt: skip
    """The owner for `--ratelimit-redis URL` (None without one; ConfigError for a bad URL)."""
    if not url:
        return None
    from sidecar.filters.redis_client import RedisClient, RedisTarget

    try:
        target = RedisTarget.parse(url)
    except ValueError as exc:
        raise ConfigError(f"--ratelimit-redis {exc}") from None
    return GlobalLimits(RedisClient(target, tls), fail_open=not fail_closed)


class GlobalLimits:
    """The process's connection to the Redis that global limits count in (the owner
    their filters are given on every snapshot swap)."""

    def __init__(self, client: RedisClient, *, fail_open: bool = True,
                 metrics: Metrics | None = None) -> None:  # fmt: skip
        self.client = client
        self.fail_open = fail_open
        self.metrics = metrics
        self.instance = secrets.token_hex(6)  # makes members unique across edges
        self.serial = count()
        self.logged_at = -1e9

    def sync(self, filters: Iterable[GlobalRateLimitFilter]) -> None:
        for f in filters:
            f.owner = self

    def failed(self, policy: str, exc: BaseException) -> LocalReply | None:
        if self.metrics is not None:
            self.metrics.inc("weft_ratelimit_redis_errors_total", (("policy", policy),))
        now = trio.current_time()
        if now - self.logged_at >= 10.0:
            self.logged_at = now
            log.warning("global rate limit: Redis failed (%s); requests %s", why(exc),
                        "pass (fail open)" if self.fail_open else "are refused 503")  # fmt: skip
        return None if self.fail_open else UNAVAILABLE


class GlobalRateLimitFilter:
    __slots__ = ("name", "owner", "prefix", "rules")

    def __init__(self, name: str, rules: tuple[LimitRule, ...]) -> None:
        self.name = name  # the policy's namespace/name
        self.rules = rules
        self.prefix = f"weft:rl:{{{name}}}:"
        self.owner: GlobalLimits | None = None

    def describe(self) -> str:
        limits = ", ".join(f"{r.requests}/{r.unit_s:g}s" for r in self.rules)
        return f"global rate limit {self.name} (Redis): {limits}"

    def key(self, index: int, selectors: tuple[bytes | str, ...]) -> str:
        """The Redis key of one rule's window for one key (selectors hashed: a client's
        header value never becomes part of a Redis command's key as it is)."""
        digest = hashlib.sha256(repr(selectors).encode()).hexdigest()[:32]
        return f"{self.prefix}{index}:{digest}"

    def on_request(self, x: Exchange) -> Verdict | Awaitable[Verdict]:
        keys: list[str] = []
        counted: list[LimitRule] = []
        for i, rule in enumerate(self.rules):
            selectors = rule.key(x)
            if selectors is not None:
                keys.append(self.key(i, selectors))
                counted.append(rule)
        if not keys:
            return None
        return self._ask(x, keys, counted)

    async def _ask(self, x: Exchange, keys: list[str], rules: list[LimitRule]) -> Verdict:
        from sidecar.filters.redis_client import RedisError

        owner = self.owner
        assert owner is not None  # the edge refuses Global limits without a Redis
        args: list[int | str] = [f"{owner.instance}:{next(owner.serial)}"]
        for rule in rules:
            args += [round(rule.unit_s * 1_000_000), rule.requests]
        try:
            with trio.fail_after(REDIS_TIMEOUT_S):
                reply = await owner.client.run_script(SCRIPT, keys, args)
            refused, wait_us, *counts = (int(v) for v in reply)
        except (RedisError, trio.TooSlowError, TypeError, ValueError) as exc:
            return owner.failed(self.name, exc)
        # the rule with the least room left speaks for the answer's RateLimit-* fields
        room = [(r.requests - n - (0 if refused else 1), r)
                for r, n in zip(rules, counts, strict=True)]  # fmt: skip
        left, rule = min(room, key=lambda p: p[0])
        return verdict(x, rule.requests, left, rule.unit_s, wait_us / 1e6 if refused else None)
