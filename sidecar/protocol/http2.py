"""HTTP/2 header lists to and from the proxy's message model (pure; h2 does the framing).

h2 validates what arrives (pseudo-header order and set, lower-case names, no
connection-specific fields, `te: trailers` only, content-length against DATA); this module
maps the result onto `RequestHead` so routing and forwarding see one model whatever the
protocol, and builds HTTP/2 header lists from upstream responses.
"""

from __future__ import annotations

from sidecar.errors import ProtocolError
from sidecar.http.filters import HeaderOps
from sidecar.observe.tracecontext import B3_FIELDS
from sidecar.protocol.http1 import RequestHead
from sidecar.protocol.response import ResponseHead
from sidecar.protocol.wire import strip_hop_by_hop

Headers = list[tuple[bytes, bytes]]

# The connection preface a client sends first (RFC 9113 §3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Fields HTTP/2 forbids (RFC 9113 §8.2.2); an HTTP/1.1 upstream may still send them.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


def request_head(headers: Headers, *, end_stream: bool) -> RequestHead:
    """The request a HEADERS frame opened; ProtocolError for what the proxy cannot carry."""
    head = RequestHead()
    head.version = "2"
    method = path = authority = host = None
    cookies: list[bytes] = []
    fields = head.headers
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        if name == b"cookie":  # split into many fields by HTTP/2 clients (RFC 9113 §8.2.3)
            cookies.append(value)
            continue
        if name == b"content-length":
            try:
                head.content_length = int(value)
            except ValueError:
                raise ProtocolError("invalid content-length") from None
        elif name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            head.forwarded_for = head.forwarded_for + b", " + value if head.forwarded_for else value
        elif name == b"x-request-id":
            head.request_id = value
        elif name == b"traceparent":
            head.traceparent = value
        elif name == b"tracestate":
            head.tracestate = head.tracestate + b"," + value if head.tracestate else value
        elif name in B3_FIELDS:
            head.b3 = True
        fields.append((name, value))
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    if method == b"CONNECT":
        raise ProtocolError("CONNECT is not supported here", status=405)
    if method is None or path is None:
        raise ProtocolError("request without :method or :path")
    head.method = method.decode("ascii")
    head.target = path.decode("latin-1")
    head.host = (authority if authority is not None else host or b"").decode("latin-1")
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
    out = [(b":status", b"%d" % resp.status)]
    out.extend((name.lower(), value) for name, value in headers)
    if resp.content_length is not None:
        out.append((b"content-length", b"%d" % resp.content_length))
    return out


def local_headers(status: int, body: bytes, extra: Headers | None = None) -> Headers:
    """Headers of a response the proxy answers itself."""
    out = [(b":status", b"%d" % status)]
    out.extend((n.lower(), v) for n, v in extra or ())
    if body and not any(n == b"content-type" for n, _ in out):
        out.append((b"content-type", b"text/plain; charset=utf-8"))
    out.append((b"content-length", b"%d" % len(body)))
    return out
