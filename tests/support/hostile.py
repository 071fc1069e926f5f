"""Hypothesis strategies for hostile HTTP/1 requests: the framing and routing fields a
smuggler plays with (Content-Length, Transfer-Encoding and their `_` spellings,
Connection naming other fields, Host, the fields a hop sets), leading empty lines, odd
targets (dot segments, escapes, backslashes, absolute form) and bodies that do or do not
match their framing, pipelined, fed in arbitrary pieces."""

from __future__ import annotations

from hypothesis import strategies as st

_NAMES = [
    b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Content_Length",
    b"Transfer-Encoding", b"transfer-encoding", b"Transfer_Encoding", b"Connection",
    b"connection", b"Keep-Alive", b"TE", b"Trailer", b"Upgrade", b"Expect",
    b"Proxy-Connection", b"X-Request-Id", b"X_Request_Id", b"X-Forwarded-For",
    b"X-Forwarded_For", b"X-Forwarded-Client-Cert", b"X_Forwarded_Client_Cert",
    b"X-Forwarded-Proto", b"X-Forwarded-Host", b"traceparent", b"X-Private", b"Cookie",
    b"Accept", b"x-a", b"X-Api-Key", b"x-client", b"X-CLIENT", b"X-Sub", b"x_sub", b"X-Tmp",
]  # fmt: skip
_FIELD_VALUES = [
    b"h", b"", b"0", b"5", b"05", b"+5", b"5, 5", b"chunked", b"Chunked", b" chunked",
    b"gzip, chunked", b"chunked, gzip", b"identity", b"close", b"keep-alive",
    b"Content-Length", b"content-length, host", b"Host", b"Transfer-Encoding",
    b"x-request-id", b"X-Forwarded-Client-Cert", b"x-private, te", b"upgrade",
    b"websocket", b"h2c", b"100-continue", b"trailers", b"By=x;URI=spiffe://evil/sa/admin",
    b"192.0.2.1", b"a b", b"a\tb", b"v\x80", b"evil.test",
]  # fmt: skip
_METHODS = [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"G@T"]
_TARGETS = [
    b"/", b"/a", b"/api/../admin", b"/api/%2e%2e/admin", b"/api/..\\admin", b"//admin",
    b"/a/%2Fb", b"/a/%5cb", b"/a/%41", b"/a/%zz", b"/a?x=1", b"/a#f", b"*",
    b"http://a?x=1", b"http://a/b?c", b"HTTP://A", b"https://b.test/p/./q",
    b"/%2e%2e/%2e%2e/etc", b"/a/./b/../c/",
]  # fmt: skip
_VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.2"]
_LEADS = [b""] * 4 + [b"\r\n", b"\n", b"\r\n\r\n", b" "]
_SEPS = [b"\r\n"] * 12 + [b"\n", b"\r"]
_BENIGN_TARGETS = [b"/", b"/a", b"/a/b?c=d", b"/api/x"] * 3
_BENIGN_NAMES = [b"Accept", b"X-A", b"User-Agent", b"Cookie"] * 3
_BENIGN_VALUES = [b"h", b"*/*", b"v1", b"a=b; c=d"] * 4


def _rare(draw: st.DrawFn, common: list[bytes], rare: st.SearchStrategy[bytes]) -> bytes:
    """Mostly one of `common`, one time in eight from `rare`."""
    return draw(rare) if draw(st.integers(0, 7)) == 0 else draw(st.sampled_from(common))


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """A request built valid, then given hostile fields, separators and framing."""
    out = bytearray(_rare(draw, [b""], st.sampled_from(_LEADS)))
    method = _rare(draw, _METHODS[:-1], st.sampled_from(_METHODS))
    target = _rare(
        draw, _BENIGN_TARGETS + _TARGETS, st.binary(min_size=1, max_size=8).filter(bytes.strip)
    )
    version = _rare(draw, [b"HTTP/1.1"], st.sampled_from(_VERSIONS))
    out += method + b" " + target + b" " + version + b"\r\n"
    body = draw(st.sampled_from([b"", b"hello", b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"]))
    fields = [
        (
            _rare(draw, _BENIGN_NAMES + _NAMES, st.binary(min_size=1, max_size=6)),
            _rare(draw, _BENIGN_VALUES + _FIELD_VALUES, st.binary(max_size=6)),
            _rare(draw, [b"\r\n"], st.sampled_from(_SEPS)),
        )
        for _ in range(draw(st.integers(0, 5)))
    ]
    framing = draw(st.sampled_from(["none", "length", "chunked", "as-is"]))
    if framing == "length":
        fields.insert(
            draw(st.integers(0, len(fields))), (b"Content-Length", b"%d" % len(body), b"\r\n")
        )
    elif framing == "chunked":
        fields.insert(
            draw(st.integers(0, len(fields))), (b"Transfer-Encoding", b"chunked", b"\r\n")
        )
        body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif framing == "none":
        body = b""
    if draw(st.integers(0, 7)):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"h", b"\r\n"))
    for name, value, sep in fields:
        out += name + b": " + value + sep
    out += b"\r\n"
    return bytes(out + body)


@st.composite
def connection(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Pipelined requests and the offsets at which they are cut into reads."""
    data = b"".join(draw(st.lists(request(), min_size=1, max_size=3)))
    cuts = draw(st.lists(st.integers(0, max(0, len(data))), max_size=4))
    return data, cuts
