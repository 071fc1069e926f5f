"""HTTP/2 header lists to and from the proxy's message model (pure; protocol/h2core.py frames).

The core frames and checks content-length against DATA; the fields themselves are validated
here, in one pass (RFC 9113 §8.2-8.3: pseudo-header order and set, lower-case token names,
no connection-specific fields, `te: trailers` only, no control bytes or surrounding
whitespace in values), so a malformed request resets its own stream only. That is not all
an HTTP/1.1 upstream needs: a `:method` of `GET /admin HTTP/1.1`, a `:path` with a space
or an `:authority` with one would each become a second request line token. So this
module also refuses what an HTTP/1.1 client could not have sent (RFC 9110 §5.1, §5.6.2):
a method that is not a token, a path that is not origin-form of visible ASCII (or `*` for
OPTIONS), an authority with anything but host and port characters. It maps the result
onto `RequestHead` so routing and forwarding see one model whatever the protocol, and
builds HTTP/2 header lists from upstream responses.
"""

from __future__ import annotations

import functools
import re

import httptools

from sidecar.config.headerops import HeaderOps
from sidecar.errors import ProtocolError, StreamError
from sidecar.observe.tracecontext import B3_FIELDS
from sidecar.protocol.http1 import RequestHead
from sidecar.protocol.response import ResponseHead
from sidecar.protocol.wire import AUTHORITY, decimal, strip_hop_by_hop

Headers = list[tuple[bytes, bytes]]

# The connection preface a client sends first (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Fields HTTP/2 forbids (RFC 9113 §8.2.2); an HTTP/1.1 upstream may still send them.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Bytes a lower-case field name may hold, and bytes a value may (HTAB, visible ASCII,
# obs-text): `bytes.translate` deleting them leaves nothing from a good one (one C pass)
_NAME_BYTES = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_VALUE_BYTES = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
# Control bytes (HTAB aside) anywhere, or whitespace around the value (RFC 9113 §8.2.1)
_ORIGIN_FORM = re.compile(rb"/[\x21-\x22\x24-\x7e]*")  # visible ASCII without "#"
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})


@functools.lru_cache(maxsize=256)
def _http1_method(method: bytes) -> bool:
    """Whether the HTTP/1 parser (llhttp) knows `method`: a request may go on to an
    HTTP/1.1 upstream, and a method HTTP/1 clients cannot use is not forwarded (501)."""
    try:
        httptools.HttpRequestParser(object()).feed_data(method + b" / HTTP/1.1\r\n")
    except httptools.HttpParserError:
        return False
    return True


# Fields found well formed lately: most repeat (HPACK's dynamic table hands back the same
# ones), so each is checked once. Bounded: emptied when full.
_VALID: set[tuple[bytes, bytes]] = set()
VALID_KEPT = 1024


def _bad_value(value: bytes) -> bool:
    """Control bytes (HTAB aside) anywhere, or whitespace around (RFC 9113 §8.2.1)."""
    if value.translate(None, _VALUE_BYTES):
        return True
    return bool(value) and (value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09))


def _field_error(name: bytes, value: bytes) -> str | None:
    """Why a regular field is malformed (None: it is not)."""
    field = (name, value)
    if field in _VALID:
        return None
    if not name or name.translate(None, _NAME_BYTES):
        return f"invalid field name {name[:64]!r}"
    if _bad_value(value):
        return f"invalid value of {name[:64]!r}"
    if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
        return f"connection-specific field {name!r}"
    if len(_VALID) >= VALID_KEPT:
        _VALID.clear()
    _VALID.add(field)
    return None


def check_trailers(headers: Headers) -> None:
    """StreamError unless every trailer field is well formed (no pseudo-header fields)."""
    for name, value in headers:
        why = _field_error(name, value)
        if why is not None:
            raise StreamError(why)


def request_head(
    headers: Headers, *, end_stream: bool, max_headers: int = 100, max_body_bytes: int = 0
) -> RequestHead:
    """The request a HEADERS frame opened, validated here in one pass, including what an
    HTTP/1.1 upstream needs. StreamError for a malformed request (RFC 9113 §8.1.1: its
    stream is reset), ProtocolError with the status to answer for a request the proxy
    refuses."""
    if len(headers) > max_headers + 4:  # the four pseudo-header fields are not counted
        raise ProtocolError("too many header fields", status=431)
    head = RequestHead()
    head.version = "2"
    pseudo: dict[bytes, bytes] = {}
    host = None
    cookies: list[bytes] = []
    fields = head.headers
    for name, value in headers:
        if name[:1] == b":":
            if fields or cookies or name not in _PSEUDO or name in pseudo:
                raise StreamError(f"pseudo-header field {name!r} unknown, repeated or late")
            if _bad_value(value):
                raise StreamError(f"invalid value of {name!r}")
            pseudo[name] = value
            continue
        why = _field_error(name, value)
        if why is not None:
            raise StreamError(why)
        if name == b"cookie":  # split into many fields by HTTP/2 clients (RFC 9113 §8.2.3)
            cookies.append(value)
            continue
        if name == b"content-length":  # the core also checks it against the DATA received
            if not value.isdigit():
                raise StreamError("invalid content-length")
            head.content_length = int(value)
        elif name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            head.forwarded_for = head.forwarded_for + b", " + value if head.forwarded_for else value
        elif name == b"x-request-id":
            head.request_id = head.request_id or value
        elif name == b"traceparent":
            head.traceparent = value
        elif name == b"tracestate":
            head.tracestate = head.tracestate + b"," + value if head.tracestate else value
        elif name in B3_FIELDS:
            head.b3 = True
        fields.append((name, value))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    method = pseudo.get(b":method")
    if method == b"CONNECT":
        raise ProtocolError("CONNECT is not supported here", status=405)
    path = pseudo.get(b":path")
    if method is None or path is None or b":scheme" not in pseudo:
        raise StreamError("request without :method, :scheme or :path")
    if not path:
        raise StreamError("empty :path")
    authority = pseudo.get(b":authority")
    if authority is not None and host is not None and host != authority:
        raise StreamError(":authority and Host differ")
    authority = authority if authority is not None else host
    if authority is None:
        raise StreamError("request without :authority or Host")
    # What an HTTP/1.1 request line and Host field could carry (RFC 9110 §5.1, §5.6.2)
    if not _TOKEN.fullmatch(method):
        raise ProtocolError("invalid :method")
    if not _http1_method(method):
        raise ProtocolError("method not implemented", status=501)
    if not _ORIGIN_FORM.fullmatch(path) and not (path == b"*" and method == b"OPTIONS"):
        raise ProtocolError("invalid :path (origin-form of visible ASCII, or * for OPTIONS)")
    if not AUTHORITY.fullmatch(authority):
        raise ProtocolError("invalid :authority or Host")
    head.method = method.decode("ascii")
    head.target = path.decode("latin-1")
    head.host = authority.decode("latin-1")
    if max_body_bytes and (head.content_length or 0) > max_body_bytes:
        raise ProtocolError(f"request body over {max_body_bytes} bytes", status=413)
    if end_stream:
        head.content_length = None
    elif head.content_length is None:
        head.chunked = True  # a body of unknown length: chunked towards HTTP/1.1 upstreams
    return head


def response_headers(resp: ResponseHead, ops: tuple[HeaderOps, ...]) -> Headers:
    """An upstream HTTP/1.1 response head as an HTTP/2 header list (lower-case names,
    connection-specific fields dropped, the length kept when the upstream gave one)."""
    headers = strip_hop_by_hop(resp.headers, resp.connection)
    for op in ops:
        headers = op.apply(headers)
    out = [(b":status", decimal(resp.status))]
    out.extend((name.lower(), value) for name, value in headers)
    if resp.content_length is not None:
        out.append((b"content-length", decimal(resp.content_length)))
    return out


def local_headers(status: int, body: bytes, extra: Headers | None = None) -> Headers:
    """Headers of a response the proxy answers itself."""
    out = [(b":status", decimal(status))]
    out.extend((n.lower(), v) for n, v in extra or ())
    if body and not any(n == b"content-type" for n, _ in out):
        out.append((b"content-type", b"text/plain; charset=utf-8"))
    if status not in (204, 304):  # no body, and 204 no length (RFC 9110 §8.6)
        out.append((b"content-length", decimal(len(body))))
    return out
