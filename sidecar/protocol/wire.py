"""HTTP/1.1 serialization: heads, chunks, local responses and header-block surgery."""

from __future__ import annotations

import re
from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

# Fields that describe one hop, never forwarded as they are (RFC 9110 §7.6.1), plus the
# framing fields we always set ourselves on the slow path.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    }
)

# What a Host field or an :authority may hold: RFC 3986 host (reg-name, IP literal) and
# port characters. No userinfo ("@"), no space, no byte a server could split or decode.
AUTHORITY = re.compile(rb"[A-Za-z0-9\-._~%!$&'()*+,;=:\[\]]*")

_REASONS = {
    200: b"OK", 204: b"No Content", 301: b"Moved Permanently", 302: b"Found",
    303: b"See Other", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}  # fmt: skip


_DECIMAL = [str(n).encode() for n in range(1000)]  # statuses and small lengths


def decimal(n: int) -> bytes:
    """`n` in ASCII digits (bytes %-formatting is a generic call in compiled code)."""
    return _DECIMAL[n] if 0 <= n < 1000 else str(n).encode()


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


# Fields that carry framing or routing, or that a hop sets itself: a Connection header
# naming one of them does not make it hop-by-hop. Otherwise `Connection: Content-Length`
# would strip the length of a body that is still forwarded (the next hop reads the body as
# another request), `Connection: Host` would forward a request without Host, and
# `Connection: X-Request-Id` would drop the id this hop vouches for.
PROTECTED = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-client-cert",
        b"traceparent",
        b"tracestate",
    }
)
# Connection tokens that name no other field.
PLAIN_CONNECTION_TOKENS = frozenset({b"keep-alive", b"close", b"upgrade", b"te", b""})


def connection_named(connection: bytes) -> frozenset[bytes]:
    """The fields (lower case) a Connection header's value declares hop-by-hop, besides
    the ones always dropped; never a PROTECTED field."""
    if not connection or connection in PLAIN_CONNECTION_TOKENS:
        return frozenset()
    tokens = frozenset(t.strip().lower() for t in connection.split(b","))
    return tokens - PLAIN_CONNECTION_TOKENS - PROTECTED


def underscore_aliases(names: Iterable[bytes]) -> frozenset[bytes]:
    """Every spelling of `names` with one or more `-` written `_` (`transfer_encoding`):
    CGI and WSGI servers map both to one variable, so such a field beside the real one
    would reach the app as the real one. A proxy drops these aliases of the fields it
    controls."""
    out: set[bytes] = set()
    for name in names:
        parts = name.split(b"-")
        for mask in range(1, 1 << (len(parts) - 1)):
            alias = parts[0]
            for i, part in enumerate(parts[1:]):
                alias += (b"_" if mask >> i & 1 else b"-") + part
            out.add(alias)
    return frozenset(out)


def strip_hop_by_hop(headers: Headers, connection: bytes) -> Headers:
    """Drop hop-by-hop fields, including those the Connection header names."""
    drop = HOP_BY_HOP | connection_named(connection) if connection else HOP_BY_HOP
    return [h for h in headers if h[0].lower() not in drop]


def cut_lines(block: bytes, names: Iterable[bytes]) -> bytes:
    """Remove every `Name: value\\r\\n` line of `block` whose name is one of `names`.

    `block` is a header block as received (each line ending in CRLF) and `names` are the
    names exactly as they appeared in it; a value cannot contain CRLF, so CRLF+name+":"
    only ever matches the start of a line.
    """
    buf = b"\r\n" + block
    for name in names:
        key = b"\r\n" + name + b":"
        i = buf.find(key)
        while i != -1:
            buf = buf[:i] + buf[buf.index(b"\r\n", i + 2) :]
            i = buf.find(key, i)
    return buf[2:]


def spellings(raw: bytes, names: Iterable[bytes], lower: bytes | None = None) -> list[bytes]:
    """Each of `names` (lower case, `-` for `_`: http.filters.field_key) as `raw` spells
    it, once per line — what `cut_lines` needs to remove every such line. `lower`: the
    block as `b"\\r\\n" + raw.lower()`, when the caller keeps one."""
    block = b"\r\n" + raw.lower() if lower is None else lower
    if b"_" in block:
        block = block.replace(b"_", b"-")  # the same length: positions still match raw
    out = []
    for name in names:
        key = b"\r\n" + name + b":"
        i = block.find(key)
        while name and i != -1:
            out.append(raw[i : i + len(name)])
            i = block.find(key, i + 2)
    return out


def serialize_head(first_line: bytes, headers: Headers) -> bytearray:
    out = bytearray(first_line)
    for name, value in headers:
        out += name
        out += b": "
        out += value
        out += b"\r\n"
    out += b"\r\n"
    return out


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


def simple_response(
    status: int,
    body: bytes = b"",
    *,
    headers: Headers | None = None,
    close: bool = False,
    head_only: bool = False,
) -> bytearray:
    """A complete locally generated response."""
    hs: Headers = list(headers or ())
    if status not in (204, 304):  # they carry no body, and 204 no length (RFC 9110 §8.6)
        hs.append((b"content-length", b"%d" % len(body)))
    if body and not any(n.lower() == b"content-type" for n, _ in hs):
        hs.append((b"content-type", b"text/plain; charset=utf-8"))
    if close:
        hs.append((b"connection", b"close"))
    out = serialize_head(b"HTTP/1.1 %d %b\r\n" % (status, reason_phrase(status)), hs)
    if not head_only:
        out += body
    return out
