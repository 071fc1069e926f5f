"""JWT authentication (SecurityPolicy.jwt): a request must carry a token that one of the
policy's providers validates, or it is answered 401.

Signatures are checked by PyJWT (with `cryptography`), never by hand. Only asymmetric
algorithms are accepted, and only the ones the key's type allows — RS256/384/512 and
PS256/384/512 for RSA keys, ES256/384/512 for EC, EdDSA for OKP — so `alg: none` and the
HS256-signed-with-the-public-key trick are refused before any signature math. The key is
the JWKS entry the token's `kid` names (or, without `kid`, the entries of a matching
type). `exp` and `nbf` are checked when present with 60 s of clock skew; `iss` and `aud`
when the provider names them. The claims a provider lists in `claimToHeaders` go upstream
as headers (copies the client sent are removed first).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import jwt

from sidecar.config.headerops import HeaderOps, field_key
from sidecar.filters.chain import Exchange, LocalReply, Verdict
from sidecar.filters.jwks import RemoteJwks

LEEWAY_S = 60
REMEMBERED = 4096  # verified tokens kept per filter
REMEMBER_S = 300.0  # at most this long (and never past the token's exp)
ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512"),
    "OKP": ("EdDSA",),
}


@dataclass(frozen=True, slots=True)
class TokenSource:
    headers: tuple[tuple[bytes, str], ...] = ((b"authorization", "Bearer "),)  # (name, prefix)
    cookies: tuple[str, ...] = ()
    params: tuple[str, ...] = ()

    def find(self, x: Exchange) -> str | None:
        for name, prefix in self.headers:
            value = x.header(name)
            if value is not None:
                text = value.decode("latin-1").strip()
                if text[: len(prefix)].lower() == prefix.lower():
                    return text[len(prefix) :].strip() or None
        if self.cookies and (cookie := x.header(b"cookie")):
            jar = dict(p.strip().split("=", 1) for p in cookie.decode("latin-1").split(";")
                       if "=" in p)  # fmt: skip
            for c in self.cookies:
                if jar.get(c):
                    return jar[c]
        if self.params and x.query:
            params = dict(parse_qsl(x.query))
            for p in self.params:
                if params.get(p):
                    return params[p]
        return None


def load_jwks(text: str) -> list[jwt.PyJWK]:
    """The usable keys of a JWKS document (ValueError when it is not one)."""
    try:
        doc = json.loads(text)
        keys = doc["keys"]
    except (ValueError, KeyError, TypeError):
        raise ValueError('is not a JWKS document ({"keys": [...]})') from None
    out = []
    for i, k in enumerate(keys):
        if not isinstance(k, dict) or k.get("kty") not in ALGORITHMS:
            raise ValueError(f"key {i}: kty must be one of {', '.join(ALGORITHMS)}")
        if "d" in k:
            raise ValueError(f"key {i} is a private key: publish only public keys")
        try:
            out.append(jwt.PyJWK(k))
        except jwt.PyJWTError as exc:
            raise ValueError(f"key {i}: {exc}") from None
    if not out:
        raise ValueError("has no keys")
    return out


class UnknownKey(jwt.InvalidKeyError):
    """The provider's keys have none the token's kid names (or none at all yet)."""


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    keys: tuple[jwt.PyJWK, ...] = ()  # localJWKS
    issuer: str | None = None
    audiences: tuple[str, ...] = ()
    source: TokenSource = TokenSource()
    claim_to_headers: tuple[tuple[bytes, str], ...] = ()  # (header, claim)
    remote: RemoteJwks | None = None  # remoteJWKS: the keys are its cell's
    claim_fields: frozenset[bytes] = frozenset()  # claim_to_headers' names, as field_key

    def __post_init__(self) -> None:
        names = frozenset(field_key(h) for h, _ in self.claim_to_headers)
        object.__setattr__(self, "claim_fields", names)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims (jwt.PyJWTError when it is not valid for this provider)."""
        header = jwt.get_unverified_header(token)
        alg, kid = header.get("alg"), header.get("kid")
        keys = self.remote.cell.keys if self.remote is not None else self.keys
        candidates = [k for k in keys if kid is None or k.key_id == kid]
        if not candidates:
            raise UnknownKey(f"no key for kid {kid!r}")
        for key in candidates:
            if alg not in ALGORITHMS.get(key.key_type or "", ()):
                continue
            return jwt.decode(
                token, key=key.key, algorithms=[alg], issuer=self.issuer,
                audience=list(self.audiences) or None, leeway=LEEWAY_S,
                options={"verify_aud": bool(self.audiences)},
            )  # fmt: skip
        raise jwt.InvalidKeyError(f"no key for kid {kid!r} and alg {alg!r}")

    def may_refetch(self) -> bool:
        """Whether a token this provider has no key for should wait for a JWKS fetch:
        before the first answer, or once per MISS_INTERVAL_S for a rotation."""
        cell = self.remote.cell if self.remote is not None else None
        if cell is None or cell.owner is None:
            return False
        if not cell.fetched:
            return cell.failures == 0  # the first fetch is under way
        return cell.may_refetch_for_miss(cell.owner.clock())


class JwtFilter:
    """Clients reuse a token for many requests: a verified one is remembered (by its text,
    with the provider and claims) until its `exp` or for REMEMBER_S, whichever is sooner,
    so only its first request pays for the signature check."""

    __slots__ = ("challenge", "clock", "invalid", "providers", "verified")

    def __init__(self, providers: tuple[Provider, ...], realm: str) -> None:
        self.providers = providers
        self.verified: OrderedDict[str, tuple[float, Provider, dict[str, Any]]] = OrderedDict()
        self.clock = time.time
        www = ((b"www-authenticate", b'Bearer realm="%b"' % realm.encode()),)
        self.challenge = LocalReply(401, b"a token is required\n", www, "jwt_missing")
        self.invalid = LocalReply(
            401, b"invalid token\n",
            ((b"www-authenticate", www[0][1] + b', error="invalid_token"'),), "jwt_invalid",
        )  # fmt: skip

    def describe(self) -> str:
        return f"jwt: providers {', '.join(p.name for p in self.providers)}"

    def on_request(self, x: Exchange) -> Verdict | Awaitable[Verdict]:
        found = False
        now = self.clock()
        waiting: list[tuple[Provider, str]] = []  # tokens whose keys are being fetched
        for p in self.providers:
            token = p.source.find(x)
            if token is None:
                continue
            found = True
            known = self.verified.get(token)
            if known is not None and known[0] > now and known[1] is p:
                self._forward(x, p, known[2])
                return None
            try:
                claims = p.verify(token)
            except UnknownKey:
                if p.may_refetch():
                    waiting.append((p, token))
                continue
            except (jwt.PyJWTError, ValueError):
                continue  # another provider may know the token
            self._remember(token, p, claims, now)
            self._forward(x, p, claims)
            return None
        if waiting:
            return self._after_fetch(x, waiting)
        return self.invalid if found else self.challenge

    async def _after_fetch(
        self, x: Exchange, waiting: list[tuple[Provider, str]]
    ) -> LocalReply | None:
        """The tokens again once their providers' keys are fetched (a rotation)."""
        for p, token in waiting:
            assert p.remote is not None and p.remote.cell.owner is not None
            await p.remote.cell.owner.wait_for(p.remote.cell)
            try:
                claims = p.verify(token)
            except (jwt.PyJWTError, ValueError):
                continue
            self._remember(token, p, claims, self.clock())
            self._forward(x, p, claims)
            return None
        return self.invalid

    def _remember(self, token: str, p: Provider, claims: dict[str, Any], now: float) -> None:
        until = now + REMEMBER_S
        exp = claims.get("exp")
        if isinstance(exp, int | float):
            until = min(until, float(exp) + LEEWAY_S)
        self.verified[token] = (until, p, claims)
        self.verified.move_to_end(token)
        if len(self.verified) > REMEMBERED:
            self.verified.popitem(last=False)

    @staticmethod
    def _forward(x: Exchange, p: Provider, claims: dict[str, Any]) -> None:
        x.jwt = (p.name, claims)
        if not p.claim_to_headers:
            return
        append = []
        for header, claim in p.claim_to_headers:
            value = claims.get(claim)
            text = str(value) if value is not None and not isinstance(value, dict | list) else ""
            if text and text.isprintable():  # never a CR, LF or other control upstream
                append.append((header, text.encode("utf-8")))
        ops = HeaderOps(drop=p.claim_fields, append=tuple(append))
        x.request_ops.append(ops)
        x.headers = ops.apply(x.headers)
