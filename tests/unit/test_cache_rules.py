"""RFC 9111's rules as the cache applies them: directives, what a shared cache may store,
lifetimes, ages, validation."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from sidecar.filters.cache_rules import (
    Entry,
    directives,
    freshened,
    make_entry,
    refusal,
    satisfied,
)

NOW = 1_800_000_000.0


def _date(t: float) -> bytes:
    return formatdate(t, usegmt=True).encode()


def test_directives() -> None:
    d = directives(b'max-age=60, No-Cache="set-cookie, x", private , s-maxage=bad')
    assert d == {b"max-age": b"60", b"no-cache": b"set-cookie, x", b"private": b"",
                 b"s-maxage": b"bad"}  # fmt: skip
    assert directives(None) == {} and directives(b"") == {}


@pytest.mark.parametrize(
    ("status", "response", "authorized", "why"),
    [
        (200, [(b"cache-control", b"max-age=60")], False, ""),
        (200, [(b"cache-control", b"no-store")], False, "no-store"),
        (200, [(b"cache-control", b"private, max-age=60")], False, "private"),
        (200, [(b"cache-control", b"max-age=60")], True, "authorization"),
        (200, [(b"cache-control", b"s-maxage=60")], True, ""),
        (200, [(b"cache-control", b"max-age=60"), (b"set-cookie", b"a=1")], False, "set-cookie"),
        (200, [(b"cache-control", b"public, max-age=60"), (b"Set-Cookie", b"a")], False, ""),
        (200, [(b"cache-control", b"max-age=60"), (b"vary", b"accept, *")], False, "vary-star"),
        (206, [(b"cache-control", b"max-age=60")], False, "status"),
        (500, [], False, "status"),  # not heuristically cacheable, no explicit lifetime
        (404, [], False, ""),
    ],
)
def test_what_a_shared_cache_may_store(
    status: int, response: list[tuple[bytes, bytes]], authorized: bool, why: str
) -> None:
    cc = directives(b", ".join(v for n, v in response if n == b"cache-control"))
    assert refusal("GET", status, {}, cc, response, authorized) == why


def test_request_no_store_and_methods() -> None:
    assert refusal("GET", 200, {b"no-store": b""}, {}, [], False) == "no-store"
    assert refusal("HEAD", 200, {}, {b"max-age": b"9"}, [], False) == "method"


def test_lifetimes_and_ages() -> None:
    def entry(*headers: tuple[bytes, bytes], sent: float = NOW - 1) -> Entry:
        e = make_entry(200, [(b"date", _date(NOW - 10)), *headers], b"x", [], sent, NOW)
        assert e is not None
        return e

    assert entry((b"cache-control", b"max-age=60, s-maxage=30")).lifetime == 30  # shared
    assert entry((b"expires", _date(NOW + 50))).lifetime == 60  # Expires - Date
    assert entry((b"expires", b"0"), (b"etag", b'"e"')).lifetime == 0  # invalid: stale
    assert entry((b"last-modified", _date(NOW - 1010))).lifetime == 100  # 10% heuristic
    aged = entry((b"cache-control", b"max-age=60"), (b"age", b"30"))
    assert aged.age(NOW) == 31  # the Age it came with, plus the trip (1 s)
    assert entry((b"cache-control", b"max-age=60")).age(NOW + 5) == 15  # Date 10 s ago
    no_date = make_entry(200, [(b"cache-control", b"max-age=5")], b"", [], NOW, NOW)
    assert no_date is not None and no_date.age(NOW + 3) == 3  # Date added when stored
    assert (b"date", _date(NOW)) in no_date.headers
    assert make_entry(200, [(b"date", _date(NOW))], b"", [], NOW, NOW) is None  # useless
    assert entry((b"cache-control", b"max-age=1, must-revalidate")).no_stale
    assert entry((b"cache-control", b"no-cache"), (b"etag", b'"a"')).always_revalidate
    swr = entry((b"cache-control", b"max-age=1, stale-while-revalidate=9, stale-if-error=7"))
    assert (swr.stale_while_revalidate, swr.stale_if_error) == (9, 7)


def test_vary_keys_and_validation() -> None:
    headers = [(b"date", _date(NOW)), (b"cache-control", b"max-age=60"), (b"etag", b'W/"v1"'),
               (b"vary", b"Accept-Encoding, accept"), (b"last-modified", _date(NOW - 100))]  # fmt: skip
    e = make_entry(200, headers, b"body", [(b"Accept-Encoding", b"gzip")], NOW, NOW)
    assert e is not None and e.vary == ((b"accept-encoding", b"gzip"), (b"accept", None))
    assert satisfied(e, b'"v1"', None) and satisfied(e, b'"x", W/"v1"', None)
    assert satisfied(e, b"*", None) and not satisfied(e, b'"v2"', None)
    assert satisfied(e, None, _date(NOW - 50)) and not satisfied(e, None, _date(NOW - 500))
    assert not satisfied(e, b'"v2"', _date(NOW))  # If-None-Match decides alone
    later = freshened(e, [(b"date", _date(NOW + 100)), (b"cache-control", b"max-age=5"),
                          (b"content-length", b"0")], NOW + 100, NOW + 100)  # fmt: skip
    assert later.lifetime == 5 and later.body == b"body" and later.vary == e.vary
    assert later.age(NOW + 100) == 0
    assert (b"content-length", b"0") not in later.headers
