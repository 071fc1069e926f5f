"""The CORS filter's decisions, on the Gateway API conformance suite's HTTPRouteCORS cases
(routes and expectations transcribed from conformance/tests/httproute-cors.*)."""

from __future__ import annotations

import pytest

from sidecar.config.resources import CorsPolicy
from sidecar.filters.chain import Exchange, LocalReply
from sidecar.filters.cors import CorsFilter

CORS_1 = CorsPolicy(
    origins=("https://www.foo.com", "https://*.bar.com"), methods=("GET", "OPTIONS"),
    headers=("x-header-1", "x-header-2"), expose=("x-header-3", "x-header-4"),
    max_age_s=3600, credentials=True,
)  # fmt: skip
CORS_2 = CorsPolicy(origins=("https://www.foo.com",), methods=("*",))
WILDCARD_ORIGIN = CorsPolicy(origins=("*",), methods=("PUT",))
ALL_CREDS = CorsPolicy(origins=("*",), methods=("*",), headers=("*",), credentials=True)
ALL_NO_CREDS = CorsPolicy(origins=("*",), methods=("*",), headers=("*",))


def _run(
    policy: CorsPolicy, method: str, headers: dict[str, str]
) -> tuple[LocalReply | None, dict[bytes, bytes]]:
    """The filter's reply (a preflight's) or the response fields it adds (others)."""
    x = Exchange(
        method, "gw", "/p", "", [(k.encode(), v.encode()) for k, v in headers.items()], "1.2.3.4"
    )
    reply = CorsFilter(policy).on_request(x)
    if reply is not None:
        return reply, dict(reply.headers)
    fields: list[tuple[bytes, bytes]] = [(b"access-control-allow-origin", b"https://from.backend")]
    for ops in x.response_ops:
        fields = ops.apply(fields)
    return None, dict(fields)


def _preflight(origin: str, method: str, headers: str = "") -> dict[str, str]:
    out = {"Origin": origin, "access-control-request-method": method}
    if headers:
        out["access-control-request-headers"] = headers
    return out


@pytest.mark.parametrize(
    "origin", ["https://www.foo.com", "https://www.bar.com", "https://xpto.www.bar.com"]
)
def test_preflight_from_an_allowed_origin_is_answered_here(origin: str) -> None:
    reply, got = _run(CORS_1, "OPTIONS", _preflight(origin, "GET", "x-header-1, x-header-2"))
    assert reply is not None and reply.status == 204
    assert got[b"access-control-allow-origin"] == origin.encode()
    assert got[b"access-control-allow-methods"] == b"GET, OPTIONS"
    assert got[b"access-control-allow-headers"] == b"x-header-1, x-header-2"
    assert got[b"access-control-expose-headers"] == b"x-header-3, x-header-4"
    assert got[b"access-control-max-age"] == b"3600"
    assert got[b"access-control-allow-credentials"] == b"true"
    assert got[b"vary"] == b"origin"


@pytest.mark.parametrize(
    ("headers", "detail"),
    [(_preflight("https://foobar.com", "GET"), "cors_origin_refused"),
     (_preflight("https://bar.com", "GET"), "cors_origin_refused"),  # *. needs a label
     (_preflight("http://www.foo.com", "GET"), "cors_origin_refused"),  # another scheme
     (_preflight("https://www.foo.com", "DELETE"), "cors_method_refused"),
     (_preflight("https://www.foo.com", "GET", "x-other"), "cors_header_refused")],
)  # fmt: skip
def test_preflight_refused_says_nothing_of_cors(headers: dict[str, str], detail: str) -> None:
    reply, got = _run(CORS_1, "OPTIONS", headers)
    assert reply is not None and reply.status == 403 and reply.detail == detail
    assert not any(k.startswith(b"access-control-") for k in got)


def test_actual_requests_get_the_fields_for_an_allowed_origin_only() -> None:
    reply, got = _run(CORS_1, "GET", {"Origin": "https://www.bar.com"})
    assert reply is None
    assert got[b"access-control-allow-origin"] == b"https://www.bar.com"  # not the backend's
    assert got[b"access-control-allow-credentials"] == b"true"
    assert got[b"access-control-expose-headers"] == b"x-header-3, x-header-4"
    assert b"access-control-max-age" not in got
    _, refused = _run(CORS_1, "GET", {"Origin": "https://foobar.com"})
    assert b"access-control-allow-origin" not in refused and refused[b"vary"] == b"origin"
    _, no_origin = _run(CORS_1, "GET", {})
    assert b"access-control-allow-origin" not in no_origin


def test_wildcard_methods_and_origins() -> None:
    reply, got = _run(CORS_2, "OPTIONS", _preflight("https://www.foo.com", "POST"))
    assert reply is not None and reply.status == 204
    assert got[b"access-control-allow-methods"] == b"POST"
    assert b"access-control-allow-credentials" not in got
    for origin in ("https://foobar.com", "https://foobar.com:12345"):
        reply, got = _run(WILDCARD_ORIGIN, "OPTIONS", _preflight(origin, "PUT"))
        assert reply is not None and got[b"access-control-allow-origin"] == origin.encode()
        assert got[b"access-control-allow-methods"] == b"PUT"
        _, got = _run(WILDCARD_ORIGIN, "PUT", {"Origin": origin})
        assert got[b"access-control-allow-origin"] == origin.encode()


@pytest.mark.parametrize(("policy", "creds"), [(ALL_CREDS, True), (ALL_NO_CREDS, False)])
def test_wildcard_everything_echoes_what_was_asked(policy: CorsPolicy, creds: bool) -> None:
    asked = _preflight("https://other.foo.com", "PUT", "x-header-1, x-header-2")
    reply, got = _run(policy, "OPTIONS", asked)
    assert reply is not None and reply.status == 204
    assert got[b"access-control-allow-origin"] == b"https://other.foo.com"
    assert got[b"access-control-allow-methods"] == b"PUT"
    assert got[b"access-control-allow-headers"] == b"x-header-1, x-header-2"
    assert (b"access-control-allow-credentials" in got) is creds
    _, got = _run(policy, "GET", {"Origin": "https://other.foo.com"})
    assert (got.get(b"access-control-allow-credentials") == b"true") is creds


def test_any_origin_still_means_an_origin() -> None:
    for odd in ("https://a.example\x00x", "https://a example", "https://a.example/path", "null"):
        reply, fields = _run(WILDCARD_ORIGIN, "OPTIONS", _preflight(odd, "PUT"))
        assert reply is not None and reply.status == 403, odd
        assert b"access-control-allow-origin" not in fields  # never echoed back
