"""API keys (SecurityPolicy.apiKeyAuth): a request must carry a known key in one of the
places the policy names (headers, query parameters, cookies), or it is answered 401.

Keys come from Opaque Secrets, one entry per client (`client-id: key`). In memory only
their SHA-256 digests are kept, mapped to the client's name: a lookup by digest reveals
nothing about the keys through timing, and a memory dump holds no key. The client's name
is forwarded in `forwardClientIDHeader` (any copy the client sent is removed first), where
later filters — a rate limit per client — and the backend read it; `sanitize` removes the
key's header from the forwarded request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import parse_qsl

from sidecar.config.headerops import HeaderOps, field_key
from sidecar.filters.chain import Exchange, LocalReply

MISSING = LocalReply(
    401, b"an API key is required\n", ((b"www-authenticate", b'API-Key realm="weft"'),),
    "apikey_missing",
)  # fmt: skip
INVALID = LocalReply(
    401, b"invalid API key\n", ((b"www-authenticate", b'API-Key realm="weft"'),),
    "apikey_invalid",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class KeySources:
    headers: tuple[bytes, ...] = ()  # lower case
    params: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()


def digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


class ApiKeyFilter:
    __slots__ = ("clients", "drop", "forward", "sanitize", "sources")

    def __init__(
        self, clients: dict[bytes, str], sources: KeySources, forward: bytes | None,
        sanitize: bool,
    ) -> None:  # fmt: skip
        self.clients = clients  # sha256(key) -> client id
        self.sources = sources
        self.forward = forward  # lower-case header name for the client id
        self.sanitize = sanitize
        # what a passing request loses: the key's fields (sanitize), a forged client id
        drop = {field_key(h) for h in sources.headers} if sanitize else set()
        if forward is not None:
            drop.add(field_key(forward))
        self.drop = frozenset(drop)

    def describe(self) -> str:
        where = [*(h.decode() for h in self.sources.headers), *self.sources.params,
                 *self.sources.cookies]  # fmt: skip
        return f"api keys: {len(self.clients)} client(s), read from {', '.join(where)}"

    def on_request(self, x: Exchange) -> LocalReply | None:
        key = self._key(x)
        if key is None:
            return MISSING
        client = self.clients.get(digest(key))
        if client is None:
            return INVALID
        if self.drop:
            append = ((self.forward, client.encode()),) if self.forward is not None else ()
            ops = HeaderOps(drop=self.drop, append=append)
            x.request_ops.append(ops)
            x.headers = ops.apply(x.headers)  # later filters see the client's name
        return None

    def _key(self, x: Exchange) -> bytes | None:
        for name in self.sources.headers:
            value = x.header(name)
            if value:
                return value.strip()
        if self.sources.params and x.query:
            params = dict(parse_qsl(x.query, keep_blank_values=False))
            for p in self.sources.params:
                if params.get(p):
                    return params[p].encode()
        if self.sources.cookies and (cookie := x.header(b"cookie")):
            jar = dict(part.strip().split(b"=", 1) for part in cookie.split(b";") if b"=" in part)
            for c in self.sources.cookies:
                if jar.get(c.encode()):
                    return jar[c.encode()]
        return None
