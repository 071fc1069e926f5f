"""Response caching (BackendTrafficPolicy.cache, Weft's): a shared HTTP cache per policy,
by RFC 9111 (the rules are filters/cache_rules.py).

Theory of operation. On a GET or HEAD the filter looks the URL up (host and target;
`Vary` picks the variant). A fresh entry is the answer, with `Age`; a client's
conditional request it satisfies gets 304. A stale one is served at once if its
`stale-while-revalidate` allows, while one background request validates it; otherwise the
request goes on with the entry's validators (`If-None-Match`, `If-Modified-Since`) and the
response stage turns the upstream's 304 back into the stored answer. A miss goes on with a
stage that stores what comes back, if RFC 9111 lets a shared cache store it and its body
fits `max_body`. Concurrent misses of one URL wait for the first (`coalesce`): one fetch,
then hits. When the upstream fails (a 5xx, or no answer at all), an entry within its
`stale-if-error` window is served instead. Unsafe methods invalidate the URL.

The stage sits closest to the client, after compression: what is stored is what the
client got, and compression's `Vary: Accept-Encoding` keeps one entry per coding.
Memory is bounded by `max_bytes` (least recently used entries go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from sidecar.config.headerops import HeaderOps
from sidecar.filters.cache_rules import (
    Entry,
    directives,
    freshened,
    make_entry,
    not_modified_headers,
    refusal,
    satisfied,
)
from sidecar.filters.chain import ORDER_CACHE, Exchange, LocalReply, Verdict
from sidecar.http.staged import pause

if TYPE_CHECKING:
    from sidecar.http.context import ProxyContext
    from sidecar.http.downstream import ResponseWriter
    from sidecar.observe.metrics import Metrics

Headers = list[tuple[bytes, bytes]]
Key = tuple[str, str]  # (host, request target)
SAFE = ("GET", "HEAD", "OPTIONS", "TRACE")
ERRORS = (500, 502, 503, 504)  # answers stale-if-error replaces (RFC 5861 §4)


@dataclass(frozen=True, slots=True)
class CacheSpec:
    max_bytes: int = 64 << 20  # the whole store
    max_body: int = 1 << 20  # larger bodies are passed on, never stored
    coalesce: bool = True
    lock_timeout_s: float = 5.0  # how long a miss waits for the same URL's fetch


class Store:
    """One policy's entries: variants per URL, least recently used first."""

    def __init__(self, spec: CacheSpec, name: str) -> None:
        self.spec = spec
        self.name = name
        self.entries: OrderedDict[Key, list[Entry]] = OrderedDict()
        self.bytes = 0
        self.fetching: dict[Key, trio.Event] = {}  # URLs a miss is fetching (coalescing)
        self.revalidating: set[Key] = set()  # URLs a background request is validating
        self.validated = trio.Event()  # set (and replaced) as each background one ends
        self.metrics: Metrics | None = None

    def find(self, key: Key, x: Exchange) -> Entry | None:
        variants = self.entries.get(key)
        if not variants:
            return None
        for entry in variants:
            if all(_request_field(x, name) == value for name, value in entry.vary):
                self.entries.move_to_end(key)
                return entry
        return None

    def put(self, key: Key, entry: Entry) -> None:
        if entry.size > self.spec.max_bytes:
            return
        variants = self.entries.setdefault(key, [])
        for i, old in enumerate(variants):
            if old.vary == entry.vary:
                self.bytes -= old.size
                del variants[i]
                break
        variants.append(entry)
        self.entries.move_to_end(key)
        self.bytes += entry.size
        while self.bytes > self.spec.max_bytes and self.entries:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= sum(e.size for e in evicted)
            self.count("weft_cache_evictions_total", len(evicted))

    def purge(self, host: str, path: str, prefix: bool) -> int:
        """Drop the entries of a URL, or of every URL under a prefix; how many URLs."""
        keys = [
            k
            for k in self.entries
            if k[0] == host and (k[1].startswith(path) if prefix else k[1] == path)
        ]
        for k in keys:
            self.bytes -= sum(e.size for e in self.entries.pop(k))
        return len(keys)

    def count(self, name: str, n: int = 1, result: str = "") -> None:
        if self.metrics is not None:
            labels = (("policy", self.name), ("result", result)) if result else (
                ("policy", self.name),)  # fmt: skip
            self.metrics.inc(name, labels, n)


def _key(x: Exchange) -> Key:
    """The URL's key: host without the port (lower case), and the request target."""
    host, sep, port = x.authority.rpartition(":")
    if not (sep and port.isdigit()):
        host = x.authority
    return host.lower(), f"{x.path}?{x.query}" if x.query else x.path


def _request_field(x: Exchange, name: bytes) -> bytes | None:
    values = [v.strip() for n, v in x.headers if n.lower() == name]
    return b", ".join(values) if values else None


class CacheFilter:
    """Answers from the store, or sends the request on with a stage that fills it."""

    __slots__ = ("name", "spec", "store")

    def __init__(self, name: str, spec: CacheSpec) -> None:
        self.name = name
        self.spec = spec
        self.store = Store(spec, name)  # replaced by the kept one (CacheState.sync)

    def on_request(self, x: Exchange) -> Verdict | Awaitable[Verdict]:
        store = self.store
        key = _key(x)
        if x.method not in SAFE:  # RFC 9111 §4.4: the URL's entries are no longer trusted
            store.entries.pop(key, None)
            return None
        if x.method not in ("GET", "HEAD") or x.header(b"range") is not None:
            return None
        cc = directives(x.header(b"cache-control"))
        if x.header(b"pragma") == b"no-cache" and not cc:
            cc = {b"no-cache": b""}
        entry = store.find(key, x)
        if entry is None and store.spec.coalesce and key in store.fetching and x.method == "GET":
            return self._after_fetch(x, key, cc, store.fetching[key])
        return self._decide(x, key, cc, entry)

    def _decide(
        self, x: Exchange, key: Key, cc: dict[bytes, bytes], entry: Entry | None
    ) -> Verdict:
        store = self.store
        now = time.time()
        if entry is not None:
            age = entry.age(now)
            limit = cc.get(b"max-age")
            fresh = (
                age < entry.lifetime and not entry.always_revalidate and b"no-cache" not in cc
                and (limit is None or (limit.isdigit() and age <= int(limit)))
            )  # fmt: skip
            if fresh:
                store.count("weft_cache_hits_total", result="hit")
                return _served(x, entry, age, "HIT", "hit")
            stale_by = age - entry.lifetime
            if (
                not entry.no_stale
                and not entry.always_revalidate
                and b"no-cache" not in cc
                and b"max-age" not in cc  # the client's own limit on age
                and 0 < stale_by <= entry.stale_while_revalidate
                and self._revalidate_later(x, key, entry)
            ):
                store.count("weft_cache_hits_total", result="stale")
                return _served(x, entry, age, "STALE", "fwd=stale")
        if entry is None and b"only-if-cached" in cc:
            return LocalReply(504, b"not in the cache\n", (), "cache_only_if_cached")
        store.count("weft_cache_misses_total")
        validating = False
        if entry is not None:  # validate what we have
            conditional: list[tuple[str, str]] = []
            if entry.etag is not None:
                conditional.append(("if-none-match", entry.etag.decode("latin-1")))
            if entry.last_modified is not None:
                conditional.append(("if-modified-since", entry.last_modified.decode("latin-1")))
            if conditional:
                x.request_ops.append(
                    HeaderOps.build(
                        set_=tuple(conditional), remove=("if-none-match", "if-modified-since")
                    )
                )
                validating = True
        elif x.method == "GET" and store.spec.coalesce and key not in store.fetching:
            event = store.fetching[key] = trio.Event()
            x.add_done(lambda: _release(store, key, event))
        if x.method == "GET" and b"no-store" not in cc:
            stage = Filling(store, key, x, cc, entry, validating, now)
            x.add_stage(stage.wrap, ORDER_CACHE)
            if entry is not None and entry.stale_if_error and not entry.no_stale:
                x.fallback = lambda: _stale_if_error(store, entry, x)
        return None

    async def _after_fetch(
        self, x: Exchange, key: Key, cc: dict[bytes, bytes], event: trio.Event
    ) -> Verdict:
        with trio.move_on_after(self.spec.lock_timeout_s):
            await event.wait()
        return self._decide(x, key, cc, self.store.find(key, x))

    def _revalidate_later(self, x: Exchange, key: Key, entry: Entry) -> bool:
        """Start one background validation of a stale entry; False when it cannot be
        made (no route backend to ask, or the route rewrites what it forwards)."""
        store, ctx, route = self.store, x.ctx, x.route
        if ctx is None or route is None or route.rewrite is not None:
            return False
        cluster = next((b.cluster for b in route.backends if b.cluster), None)
        if cluster is None:
            return False
        if key not in store.revalidating:
            store.revalidating.add(key)
            headers = [
                (n, v)
                for n, v in x.headers
                if n.lower() in (b"accept", b"accept-encoding", b"accept-language")
            ]
            ctx.background.start_soon(_revalidate, ctx, store, key, entry, cluster, x.method,
                                      x.authority, key[1], headers)  # fmt: skip
        return True

    def describe(self) -> str:
        return f"cache {self.name} (max {self.spec.max_bytes} B, bodies to {self.spec.max_body} B)"


def _release(store: Store, key: Key, event: trio.Event) -> None:
    if store.fetching.get(key) is event:
        del store.fetching[key]
    event.set()


def _served(x: Exchange, entry: Entry, age: float, label: str, status: str) -> LocalReply:
    """The stored answer (or 304 when the client's own validators match it)."""
    ttl = int(entry.lifetime - age)
    extra = [(b"age", b"%d" % int(age)), (b"x-cache", label.encode()),
             (b"cache-status", b"weft; %b; ttl=%d" % (status.encode(), ttl))]  # fmt: skip
    if satisfied(entry, x.header(b"if-none-match"), x.header(b"if-modified-since")):
        return LocalReply(
            304, b"", (*not_modified_headers(entry), *extra), "cache_" + label.lower()
        )
    return LocalReply(entry.status, entry.body, (*entry.headers, *extra), "cache_" + label.lower())


def _stale_if_error(store: Store, entry: Entry, x: Exchange) -> LocalReply | None:
    stale_by = entry.age(time.time()) - entry.lifetime
    if stale_by > entry.stale_if_error:
        return None
    store.count("weft_cache_hits_total", result="stale_if_error")
    return _served(x, entry, entry.age(time.time()), "STALE", "fwd=stale; detail=upstream-error")


async def _revalidate(
    ctx: ProxyContext, store: Store, key: Key, entry: Entry, cluster: str, method: str,
    authority: str, target: str, headers: Headers,
) -> None:  # fmt: skip
    from sidecar.errors import UpstreamError
    from sidecar.upstream.call import call

    try:
        if entry.etag is not None:
            headers.append((b"if-none-match", entry.etag))
        if entry.last_modified is not None:
            headers.append((b"if-modified-since", entry.last_modified))
        sent = time.time()
        with trio.move_on_after(30):
            answer = await call(ctx.clusters, ctx.background, ctx.rng, cluster, b"GET",
                                target.encode("latin-1"), authority.encode("latin-1"), headers,
                                max_body=store.spec.max_body)  # fmt: skip
            if answer.status == 304:
                store.put(key, freshened(entry, answer.headers, sent, time.time()))
            elif answer.status < 500:
                cc = directives(_field(answer.headers, b"cache-control"))
                fresh = None
                if not refusal("GET", answer.status, {}, cc, answer.headers, False):
                    fresh = make_entry(answer.status, answer.headers, answer.body, headers,
                                       sent, time.time())  # fmt: skip
                if fresh is not None:
                    fresh.vary = entry.vary
                    store.put(key, fresh)
                else:
                    store.entries.pop(key, None)
    except (UpstreamError, OSError):
        pass  # the stale entry stays until its windows close
    finally:
        store.revalidating.discard(key)
        store.validated.set()
        store.validated = trio.Event()


def _field(headers: Headers, name: bytes) -> bytes | None:
    values = [v for n, v in headers if n.lower() == name]
    return b", ".join(values) if values else None


class Filling:
    """The response stage of a miss or a validation: stores what may be stored, and turns
    a 304 (or, within stale-if-error, a 5xx) into the stored answer."""

    __slots__ = (
        "body",
        "cc",
        "entry",
        "headers",
        "key",
        "next",
        "over",
        "replaced",
        "sent",
        "status",
        "store",
        "storing",
        "validating",
        "x",
    )  # fmt: skip

    def __init__(
        self, store: Store, key: Key, x: Exchange, cc: dict[bytes, bytes], entry: Entry | None,
        validating: bool, sent: float,
    ) -> None:  # fmt: skip
        self.store = store
        self.key = key
        self.x = x
        self.cc = cc
        self.entry = entry  # the stored answer, stale or refused by the client's terms
        self.validating = validating  # the request carries its validators
        self.sent = sent
        self.storing = False
        self.replaced = False  # the stored answer went instead: ignore the upstream's
        self.over = False
        self.body = bytearray()
        self.status = 0
        self.headers: Headers = []

    def wrap(self, writer: ResponseWriter) -> ResponseWriter:
        self.next = writer
        return self

    async def start(self, status: int, headers: Headers, *, end: bool) -> None:
        store, entry, x = self.store, self.entry, self.x
        if entry is not None and self.validating and status == 304:
            entry = freshened(entry, headers, self.sent, time.time())
            store.put(self.key, entry)
            store.count("weft_cache_hits_total", result="revalidated")
            await self._replace(_served(x, entry, entry.age(time.time()), "REVALIDATED",
                                        "fwd=stale; fwd-status=304"))  # fmt: skip
            return
        if entry is not None and status in ERRORS and entry.stale_if_error:
            reply = _stale_if_error(store, entry, x)
            if reply is not None:
                await self._replace(reply)
                return
        why = refusal("GET", status, self.cc, directives(_field(headers, b"cache-control")),
                      headers, x.header(b"authorization") is not None)  # fmt: skip
        self.storing = not why
        self.status, self.headers = status, headers
        marked = [
            *headers,
            (b"x-cache", b"MISS"),
            (b"cache-status", b"weft; fwd=%b" % (b"stale" if entry else b"miss")),
        ]
        await self.next.start(status, marked, end=end)
        if end:
            self._store()

    async def _replace(self, reply: LocalReply) -> None:
        self.replaced = True
        body = b"" if self.x.method == "HEAD" else reply.body
        headers = list(reply.headers)
        if reply.status != 304:
            headers.append((b"content-length", b"%d" % len(reply.body)))
        await self.next.start(reply.status, headers, end=not body)
        if body:
            await self.next.data(body)
            await self.next.end(None)

    async def data(self, data: bytes) -> None:
        if self.replaced:
            return
        if self.storing and not self.over:
            if len(self.body) + len(data) > self.store.spec.max_body:
                self.over = True
                self.body = bytearray()
            else:
                self.body += data
        await self.next.data(data)

    async def pause(self) -> None:
        await pause(self.next)

    async def end(self, trailers: Headers | None) -> None:
        if self.replaced:
            return
        await self.next.end(trailers)
        if not self.over:
            self._store()

    def _store(self) -> None:
        if not self.storing:
            return
        entry = make_entry(self.status, self.headers, bytes(self.body), self.x.headers,
                           self.sent, time.time())  # fmt: skip
        if entry is not None:
            self.store.put(self.key, entry)
            self.store.count("weft_cache_stored_total")


class CacheState:
    """The stores of the cache filters in force, kept across snapshots (a filter of an
    unchanged policy gets its predecessor's entries), and purged from the admin port."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.stores: dict[str, Store] = {}
        self.metrics = metrics  # where the stores count hits, misses and evictions

    def sync(self, filters: Iterable[CacheFilter]) -> None:
        kept: dict[str, Store] = {}
        for f in filters:
            old = kept.get(f.name) or self.stores.get(f.name)
            if old is not None and old.spec == f.spec:
                f.store = old
            f.store.metrics = self.metrics
            kept[f.name] = f.store
        self.stores = kept

    def purge(self, url: str, prefix: bool) -> int:
        """Drop a URL's entries (or every URL under `url`) from every store."""
        from urllib.parse import urlsplit

        parts = urlsplit(url if "://" in url else "http://" + url)
        host = (parts.hostname or "").lower()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return sum(s.purge(host, target, prefix) for s in self.stores.values())
