"""Request aggregation (weft.dev Aggregation, used by a route rule through an ExtensionRef
filter): one request fans out to several upstream calls, and their JSON answers are merged
into one document, `{"<part>": <its answer>, …}`.

Theory of operation. Each part is a GET (or another method without a body) to a backend
(its Service's cluster: endpoints, balancing, mTLS in a mesh), with a path made from a
template over the request (`${path.id}`, `${query.page}`, `${jwt.sub}`, …). Parts run in
parallel, except that a part whose path refers to another part's answer
(`${part.user.customerId}`) waits for that one: the declared order is the dependency
order, and the configuration refuses cycles. Each part has its own timeout and body limit.

A part fails when it cannot be reached, times out, answers other than 2xx, or answers
something other than JSON. A failed `optional` part is `null` in the document, and an
entry in `_errors` says why. Any other failed part makes the whole answer a 502, naming
the part, and the parts still running are cancelled. With tracing on, each part is one
CLIENT span under the request's span, and carries the trace context to its upstream.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import trio

from sidecar.filters.chain import Exchange, LocalReply
from sidecar.filters.transform import Template

if TYPE_CHECKING:
    import re

    from sidecar.http.context import ProxyContext

Headers = list[tuple[bytes, bytes]]
JSON = ((b"content-type", b"application/json"),)


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    cluster: str | None  # None: its backend did not resolve (the part always fails)
    authority: str  # the Host its calls carry
    path: Template
    method: str = "GET"
    timeout_s: float = 5.0
    optional: bool = False
    max_bytes: int = 1 << 20
    after: tuple[str, ...] = ()  # the parts its path refers to
    why: str = ""  # why `cluster` is None


@dataclass(frozen=True, slots=True)
class AggregateSpec:
    parts: tuple[Part, ...]
    path_template: re.Pattern[str] | None = None
    timeout_s: float = 10.0
    forward_headers: tuple[bytes, ...] = ()  # request fields every part's call carries


class Failed(Exception):
    pass


class AggregateFilter:
    __slots__ = ("name", "spec")

    def __init__(self, name: str, spec: AggregateSpec) -> None:
        self.name = name
        self.spec = spec

    def on_request(self, x: Exchange) -> Awaitable[LocalReply]:
        return self._answer(x)

    async def _answer(self, x: Exchange) -> LocalReply:
        spec = self.spec
        ctx = x.ctx
        if ctx is None:
            return LocalReply(500, b"aggregation needs the proxy\n", (), "aggregate_error")
        params: dict[str, str] = {}
        if spec.path_template is not None and (m := spec.path_template.match(x.path)):
            params = m.groupdict()
        query = dict(parse_qsl(x.query, keep_blank_values=True)) if x.query else {}
        docs: dict[str, Any] = {}
        errors: dict[str, str] = {}
        ended = {p.name: trio.Event() for p in spec.parts}
        fatal: list[str] = []
        headers = [(n.lower(), v) for n, v in x.headers if n.lower() in spec.forward_headers]

        async def run(part: Part, cancel: trio.CancelScope) -> None:
            try:
                docs[part.name] = await self._part(ctx, x, part, params, query, docs, ended,
                                                   errors, headers)  # fmt: skip
            except Failed as exc:
                errors[part.name] = str(exc)
                if not part.optional:
                    fatal.append(part.name)
                    cancel.cancel()
            finally:
                ended[part.name].set()

        with trio.move_on_after(spec.timeout_s) as overall:
            async with trio.open_nursery() as nursery:
                for part in spec.parts:
                    nursery.start_soon(run, part, nursery.cancel_scope)
        if overall.cancelled_caught:
            for part in spec.parts:
                if part.name not in docs and part.name not in errors:
                    errors[part.name] = f"no answer within the aggregation's {spec.timeout_s:g}s"
                    if not part.optional:
                        fatal.append(part.name)
        if fatal:
            first = fatal[0]
            for part in spec.parts:  # cancelled when the first fatal failure came
                errors.setdefault(part.name, f"cancelled: part {first} failed")
            body = json.dumps({"error": f"part {first} failed: {errors[first]}",
                               "errors": errors}).encode() + b"\n"  # fmt: skip
            return LocalReply(502, body, JSON, "aggregate_part_failed")
        merged: dict[str, Any] = {p.name: docs.get(p.name) for p in spec.parts}
        if errors:
            merged["_errors"] = errors
        return LocalReply(200, json.dumps(merged, separators=(",", ":")).encode(), JSON,
                          "aggregated")  # fmt: skip

    async def _part(
        self, ctx: ProxyContext, x: Exchange, part: Part, params: dict[str, str],
        query: dict[str, str], docs: dict[str, Any], ended: dict[str, trio.Event],
        errors: dict[str, str], headers: Headers,
    ) -> Any:  # fmt: skip
        for name in part.after:
            await ended[name].wait()
            if name not in docs:
                raise Failed(f"needs part {name}, which failed")
        if part.cluster is None:
            raise Failed(part.why)
        target = part.path.render(x, params, query, docs, encode=True)
        if target is None:
            raise Failed(f"{_show(part.path)}: a reference has no value in this request")
        from sidecar.http.tries import H2_PROTOCOLS

        cluster = ctx.clusters.get(part.cluster)
        http2 = cluster is not None and cluster.spec.protocol in H2_PROTOCOLS
        span = x.span if ctx.tracer is not None and x.span is not None and x.span.sampled else None
        span_id = ctx.rng.getrandbits(64) or 1
        sent = list(headers)
        if span is not None:
            from sidecar.observe.tracecontext import traceparent

            sent.append((b"traceparent", traceparent(span.trace_id, span_id, True)))
        began, error, status = time.time(), "", [0]
        try:
            return await _fetch(ctx, part, target, sent, http2, status)
        except Failed as exc:
            error = str(exc)
            raise
        finally:
            if span is not None and ctx.tracer is not None:
                from sidecar.observe.spans import CLIENT

                path = target.partition("?")[0]
                service = part.cluster.split("/")[-1].split(":")[0]
                ctx.tracer.finish(
                    (CLIENT, span.trace_id, span_id, span.span_id, 0, began, 0.0,
                     time.time() - began, part.method, path, self.name, "http",
                     part.authority, path, status[0], service, "", 0, "1.1", x.client, "",
                     error, "", -1),
                    1,
                )  # fmt: skip

    def describe(self) -> str:
        return f"aggregation {self.name}: " + ", ".join(p.name for p in self.spec.parts)


async def _fetch(
    ctx: ProxyContext, part: Part, target: str, headers: Headers, http2: bool, status: list[int]
) -> Any:
    """One part's call and its JSON document; Failed saying why not (`status[0]`: the
    answer's status, for the span)."""
    from sidecar.errors import UpstreamError
    from sidecar.upstream.call import call

    assert part.cluster is not None
    try:
        with trio.move_on_after(part.timeout_s) as timer:
            answer = await call(ctx.clusters, ctx.background, ctx.rng, part.cluster,
                                part.method.encode(), target.encode("latin-1"),
                                part.authority.encode(), headers, http2=http2,
                                max_body=part.max_bytes)  # fmt: skip
    except UpstreamError as exc:
        raise Failed(str(exc) or type(exc).__name__) from None
    if timer.cancelled_caught:
        raise Failed(f"no answer within {part.timeout_s:g}s")
    status[0] = answer.status
    if not 200 <= answer.status < 300:
        raise Failed(f"answered {answer.status}")
    try:
        return json.loads(answer.body) if answer.body else None
    except (ValueError, RecursionError):
        raise Failed("answered something other than JSON") from None


def _show(t: Template) -> str:
    return "".join(p if isinstance(p, str) else f"${{{p[0]}.{p[1]}}}" for p in t.parts)
