"""The tries of one request: pick an endpoint, check the limits, send, and retry what is safe.

Theory of operation. `Tries.run` sends the request to an endpoint of the cluster and, when
the try fails in a way the retry policy allows (upstream/retry.py), sends it again to a
different endpoint after an exponential, jittered backoff, as long as the cluster's budget
pays for it. A response whose status the policy retries is recognised by its head, before
anything reaches the downstream (`Outcome.hold`); any other response streams through as
usual. Each try feeds the endpoint's breaker (outlier detection) and is counted against the
cluster's limits: over one, the request is answered 503 at once (`Overloaded`).

A request body that is all in memory is simply sent again. One that streams is copied as
it goes, up to the policy's buffer (64 KiB by default); past it, the request is never
replayed and its failure goes to the client.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import trio

from sidecar.config.model import RetryPolicy
from sidecar.errors import UpstreamError, UpstreamTimeout, WeftError
from sidecar.http.forward import exchange
from sidecar.http.outcome import Head, Outcome, RetryableStatus, not_sent_marker
from sidecar.upstream.balance import EndpointStats
from sidecar.upstream.cluster import Cluster
from sidecar.upstream.retry import Failure, backoff_s, retryable

if TYPE_CHECKING:
    from sidecar.config.model import Backend, Endpoint
    from sidecar.http.context import ProxyContext
    from sidecar.protocol.http1 import RequestHead

H2_PROTOCOLS = ("HTTP2", "GRPC")  # cluster protocols spoken over HTTP/2


class NoHealthyUpstream(WeftError):
    """No endpoint of the cluster takes traffic now."""


class Overloaded(WeftError):
    """A circuit-breaker limit of the cluster (503), or a client's limit (429), is
    reached; `limit` names it."""

    def __init__(self, limit: str, status: int = 503) -> None:
        self.limit = limit
        self.status = status
        super().__init__(limit)


class Tries:
    """One request's tries against one cluster (see the module docstring)."""

    __slots__ = (
        "backend", "body", "body_done", "cluster", "ctx", "ds", "head", "last_failure",
        "outcome", "per_try_s", "policy", "response_ops", "retries", "start", "trust_marker",
    )  # fmt: skip

    def __init__(
        self,
        ctx: ProxyContext,
        ds: Any,
        head: RequestHead,
        cluster: Cluster,
        backend: Backend,
        policy: RetryPolicy,
        per_try_s: float | None,
        outcome: Outcome,
        start: float,
    ) -> None:
        self.ctx = ctx
        self.ds = ds
        self.head = head
        self.cluster = cluster
        self.backend = backend
        self.policy = policy
        self.per_try_s = per_try_s
        self.outcome = outcome
        self.start = start
        self.retries = 0
        self.last_failure = ""  # why the last retry was made, for the log
        # Only a peer's sidecar says "connect_failure" (mesh traffic, mTLS-verified).
        self.trust_marker = ctx.sidecar_upstreams
        # edits to the response head: the route's, then what its filters added
        self.response_ops = backend.response_ops
        self.body: bytes | bytearray = b""  # HTTP/1: the request head and body so far
        self.body_done = False

    def prepare(self, request: bytes | bytearray, body_done: bool) -> None:
        """The request as built (HTTP/1: head and body so far; HTTP/2: body so far)."""
        self.body = request
        self.body_done = body_done
        if not body_done and self.policy.attempts:
            room = self.policy.buffer_bytes - self.outcome.bytes_in
            if room >= 0:
                self.outcome.keep_copy(request, room)

    # -- the loop -------------------------------------------------------------------------
    async def run(self, h2_fields: list[tuple[bytes, bytes]] | None) -> None:
        """Send until a response is forwarded; raises NoHealthyUpstream, Overloaded or the
        last try's UpstreamError (UpstreamTimeout for a per-try timeout)."""
        ctx = self.ctx
        cluster = self.cluster
        outcome = self.outcome
        policy = self.policy
        tried: list[Endpoint] = []
        now = self.start
        while True:
            stats = cluster.pick(ctx.rng, now, tried)
            if stats is None:
                raise NoHealthyUpstream("no healthy upstream")
            endpoint = stats.endpoint
            limit = cluster.over_limit(endpoint.key)
            if limit is not None:
                raise Overloaded(limit)
            last = self.retries >= policy.attempts
            gated = not last and (policy.codes or self.trust_marker)
            outcome.begin_try(endpoint.key, self.gate if gated else None)
            failure: Failure | None = None
            status = 0
            error: UpstreamError | None = None
            stats.pending += 1
            cluster.requests += 1
            try:
                if self.per_try_s is None:
                    await self.send(stats, h2_fields)
                else:
                    with trio.move_on_after(self.per_try_s) as scope:
                        await self.send(stats, h2_fields)
                    if scope.cancelled_caught:
                        error = UpstreamTimeout(f"no response within {self.per_try_s:g}s")
                        if not outcome.response_started:
                            failure = Failure.TIMEOUT
            except RetryableStatus as retryable:  # the gate took it: the budget paid already
                failure = retryable.failure
                status = retryable.status
            except UpstreamError as exc:
                error = exc
                if not outcome.response_started:
                    failure = Failure.NOT_SENT if exc.retryable else Failure.RESET
            finally:
                stats.pending -= 1
                cluster.requests -= 1
            end = time.perf_counter()
            seen = status or (outcome.status if error is None else 0)  # 0: no response
            # A peer sidecar's app answering 5xx is not a peer that cannot serve.
            app = self.trust_marker and seen >= 500 and not outcome.proxy_error
            duration = cluster.observe(stats, seen, end, app_error=app)
            if duration:
                ctx.metrics.inc("weft_outlier_ejections_total", (("cluster", cluster.spec.name),))
            if error is None and failure is None:
                stats.observe(end - now, end)
                return
            if failure is None or (status == 0 and not self.may_retry(failure, last, end)):
                assert error is not None
                raise error
            self.retries += 1
            self.last_failure = failure.value
            ctx.metrics.inc(
                "weft_retries_total",
                (("service", ctx.service), ("peer", cluster.spec.name), ("reason", failure.value)),
            )
            tried.append(endpoint)
            now = time.perf_counter()
            if not self.body_done:  # from now on the copy is the request
                assert outcome.replay is not None
                self.body = bytes(outcome.replay)
                self.body_done = True
            outcome.retry()
            await trio.sleep(backoff_s(policy, self.retries, ctx.rng.random()))

    def replayable(self) -> bool:
        return self.body_done or (self.outcome.request_complete and self.outcome.replay is not None)

    def may_retry(self, failure: Failure, last: bool, now: float) -> bool:
        """For a failure without a response (the gate decides on responses)."""
        return (
            not last
            and self.replayable()
            and retryable(self.policy, self.head.method, failure)
            and self.cluster.budget.withdraw(now)
        )

    def gate(self, status: int, head: Head) -> Failure | None:
        """`Outcome.hold`: the failure this response head is retried as, or None to
        forward it (the budget pays for the retry here)."""
        policy = self.policy
        if status != 503 and status not in policy.codes:
            return None
        if not self.replayable():
            return None
        not_sent = status == 503 and self.trust_marker and not_sent_marker(head.headers)
        failure = Failure.NOT_SENT if not_sent else Failure.STATUS
        if not retryable(policy, self.head.method, failure, status):
            return None
        return failure if self.cluster.budget.withdraw(time.perf_counter()) else None

    # -- one try --------------------------------------------------------------------------
    def send(
        self, stats: EndpointStats, h2_fields: list[tuple[bytes, bytes]] | None
    ) -> Coroutine[Any, Any, None]:
        """The exchange of one try (its coroutine, awaited by `run`: no frame of our own)."""
        cluster = self.cluster
        return exchange(
            downstream=self.ds, pools=cluster.pools, endpoint=stats.endpoint, spec=cluster.spec,
            head=self.head, request=self.body, body_done=self.body_done, h2_fields=h2_fields,
            response_ops=self.response_ops, outcome=self.outcome, nursery=self.ctx.background,
            now=self.start,
        )  # fmt: skip
