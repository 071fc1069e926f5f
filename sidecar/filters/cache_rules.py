"""RFC 9111's rules for a shared cache, sans I/O: what may be stored, for how long it is
fresh, how old it is, when it may be served stale (RFC 5861), and whether a client's
conditional request is satisfied by what is stored.

Everything a hit needs is computed here once, when a response is stored (`Entry`): the
hit path compares two numbers and copies a header list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

# RFC 9110 §15.1: statuses a cache may store with a heuristic lifetime
HEURISTIC = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
HEURISTIC_FRACTION = 0.1  # of the time since Last-Modified (RFC 9111 §4.2.2)
HEURISTIC_MAX_S = 86400.0
# Fields a cache does not store (hop-by-hop, framing) or that describe one answer only.
NOT_STORED = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"content-length", b"age", b"x-cache",
    b"cache-status", b"set-cookie",
})  # fmt: skip
# Fields of a 304 that do not replace the stored ones (RFC 9111 §3.2)
NOT_UPDATED = NOT_STORED | {b"content-encoding", b"content-type", b"content-range"}

_DIRECTIVE = re.compile(rb'\s*([^\s=,]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,]*))?\s*(?:,|$)')


def directives(value: bytes | None) -> dict[bytes, bytes]:
    """Cache-Control directives: lower-case names, values unquoted (b"" when none)."""
    out: dict[bytes, bytes] = {}
    if not value:
        return out
    for m in _DIRECTIVE.finditer(value):
        arg = (m.group(2) or b"").strip()
        if arg.startswith(b'"') and arg.endswith(b'"') and len(arg) >= 2:
            arg = arg[1:-1]
        out.setdefault(m.group(1).lower(), arg)
    return out


def seconds(d: dict[bytes, bytes], name: bytes) -> int | None:
    """A delta-seconds directive; an invalid one counts as 0 (RFC 9111 §1.2.2)."""
    value = d.get(name)
    if value is None:
        return None
    return int(value) if value.isdigit() else 0


def http_date(value: bytes | None) -> float | None:
    if not value:
        return None
    from email.utils import parsedate_to_datetime  # loaded by the first cache that runs

    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def field(headers: Headers, name: bytes) -> bytes | None:
    """Every value of a field (lower-case `name`), joined as a list; None when absent."""
    values = [v for n, v in headers if n.lower() == name]
    return b", ".join(values) if values else None


@dataclass(slots=True)
class Entry:
    """One stored response (a variant of its URL)."""

    status: int
    headers: Headers  # as stored: lower-case names, none of NOT_STORED
    body: bytes
    vary: tuple[tuple[bytes, bytes | None], ...]  # the request's values of the Vary fields
    response_time: float  # when it was received or last validated (wall clock)
    initial_age: float  # RFC 9111 §4.2.3's corrected_initial_age
    lifetime: float  # freshness lifetime in seconds
    stale_while_revalidate: float
    stale_if_error: float
    no_stale: bool  # must-revalidate, proxy-revalidate or s-maxage: never served stale
    always_revalidate: bool  # `no-cache`: stored, but validated before every use
    etag: bytes | None
    last_modified: bytes | None
    size: int

    def age(self, now: float) -> float:
        return self.initial_age + max(0.0, now - self.response_time)


def refusal(
    method: str, status: int, request_cc: dict[bytes, bytes], response_cc: dict[bytes, bytes],
    headers: Headers, authorized: bool,
) -> str:  # fmt: skip
    """Why a shared cache must not store this answer (RFC 9111 §3, §3.5), or "" if it may.
    A `Set-Cookie` answer is one user's unless it says `public`."""
    if method != "GET":
        return "method"
    if b"no-store" in request_cc or b"no-store" in response_cc:
        return "no-store"
    if b"private" in response_cc:
        return "private"
    public = b"public" in response_cc
    if authorized and not (public or b"s-maxage" in response_cc
                           or b"must-revalidate" in response_cc):  # fmt: skip
        return "authorization"
    if not public and any(n.lower() == b"set-cookie" for n, _ in headers):
        return "set-cookie"
    vary = field(headers, b"vary")
    if vary is not None and b"*" in {v.strip() for v in vary.split(b",")}:
        return "vary-star"
    if status < 200 or status in (206, 304):
        return "status"
    explicit = (
        b"max-age" in response_cc or b"s-maxage" in response_cc
        or field(headers, b"expires") is not None or public
    )  # fmt: skip
    if status not in HEURISTIC and not explicit:
        return "status"
    return ""


def make_entry(
    status: int, headers: Headers, body: bytes, request_headers: Headers,
    request_time: float, response_time: float,
) -> Entry | None:  # fmt: skip
    """The entry for a storable answer (headers as the client got them); None when it
    could never be used (no lifetime and no validator)."""
    cc = directives(field(headers, b"cache-control"))
    stored = [(n.lower(), v) for n, v in headers if n.lower() not in NOT_STORED]
    date = http_date(field(stored, b"date"))
    if date is None:  # a cache adds the Date the origin left out (RFC 9110 §6.6.1)
        date = response_time
        stored.append((b"date", _imf(response_time)))
    lifetime = _lifetime(status, cc, stored, date)
    etag = field(stored, b"etag")
    last_modified = field(stored, b"last-modified")
    if lifetime <= 0 and etag is None and last_modified is None:
        return None
    vary_field = field(stored, b"vary")
    names = [v.strip().lower() for v in vary_field.split(b",")] if vary_field else []
    vary = tuple((name, field(request_headers, name)) for name in names if name)
    age_value = 0.0
    age_field = field(headers, b"age")
    if age_field is not None and age_field.strip().isdigit():
        age_value = float(age_field.strip())
    apparent = max(0.0, response_time - date)
    initial_age = max(apparent, age_value + (response_time - request_time))
    size = len(body) + sum(len(n) + len(v) + 4 for n, v in stored) + 256
    return Entry(
        status=status, headers=stored, body=body, vary=vary, response_time=response_time,
        initial_age=initial_age, lifetime=lifetime,
        stale_while_revalidate=float(seconds(cc, b"stale-while-revalidate") or 0),
        stale_if_error=float(seconds(cc, b"stale-if-error") or 0),
        no_stale=any(k in cc for k in (b"must-revalidate", b"proxy-revalidate", b"s-maxage")),
        always_revalidate=b"no-cache" in cc, etag=etag, last_modified=last_modified, size=size,
    )  # fmt: skip


def _lifetime(status: int, cc: dict[bytes, bytes], headers: Headers, date: float) -> float:
    """RFC 9111 §4.2.1: s-maxage, max-age, Expires minus Date, then the heuristic."""
    for name in (b"s-maxage", b"max-age"):
        value = seconds(cc, name)
        if value is not None:
            return float(value)
    expires = field(headers, b"expires")
    if expires is not None:
        when = http_date(expires)
        return max(0.0, when - date) if when is not None else 0.0  # invalid: already stale
    modified = http_date(field(headers, b"last-modified"))
    if status in HEURISTIC and modified is not None and modified < date:
        return min(HEURISTIC_MAX_S, (date - modified) * HEURISTIC_FRACTION)
    return 0.0


def freshened(entry: Entry, not_modified: Headers, request_time: float, now: float) -> Entry:
    """The entry after a 304 validated it: the 304's fields replace the stored ones of
    the same name (RFC 9111 §4.3.4), and its freshness starts again."""
    updates = [(n.lower(), v) for n, v in not_modified if n.lower() not in NOT_UPDATED]
    names = {n for n, _ in updates}
    headers = [h for h in entry.headers if h[0] not in names] + updates
    again = make_entry(entry.status, headers, entry.body, [], request_time, now)
    if again is None:
        return entry
    again.vary = entry.vary
    return again


def satisfied(entry: Entry, if_none_match: bytes | None, if_modified_since: bytes | None) -> bool:
    """Does a client's conditional GET match the stored answer (a 304 then)? RFC 9110
    §13.1.2 (weak comparison) and §13.1.3 (only without If-None-Match)."""
    if if_none_match is not None:
        if entry.etag is None:
            return False
        if if_none_match.strip() == b"*":
            return True
        mine = _opaque(entry.etag)
        return any(_opaque(tag) == mine for tag in if_none_match.split(b","))
    if if_modified_since is not None and entry.last_modified is not None:
        since, modified = http_date(if_modified_since), http_date(entry.last_modified)
        return since is not None and modified is not None and modified <= since
    return False


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag.startswith(b"W/") else tag


def _imf(when: float) -> bytes:
    from email.utils import formatdate

    return formatdate(when, usegmt=True).encode()


NOT_MODIFIED_FIELDS = (
    b"cache-control",
    b"content-location",
    b"date",
    b"etag",
    b"expires",
    b"vary",
    b"last-modified",
)  # fmt: skip (RFC 9110 §15.4.5)


def not_modified_headers(entry: Entry) -> Headers:
    return [(n, v) for n, v in entry.headers if n in NOT_MODIFIED_FIELDS]
