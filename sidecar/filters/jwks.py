"""Remote JWKS (SecurityPolicy.jwt.providers[].remoteJWKS): keys fetched over HTTPS,
cached, refreshed, and kept when their endpoint fails.

Theory of operation. Each distinct (URI, cache duration) has one `KeyCell`: the last good
keys and when to fetch again. The cell is pure bookkeeping; `JwksState`, the owner the
edge keeps across snapshots, does the fetching:

- on the first snapshot that names a URI, at once (requests that come before the first
  answer wait for it, up to WAIT_S);
- every `cacheDuration` after a good fetch (Envoy Gateway's default: 5 minutes);
- when a token names a `kid` the keys lack — a key rotation — at most once per
  MISS_INTERVAL_S per URI, so a client minting random kids cannot make the edge hammer
  the identity provider; concurrent misses share one fetch and wait for it;
- after a failure, again in 1, 2, 5, 10, 30, then every 60 s (never later than the cache
  duration). The last good keys stay in force meanwhile: an identity provider being down
  does not log anyone out.

A fetched document replaces the keys only when it parses as a JWKS of public keys; a
bad one counts as a failure. Fetches use the edge's trust store (the system's CAs plus
`--trust-bundle`), refuse redirects and plain HTTP, and read at most MAX_BYTES.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import trio

from sidecar.errors import why

if TYPE_CHECKING:  # PyJWT loads with the first provider's keys
    import jwt

    from sidecar.observe.metrics import Metrics

log = logging.getLogger("weft.jwks")

MISS_INTERVAL_S = 10.0
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
FETCH_TIMEOUT_S = 10.0
WAIT_S = 5.0
MAX_BYTES = 1 << 20
DEFAULT_CACHE_S = 300.0


def trust_context(bundle: str | None) -> ssl.SSLContext | None:
    """The edge's trust store for HTTPS it calls: the system's CAs plus those in `bundle`
    (a PEM file; ConfigError when it holds none). None: the system's, loaded when needed."""
    if bundle is None:
        return None
    from sidecar.errors import ConfigError

    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--trust-bundle {bundle}: no CA certificates read ({exc})") from None
    return ctx


class KeyCell:
    """One JWKS endpoint's keys and schedule (times on trio's clock)."""

    __slots__ = ("cache_s", "error", "failures", "fetched", "keys", "last_miss", "next_due",
                 "owner", "uri")  # fmt: skip

    def __init__(self, uri: str, cache_s: float) -> None:
        self.uri = uri
        self.cache_s = cache_s
        self.keys: tuple[jwt.PyJWK, ...] = ()
        self.fetched = False  # a fetch has succeeded once
        self.next_due = 0.0
        self.last_miss = -math.inf
        self.failures = 0
        self.error = ""
        self.owner: JwksState | None = None

    def succeeded(self, keys: list[jwt.PyJWK], now: float) -> None:
        self.keys = tuple(keys)
        self.fetched = True
        self.failures = 0
        self.error = ""
        self.next_due = now + self.cache_s

    def failed(self, error: str, now: float) -> None:
        self.failures += 1
        self.error = error
        self.next_due = now + min(self.cache_s, RETRY_S[min(self.failures, len(RETRY_S)) - 1])

    def may_refetch_for_miss(self, now: float) -> bool:
        """Whether a token with an unknown kid may trigger a fetch now (and note it)."""
        if now - self.last_miss < MISS_INTERVAL_S:
            return False
        self.last_miss = now
        return True


class RemoteJwks:
    """A provider's remoteJWKS: configuration (uri, cache duration) plus the cell its keys
    live in, which the owner replaces with the one it keeps for the URI."""

    __slots__ = ("cache_s", "cell", "uri")

    def __init__(self, uri: str, cache_s: float = DEFAULT_CACHE_S) -> None:
        self.uri = uri
        self.cache_s = cache_s
        self.cell = KeyCell(uri, cache_s)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteJwks) and (self.uri, self.cache_s) == (
            other.uri,
            other.cache_s,
        )

    def __hash__(self) -> int:
        return hash((self.uri, self.cache_s))


class JwksState:
    """The JWKS cells of every provider in force, kept across snapshots, and the task that
    fetches them (`run`, in the edge's nursery)."""

    def __init__(
        self, tls: ssl.SSLContext | None = None, metrics: Metrics | None = None,
        clock: Callable[[], float] = trio.current_time,
        get: Callable[[str], Awaitable[list[jwt.PyJWK]]] | None = None,
    ) -> None:  # fmt: skip
        self.tls = tls  # None: the system's CAs, loaded on the first fetch
        self.metrics = metrics
        self.clock = clock
        self.get = get or self._get  # how a key set is fetched (HTTPS; tests pass their own)
        self.cells: dict[tuple[str, float], KeyCell] = {}
        self.inflight: dict[KeyCell, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()

    def sync(self, remotes: Iterable[RemoteJwks]) -> None:
        kept: dict[tuple[str, float], KeyCell] = {}
        for r in remotes:
            key = (r.uri, r.cache_s)
            cell = kept.get(key) or self.cells.get(key) or r.cell
            cell.owner = self
            r.cell = kept[key] = cell
        self.cells = kept
        self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                now = self.clock()
                for cell in self.cells.values():
                    if cell.next_due <= now:
                        self.start(cell)
                due = [c.next_due for c in self.cells.values() if c not in self.inflight]
                self._wake = trio.Event()
                with trio.move_on_at(min(due, default=math.inf)):
                    await self._wake.wait()

    def start(self, cell: KeyCell) -> trio.Event:
        """A fetch of `cell` (the one in flight, if any); its event is set when it ends."""
        event = self.inflight.get(cell)
        if event is None:
            event = self.inflight[cell] = trio.Event()
            if self._nursery is None:  # not running (a test, or stopped): nothing to wait for
                event.set()
                del self.inflight[cell]
            else:
                self._nursery.start_soon(self._fetch, cell, event)
        return event

    async def wait_for(self, cell: KeyCell) -> None:
        """Until a fetch of `cell` ends (WAIT_S at most): for a request whose token names
        a kid the cell does not have, or that came before the first fetch."""
        with trio.move_on_after(WAIT_S):
            await self.start(cell).wait()

    async def _fetch(self, cell: KeyCell, event: trio.Event) -> None:
        try:
            keys = await self.get(cell.uri)
        except Exception as exc:  # any failure keeps the last good keys
            cell.failed(why(exc), self.clock())
            self._count(cell, "failure")
            log.warning("JWKS %s: %s; keeping %d key(s), next try in %.0fs", cell.uri,
                        cell.error, len(cell.keys), cell.next_due - self.clock())  # fmt: skip
        else:
            cell.succeeded(keys, self.clock())
            self._count(cell, "success")
        finally:
            del self.inflight[cell]
            event.set()
            self._wake.set()

    async def _get(self, uri: str) -> list[jwt.PyJWK]:
        import httpx

        from sidecar.filters.jwt_auth import load_jwks

        if self.tls is None:
            self.tls = ssl.create_default_context()
        async with (
            httpx.AsyncClient(
                verify=self.tls, timeout=FETCH_TIMEOUT_S, follow_redirects=False
            ) as client,
            client.stream("GET", uri, headers={"accept": "application/json"}) as resp,
        ):
            if resp.status_code != 200:
                raise ValueError(f"answered {resp.status_code}")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise ValueError(f"document larger than {MAX_BYTES} bytes")
        try:
            return load_jwks(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"not a usable JWKS: {exc}") from None

    def _count(self, cell: KeyCell, result: str) -> None:
        if self.metrics is not None:
            labels = (("uri", cell.uri), ("result", result))
            self.metrics.inc("weft_jwks_fetches_total", labels)
