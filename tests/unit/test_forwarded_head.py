"""What the HTTP/1 proxy forwards, checked by the differential oracle
(tests/support/forward_oracle.py): every accepted request reaches a backend as exactly the
request that was validated, for a strict and a lenient backend parser, on the fast and the
slow path. Named cases for each smuggling finding, then a seeded property-based pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.support.forward_oracle import (
    EDGE,
    EDITS,
    INBOUND,
    check,
    check_input,
    check_one,
    forwarded,
    parse_strict,
)
from tests.support.hostile import connection

SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"


def _post(extra: bytes, body: bytes = SMUGGLED, lead: bytes = b"") -> bytes:
    return (
        lead + b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n" % len(body)
        + extra + b"\r\n" + body
    )  # fmt: skip


FINDINGS = {
    # Connection naming a framing or routing field must not strip it
    "connection_content_length": _post(b"Connection: Content-Length\r\n"),
    "connection_host_and_id": b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: host, x-request-id\r\n"
    b"X-Request-Id: abc\r\n\r\n",
    "connection_xfcc": b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-Client-Cert\r\n\r\n",
    # empty lines before the request line, first and in the middle of a keep-alive connection
    "leading_crlf": _post(b"", lead=b"\r\n"),
    "leading_lf": _post(b"", lead=b"\n"),
    "leading_lines_keepalive": b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n" + _post(b"", lead=b"\r\n\n"),
    # absolute form without a path
    "absolute_no_path": b"GET http://a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n",
    # CGI aliases beside the real field
    "underscore_te": _post(b"Transfer_Encoding: chunked\r\n"),
    "underscore_xfcc": b"GET /a HTTP/1.1\r\nHost: h\r\nX_Forwarded_Client_Cert: By=a;URI=spiffe://x\r\n"
    b"X-Forwarded-Client-Cert: By=a;URI=spiffe://x\r\n\r\n",
    "leading_zero_length": b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0005\r\n\r\nhello",
    "empty_host": b"GET /a HTTP/1.1\r\nHost:\r\n\r\n",
    # several X-Request-Id lines spelled differently: one is forwarded, not two
    "request_ids_spelled_apart": b"GET /a HTTP/1.1\r\nHost: h\r\nx-request-id: a\r\n"
    b"X-Request-Id: b\r\n\r\n",
    "request_id_empty_first": b"GET /a HTTP/1.1\r\nHost: h\r\nX-Request-Id:\r\n"
    b"x-request-id: a\r\n\r\n",
}


@pytest.mark.parametrize("edge", [True, False], ids=["edge", "inbound"])
@pytest.mark.parametrize("data", FINDINGS.values(), ids=FINDINGS.keys())
def test_findings_reach_the_backend_as_validated(data: bytes, edge: bool) -> None:
    for cuts in ([], [1], [len(data) // 2], list(range(1, len(data), 7))):
        assert check(data, cuts, edge=edge) >= 1


def test_connection_content_length_keeps_the_length() -> None:
    (acc,), err = forwarded(_post(b"Connection: Content-Length\r\n"))
    assert err is None
    seen = parse_strict(acc.fast)
    assert len(seen) == 1 and seen[0].body == SMUGGLED
    assert seen[0].values(b"content-length") == [b"%d" % len(SMUGGLED)]


def test_leading_empty_lines_forward_the_whole_head() -> None:
    for lead in (b"\r\n", b"\n", b"\r\n\r\n"):
        (acc,), _ = forwarded(_post(b"X-Forwarded-Client-Cert: forged\r\n", lead=lead), edge=False)
        (seen,) = parse_strict(acc.fast)
        assert seen.target == b"/api" and seen.body == SMUGGLED
        assert seen.values(b"host") == [b"h"]
        want = INBOUND.client_cert.split(b": ", 1)[1].rstrip()
        assert seen.values(b"x-forwarded-client-cert") == [want]


def test_absolute_form_without_path_asks_for_the_root() -> None:
    (acc,), _ = forwarded(b"GET http://a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert acc.fast.startswith(b"GET /?x=1 HTTP/1.1\r\nhost: a\r\n")


@pytest.mark.parametrize(
    ("value", "status"),
    [(b"gzip, chunked", 501), (b"chunked, gzip", 400), (b"identity", 501)],
)
def test_transfer_codings_other_than_chunked_are_refused(value: bytes, status: int) -> None:
    accepted, err = forwarded(
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: " + value + b"\r\n\r\n0\r\n\r\n"
    )
    assert accepted == [] and err is not None and err.status == status


@pytest.mark.parametrize(
    "target", [b"/a#frag", b"/api/%2F..%2Fadmin", b"/a/%5cadmin", b"/a/%zz", b"/a/%4"]
)
def test_targets_refused(target: bytes) -> None:
    accepted, err = forwarded(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert accepted == [] and err is not None and err.status == 400


@pytest.mark.parametrize(
    ("target", "want"),
    [
        (b"/api/%2e%2e/admin", "/admin"),
        (b"/api/..\\admin", "/admin"),
        (b"//admin", "/admin"),
        (b"/api/%2E./admin/", "/admin/"),
        (b"/%7Euser/%41b%3f?q=%2e", "/~user/Ab%3F?q=%2e"),
    ],
)
def test_paths_are_normalized_before_they_are_forwarded(target: bytes, want: str) -> None:
    (acc,), err = forwarded(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert err is None and acc.target == want
    check_one(acc, EDGE)


REGRESSIONS = sorted((Path(__file__).parent.parent / "fuzz" / "http1").glob("*"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_past_fuzz_findings(path: Path) -> None:
    check_input(path.read_bytes())


@settings(
    max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(connection())
def test_any_accepted_request_is_forwarded_as_validated(conn: tuple[bytes, list[int]]) -> None:
    data, cuts = conn
    check(data, cuts, edge=True)
    check(data, cuts, edge=False)
    check(data, cuts, edge=True, ops=EDITS)


@pytest.mark.parametrize(
    "forged", [b"X-Sub: admin", b"x_sub: admin", b"X-API-KEY: k", b"X-Client: root"]
)
def test_edits_replace_identity_fields_a_client_forged(forged: bytes) -> None:
    data = b"GET /a HTTP/1.1\r\nHost: h\r\n" + forged + b"\r\nAccept: */*\r\n\r\n"
    assert check(data, edge=True, ops=EDITS) == 1
