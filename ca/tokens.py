"""Join tokens: proof that a new sidecar may take one service identity (pure core).

A token is `weft1.<payload>.<mac>`: the payload (base64url JSON) names the SPIFFE ID, an
expiry and a random id; the MAC is HMAC-SHA256 over it with the control plane's token key
(32 random bytes in `<data-dir>/ca/token-key`, 0600). Tokens are bearer secrets: short-lived
(1 h by default) and good for exactly the identity they name, which the CA then signs and
nothing else. Verification takes `now` and the key, so every refusal is testable.

A token names its use: "join" tokens bootstrap an SVID; "session" tokens, handed out with
each SVID and living as long as it, let a sidecar open its config watch. One cannot stand in
for the other (a leaked session token cannot mint certificates).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import secrets

from ca.spiffe import InvalidSpiffeId, SpiffeId

PREFIX = "weft1"
DEFAULT_TTL = datetime.timedelta(hours=1)


class TokenError(Exception):
    """A token that proves nothing; the message says why (expired, forged, malformed)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def create(
    key: bytes,
    identity: SpiffeId,
    *,
    now: datetime.datetime,
    ttl: datetime.timedelta,
    use: str = "join",
) -> str:
    payload = json.dumps(
        {
            "sub": identity.uri,
            "exp": int((now + ttl).timestamp()),
            "jti": secrets.token_hex(8),
            "use": use,
        },
        separators=(",", ":"),
    ).encode()
    body = f"{PREFIX}.{_b64(payload)}"
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(key: bytes, token: str, *, now: datetime.datetime, use: str = "join") -> SpiffeId:
    """The identity a valid token for `use` proves; TokenError otherwise."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError("malformed token (expected weft1.<payload>.<mac>)")
    body = f"{parts[0]}.{parts[1]}"
    try:
        mac = _unb64(parts[2])
    except ValueError:
        raise TokenError("malformed token signature") from None
    if not hmac.compare_digest(mac, hmac.new(key, body.encode(), hashlib.sha256).digest()):
        raise TokenError("token signature does not match: forged, or from another control plane")
    try:
        claims = json.loads(_unb64(parts[1]))
        identity = SpiffeId.parse(claims["sub"])
        expires = datetime.datetime.fromtimestamp(int(claims["exp"]), datetime.UTC)
        token_use = str(claims.get("use", "join"))
    except (ValueError, KeyError, TypeError, InvalidSpiffeId) as exc:
        raise TokenError(f"malformed token payload ({exc})") from None
    if token_use != use:
        raise TokenError(f"a {token_use} token cannot be used as a {use} token")
    if expires <= now:
        raise TokenError(f"token for {identity.uri} expired at {expires.isoformat()}")
    return identity
