"""Framing rules of the HTTP/1 request parser: what is refused, and with which status."""

from __future__ import annotations

import pytest

from sidecar.errors import ProtocolError
from sidecar.protocol.http1 import End, RequestHead, RequestParser
from sidecar.protocol.response import ResponseHead, ResponseParser

REFUSED = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "conflicting_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "cl_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
    "signed_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk_size_overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
    "chunk_bare_lf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    "te_not_chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "te_twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    "bad_name_char": b"GET / HTTP/1.1\r\nHost: a\r\nX(y): a\r\n\r\n",
    "ctl_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "bare_lf_line": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_lf_header": b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    "bare_cr": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "http_0_9": b"GET /\r\n\r\n",
    "http_1_2": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    "no_host_1_1": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "te_in_1_0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad_method": b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    "unknown_expect": b"POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx",
}


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
def test_ambiguous_or_malformed_framing_is_refused(raw: bytes) -> None:
    parser = RequestParser()
    with pytest.raises(ProtocolError) as err:
        parser.feed(raw)
    assert 400 <= err.value.status < 600


def _events(parser: RequestParser) -> list[object]:
    return list(parser.events)


def test_pipelined_requests_come_out_in_order() -> None:
    p = RequestParser()
    p.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    heads = [e for e in p.events if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == ["/1", "/2"]
    assert sum(isinstance(e, End) for e in p.events) == 2


def test_chunked_body_and_trailers() -> None:
    p = RequestParser()
    p.feed(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n")
    p.feed(b"2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")
    ev = _events(p)
    head = ev[0]
    assert isinstance(head, RequestHead) and head.chunked and head.content_length is None
    assert b"".join(e for e in ev if isinstance(e, bytes)) == b"abcde"
    end = ev[-1]
    assert isinstance(end, End) and end.trailers == [(b"X-Sum", b"5")]


def test_header_limit_gives_431_even_without_line_end() -> None:
    p = RequestParser(max_header_bytes=1024)
    with pytest.raises(ProtocolError) as err:
        p.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 2000 + b"\r\n\r\n")
    assert err.value.status == 431
    endless = RequestParser(max_header_bytes=1024)
    endless.feed(b"GET / HTTP/1.1\r\nX: ")
    with pytest.raises(ProtocolError) as err:
        for _ in range(200):
            endless.feed(b"a" * 1024)
    assert err.value.status == 431


def test_too_many_headers_gives_431() -> None:
    p = RequestParser(max_headers=10)
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(20))
    with pytest.raises(ProtocolError) as err:
        p.feed(raw + b"\r\n")
    assert err.value.status == 431


def test_body_limit_gives_413_for_declared_and_streamed_lengths() -> None:
    declared = RequestParser(max_body_bytes=10)
    with pytest.raises(ProtocolError) as err:
        declared.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    assert err.value.status == 413
    streamed = RequestParser(max_body_bytes=10)
    streamed.feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n"
    )
    with pytest.raises(ProtocolError) as err:
        streamed.feed(b"8\r\n12345678\r\n")
    assert err.value.status == 413


def test_ignored_upgrade_keeps_parsing_the_body_and_next_request() -> None:
    p = RequestParser()
    p.feed(
        b"POST /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAA\r\nContent-Length: 3\r\n\r\nabcGET /y HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    ev = _events(p)
    assert isinstance(ev[0], RequestHead) and ev[0].upgrade == b"h2c"
    assert ev[1] == b"abc" and isinstance(ev[2], End)
    assert isinstance(ev[3], RequestHead) and ev[3].target == "/y"


def test_connect_is_refused() -> None:
    with pytest.raises(ProtocolError) as err:
        RequestParser().feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
    assert err.value.status == 405


def test_expect_continue_and_http10_keepalive() -> None:
    p = RequestParser()
    p.feed(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
    head = p.events[0]
    assert isinstance(head, RequestHead) and head.expect_continue
    old = RequestParser()
    old.feed(b"GET / HTTP/1.0\r\n\r\n")
    h10 = old.events[0]
    assert isinstance(h10, RequestHead) and not h10.keep_alive and h10.host == ""


def test_response_parser_handles_interim_head_and_close_delimited() -> None:
    r = ResponseParser()
    r.start(head_request=False)
    r.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    ev = list(r.events)
    assert isinstance(ev[0], ResponseHead) and ev[0].status == 200
    assert ev[1] == b"ok" and isinstance(ev[2], End) and r.done
    c = ResponseParser()
    c.start(head_request=False)
    c.feed(b"HTTP/1.1 200 OK\r\n\r\nabc")
    assert not c.done and c.close_delimited
    assert c.feed_eof() and c.done
    truncated = ResponseParser()
    truncated.start(head_request=False)
    truncated.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert not truncated.feed_eof()


def test_response_parser_reuse_after_head_request() -> None:
    r = ResponseParser()
    r.start(head_request=True)
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert r.done
    r.start(head_request=False)
    r.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert r.done and isinstance(r.events[0], ResponseHead) and r.events[0].status == 204


def test_response_fields_are_read_from_the_validated_block() -> None:
    r = ResponseParser()
    r.start(head_request=False)
    r.feed(
        b"HTTP/1.1 200 Fine Thanks\r\nServer: x\r\nCONNECTION: keep-alive, X-Private\r\n"
        b"X-Private: 1\r\nkeep-alive: timeout=5\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: text/plain\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    head = r.events[0]
    assert isinstance(head, ResponseHead)
    assert head.status == 200 and head.reason == b"Fine Thanks"
    assert head.chunked and head.content_length is None and head.keep_alive
    assert sorted(head.cut) == [b"CONNECTION", b"Transfer-Encoding", b"keep-alive"]
    assert head.connection_named() == [b"X-Private"]
    assert (b"Content-Type", b"text/plain") in head.headers
    assert r.events[1] == b"abc" and r.done


def test_response_head_split_across_reads_and_after_interim() -> None:
    r = ResponseParser()
    r.start(head_request=False)
    r.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Cre")
    r.feed(b"ated\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    head = r.events[0]
    assert isinstance(head, ResponseHead)
    assert head.status == 201 and head.reason == b"Created" and head.content_length == 2
    assert not head.keep_alive and head.raw == b"Content-Length: 2\r\nConnection: close\r\n"


def test_partial_head_only_while_a_head_is_incomplete() -> None:
    """Keep-alive connections between requests are idle, not in a head (header timeout and
    the 408 apply only to a head that began)."""
    p = RequestParser()
    assert not p.partial_head
    p.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not p.partial_head
    p.feed(b"GET /next HTTP/1.1\r\nHo")
    assert p.partial_head
    p.feed(b"st: a\r\n\r\n")
    assert not p.partial_head
