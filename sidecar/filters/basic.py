"""Basic authentication (SecurityPolicy.basicAuth): users and password hashes from an
htpasswd file in a Secret (key `.htpasswd`), `{SHA}` (what Envoy Gateway accepts) and
bcrypt (`$2y$`, `$2b$`, `$2a$`, what `htpasswd -B` writes).

A request without valid credentials is answered 401 with `WWW-Authenticate: Basic
realm="…"`. bcrypt is slow on purpose (tens of milliseconds): it runs in a worker thread,
two at a time at most, so a client guessing passwords costs the proxy two threads' CPU,
never its event loop; a verified `Authorization` value is remembered (its SHA-256, not the
password) so a user's next requests cost a dictionary lookup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Awaitable

import trio

from sidecar.config.headerops import HeaderOps, field_key
from sidecar.filters.chain import Exchange, LocalReply, Verdict

BCRYPT = (b"$2y$", b"$2b$", b"$2a$")
REMEMBERED = 1024  # verified credentials kept per policy
_THREADS = trio.CapacityLimiter(2)


def supported(hashed: bytes) -> bool:
    return hashed.startswith((b"{SHA}", *BCRYPT))


def parse_htpasswd(text: bytes) -> tuple[dict[str, bytes], list[str]]:
    """(user -> hash, users left out: a hash kind not supported, or a name with control
    characters, which could not be forwarded as a header)."""
    users: dict[str, bytes] = {}
    skipped = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#") or b":" not in line:
            continue
        user, _, hashed = line.partition(b":")
        name = user.decode("utf-8", "replace")
        if not name.isprintable():  # it may be forwarded as a header value
            skipped.append(repr(name))
        elif supported(hashed):
            users[name] = hashed
        else:
            skipped.append(name)
    return users, skipped


class BasicAuthFilter:
    __slots__ = ("challenge", "forward", "known", "users")

    def __init__(self, users: dict[str, bytes], realm: str, forward: bytes | None) -> None:
        self.users = users
        self.forward = forward  # header naming the user upstream
        self.known: OrderedDict[bytes, str] = OrderedDict()  # sha256(Authorization) -> user
        self.challenge = LocalReply(
            401, b"authentication required\n",
            ((b"www-authenticate", b'Basic realm="%b"' % realm.encode()),), "basic_refused",
        )  # fmt: skip

    def describe(self) -> str:
        return f"basic auth: {len(self.users)} user(s)"

    def on_request(self, x: Exchange) -> Verdict | Awaitable[Verdict]:
        value = x.header(b"authorization")
        if value is None or value[:6].lower() != b"basic ":
            return self.challenge
        seen = hashlib.sha256(value).digest()
        user = self.known.get(seen)
        if user is not None:
            self.known.move_to_end(seen)
            return self._pass(x, user)
        try:
            name, _, password = base64.b64decode(value[6:].strip(), validate=True).partition(b":")
        except binascii.Error:
            return self.challenge
        hashed = self.users.get(name.decode("utf-8", "replace"))
        if hashed is None:
            return self.challenge
        if hashed.startswith(b"{SHA}"):
            digest = base64.b64encode(hashlib.sha1(password).digest())  # the {SHA} format
            return self._check(x, seen, name, hmac.compare_digest(digest, hashed[5:]))
        return self._bcrypt(x, seen, name, password, hashed)

    async def _bcrypt(
        self, x: Exchange, seen: bytes, name: bytes, password: bytes, hashed: bytes
    ) -> Verdict:
        import bcrypt

        ok = await trio.to_thread.run_sync(
            bcrypt.checkpw, password, b"$2b$" + hashed[4:], limiter=_THREADS
        )
        return self._check(x, seen, name, ok)

    def _check(self, x: Exchange, seen: bytes, name: bytes, ok: bool) -> Verdict:
        if not ok:
            return self.challenge
        user = name.decode("utf-8", "replace")
        self.known[seen] = user
        if len(self.known) > REMEMBERED:
            self.known.popitem(last=False)
        return self._pass(x, user)

    def _pass(self, x: Exchange, user: str) -> Verdict:
        if self.forward is not None:
            ops = HeaderOps(drop=frozenset({field_key(self.forward)}),
                            append=((self.forward, user.encode()),))  # fmt: skip
            x.request_ops.append(ops)
            x.headers = ops.apply(x.headers)
        return None
