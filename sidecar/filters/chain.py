"""The filter chain of a route rule: one place for per-request features.

Theory of operation. The configuration compiles, once per snapshot, the chain of each
route rule from what applies to it (its own filters, and policies attached to its route or
Gateway). On a request the handler builds an `Exchange` — the request as every protocol
has it (method, authority, path, query, fields, client) — and runs the filters in order.
A filter may answer the request itself (`LocalReply`: a preflight, 403, 429…), or add
header edits to the forwarded request and to the response head (`HeaderOps`, the same
edits Gateway API's header modifiers compile to). The codecs (HTTP/1.1, HTTP/2, gRPC)
apply those edits where they serialize; no filter knows the protocol.

A rule without filters never builds an Exchange: its requests take the path they always
took. Filters are frozen configuration; state that must outlive a snapshot (rate-limit
buckets, key caches) belongs to an owner the process keeps and syncs per snapshot.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.config.headerops import HeaderOps

if TYPE_CHECKING:
    from sidecar.config.model import RouteAction
    from sidecar.http.context import ProxyContext
    from sidecar.http.downstream import ResponseWriter
    from sidecar.observe.tracing import Span

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Exchange:
    """One request, as filters see it."""

    method: str
    authority: str  # as the client sent it (Host or :authority)
    path: str
    query: str
    headers: Headers  # as received: names in any case
    client: str  # the address the connection came from
    scheme: str = "http"
    request_ops: list[HeaderOps] = field(default_factory=list)  # edits to what is forwarded
    response_ops: list[HeaderOps] = field(default_factory=list)  # edits to the response head
    jwt: tuple[str, dict[str, Any]] | None = None  # (provider, claims) of a verified token
    ctx: ProxyContext | None = None  # the process's clusters, for filters that call out
    max_body: int = 0  # a route's body limit (413 as the body streams); 0: the listener's
    # a check of the whole body (read before forwarding, at most max_body bytes)
    body_check: Callable[[bytes], LocalReply | None] | None = None
    # the body the upstream gets instead (a decoded one), or a reply (read as body_check)
    body_rewrite: Callable[[bytes], bytes | LocalReply] | None = None
    # what filters do to the answer (http/staged.py): each wraps the writer it goes to
    stages: list[tuple[int, Callable[[ResponseWriter], ResponseWriter]]] | None = None
    target: str | None = None  # the request target forwarded instead (path and query)
    forward_method: str | None = None  # the method forwarded instead (transcoding: POST)
    body_always: bool = False  # body_rewrite makes a body even for a request without one
    route: RouteAction | None = None  # the rule's action (filters that call its backend)
    span: Span | None = None  # the request's trace span, when tracing is on
    # the answer when the upstream cannot give one (a cache's stale-if-error), or None
    fallback: Callable[[], LocalReply | None] | None = None
    done: list[Callable[[], None]] | None = None  # run when the request ends, however

    def add_done(self, hook: Callable[[], None]) -> None:
        if self.done is None:
            self.done = [hook]
        else:
            self.done.append(hook)

    def add_stage(self, stage: Callable[[ResponseWriter], ResponseWriter], order: int) -> None:
        """Have the answer pass through `stage`; stages of a lower `order` see it first
        (ORDER_TRANSFORM, then ORDER_COMPRESS, then ORDER_CACHE, nearest the client)."""
        if self.stages is None:
            self.stages = [(order, stage)]
        else:
            self.stages.append((order, stage))

    def add_body_rewrite(
        self, rewrite: Callable[[bytes], bytes | LocalReply], *, first: bool = False
    ) -> None:
        """Forward the body `rewrite` makes of it: after the rewrites added before, or
        before them (`first`: decoding, which every other rewrite must see done)."""
        other = self.body_rewrite
        if other is None:
            self.body_rewrite = rewrite
            return
        one, two = (rewrite, other) if first else (other, rewrite)

        def both(body: bytes) -> bytes | LocalReply:
            done = one(body)
            return done if isinstance(done, LocalReply) else two(done)

        self.body_rewrite = both

    def header(self, name: bytes) -> bytes | None:
        """The first value of field `name` (lower case), or None."""
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


@dataclass(frozen=True, slots=True)
class LocalReply:
    """An answer a filter gives instead of forwarding the request."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    detail: str = ""  # the access log's `detail` (why)


Verdict = LocalReply | None
# The order response stages see the answer in: upstream first, the client's side last.
ORDER_TRANSFORM, ORDER_COMPRESS, ORDER_CACHE = 0, 1, 2


class Filter(Protocol):
    def on_request(self, x: Exchange) -> Verdict | Awaitable[Verdict]:
        """Look at (and possibly edit) a request; a reply ends it here. A filter that
        must wait (a password hash checked in a thread) returns an awaitable."""
        ...

    def describe(self) -> str:
        """One line for /config_dump: what it does, never a secret."""
        ...


class FixedReply:
    """A filter that answers every request the same: what Gateway API asks for a filter
    that cannot be resolved (a missing ExtensionRef target: 500, never skipped)."""

    __slots__ = ("reply", "why")

    def __init__(self, reply: LocalReply, why: str) -> None:
        self.reply = reply
        self.why = why

    def on_request(self, x: Exchange) -> LocalReply:
        return self.reply

    def describe(self) -> str:
        return f"answers {self.reply.status}: {self.why}"


def client_address(peer: str, forwarded_for: bytes, trusted_hops: int) -> str:
    """The client, as filters judge it: the connection's peer, or — behind `trusted_hops`
    proxies that each append to X-Forwarded-For — the entry the farthest trusted one
    added (the Nth from the right). A header with fewer entries did not come through them,
    and says nothing."""
    if not trusted_hops or not forwarded_for:
        return peer
    entries = [e.strip() for e in forwarded_for.decode("latin-1").split(",")]
    return entries[-trusted_hops] if len(entries) >= trusted_hops else peer


def run(filters: tuple[Filter, ...], x: Exchange) -> Verdict | Awaitable[Verdict]:
    """The filters in order until one answers; its reply carries the response edits
    earlier filters made (a CORS header on a 429, say). Synchronous until a filter has to
    wait: then the rest of the chain is an awaitable (most requests never build one)."""
    for i, f in enumerate(filters):
        reply = f.on_request(x)
        if reply is None:
            continue
        if isinstance(reply, LocalReply):
            return _answer(reply, x)
        return _after(reply, filters[i + 1 :], x)
    return None


async def _after(pending: Awaitable[Verdict], rest: tuple[Filter, ...], x: Exchange) -> Verdict:
    reply = await pending
    if reply is not None:
        return _answer(reply, x)
    more = run(rest, x)
    return more if more is None or isinstance(more, LocalReply) else await more


def _answer(reply: LocalReply, x: Exchange) -> LocalReply:
    if not x.response_ops:
        return reply
    edited: Headers = list(reply.headers)
    for ops in x.response_ops:
        edited = ops.apply(edited)
    return LocalReply(reply.status, reply.body, tuple(edited), reply.detail)


@functools.lru_cache(maxsize=4096)
def address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client address, parsed once per distinct text (None: not an IP address); an
    IPv4 client on a dual-stack socket (::ffff:a.b.c.d) is its IPv4 address."""
    try:
        addr = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
