"""Path rewriting, redirect targets and header modification (Gateway API semantics)."""

from __future__ import annotations

import pytest

from sidecar.config.headerops import HeaderOps
from sidecar.config.model import RedirectAction
from sidecar.http.filters import redirect_location, rewrite_path
from sidecar.http.paths import remove_dot_segments


@pytest.mark.parametrize(
    ("path", "prefix", "value", "want"),
    [
        ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
        ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
        ("/strip-prefix", "/strip-prefix", "/", "/"),
        ("/strip-prefix/", "/strip-prefix", "/", "/"),
        ("/a/b", "/", "/x", "/x/a/b"),
        ("/a/", "/a/", "/b/", "/b/"),
    ],
)
def test_replace_prefix_match(path: str, prefix: str, value: str, want: str) -> None:
    assert rewrite_path(path, prefix, "ReplacePrefixMatch", value) == want


def test_replace_full_path() -> None:
    assert rewrite_path("/full/one/two", "/full/one", "ReplaceFullPath", "/one") == "/one"


def _redirect(**kw: object) -> RedirectAction:
    base: dict[str, object] = {
        "scheme": None, "hostname": None, "path_type": None, "path_value": "", "port": None,
        "status_code": 302,
    }  # fmt: skip
    base.update(kw)
    return RedirectAction(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("redirect", "listener_port", "want"),
    [
        (_redirect(hostname="example.org"), 80, "http://example.org/p?q=1"),
        (_redirect(hostname="example.org"), 8080, "http://example.org:8080/p?q=1"),
        (_redirect(scheme="https"), 8080, "https://h/p?q=1"),
        (_redirect(scheme="https", port=8443), 80, "https://h:8443/p?q=1"),
        (_redirect(port=80), 8080, "http://h/p?q=1"),
        (_redirect(path_type="ReplaceFullPath", path_value="/x"), 80, "http://h/x?q=1"),
    ],
)
def test_redirect_scheme_and_port_rules(
    redirect: RedirectAction, listener_port: int, want: str
) -> None:
    got = redirect_location(
        redirect, scheme="http", host="h", listener_port=listener_port, target="/p?q=1",
        matched_prefix="/",
    )  # fmt: skip
    assert got == want


def test_header_ops_set_add_remove() -> None:
    ops = HeaderOps.build(set_=(("X-Set", "new"),), add=(("X-Add", "more"),), remove=("x-gone",))
    out = ops.apply([(b"x-set", b"old"), (b"X-Add", b"first"), (b"X-Gone", b"1"), (b"Keep", b"k")])
    assert out == [(b"X-Add", b"first"), (b"Keep", b"k"), (b"X-Set", b"new"), (b"X-Add", b"more")]


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../x", "/x"),
        ("/a//b/", "/a/b/"),
        ("/a/b/..", "/a/"),
    ],
)
def test_dot_segments_are_removed(path: str, want: str) -> None:
    assert remove_dot_segments(path) == want


def test_response_edits_are_applied_to_the_block_as_received() -> None:
    from sidecar.http.forward import response_head
    from sidecar.protocol.response import ResponseHead

    raw = (b"Server: up\r\nX-A: 1\r\nSet-Cookie: s=1\r\nx-a: 2\r\nContent-Length: 5\r\n"
           b"Connection: X-Hop\r\nX-Hop: h\r\n")  # fmt: skip
    resp = ResponseHead(200, b"OK", raw)
    ops = (HeaderOps.build(set_=(("X-A", "3"),), add=(("X-B", "b"),)),
           HeaderOps.build(remove=("x-b",), add=(("X-C", "c"),)))  # fmt: skip
    out = bytes(response_head(resp, ops, chunked=False, close=False, http10=False))
    assert out == (b"HTTP/1.1 200 OK\r\nServer: up\r\nSet-Cookie: s=1\r\nContent-Length: 5\r\n"
                   b"X-A: 3\r\nX-C: c\r\n\r\n")  # fmt: skip
    # the same edits through the parsed fields give the same fields
    parsed = [(n.lower(), v) for n, v in resp.headers if n.lower() not in (b"connection", b"x-hop")]
    for op in ops:
        parsed = op.apply(parsed)
    assert [(n.lower(), v) for n, v in parsed] == [
        (b"server", b"up"), (b"set-cookie", b"s=1"), (b"content-length", b"5"), (b"x-a", b"3"),
        (b"x-c", b"c")]  # fmt: skip


def test_a_regex_rewrite_replaces_the_first_match_with_its_groups() -> None:
    import re

    from sidecar.http.filters import rewrite_path

    regex = re.compile(r"^/api/v(\d+)/(.*)")
    assert rewrite_path("/api/v2/orders/7", None, "ReplaceRegexMatch", r"/\2?v=\1", regex) == \
        "/orders/7?v=2"  # fmt: skip
    assert rewrite_path("/other", None, "ReplaceRegexMatch", r"/\2", regex) == "/other"
    assert rewrite_path("/api/v1/x", None, "ReplaceRegexMatch", r"/\7", regex) == "/api/v1/x"
    whole = re.compile(r"(?i)^(?:/something(/|$)(.*)).*")
    assert rewrite_path("/SOMETHING", None, "ReplaceRegexMatch", r"/\2", whole) == "/"
