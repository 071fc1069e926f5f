"""HTTP/1.1 parsing and serialization on httptools (llhttp), sans I/O.

Bytes go in through `feed`; heads, body chunks and ends of message come out in `events`.
llhttp in strict mode already refuses the ambiguous framings request smuggling relies on
(Content-Length with Transfer-Encoding, duplicate or signed lengths, bad chunk sizes,
obs-fold, bare CR/LF, control bytes in values); this module adds the rules a proxy must
enforce on top: limits, HTTP/0.9, Host presence, and Transfer-Encoding on HTTP/1.0.
"""

from __future__ import annotations

from collections import deque

import httptools

from sidecar.errors import ProtocolError

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",  # re-framed by us
    }
)


class End:
    """End of one message, with its trailers (chunked only)."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.trailers = trailers


END = End()


class RequestHead:
    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "expect_continue",
        "headers",
        "host",
        "keep_alive",
        "method",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.host = ""
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.upgrade: bytes | None = None
        self.connection: bytes = b""

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class ResponseHead:
    __slots__ = (
        "chunked",
        "connection",
        "content_length",
        "headers",
        "keep_alive",
        "reason",
        "status",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.connection = b""


Event = RequestHead | ResponseHead | bytes | End


class _Base:
    """Shared callback plumbing for the request and response parsers."""

    def __init__(self, max_header_bytes: int, max_headers: int) -> None:
        self.events: deque[Event] = deque()
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._in_head = True
        self._head_bytes = 0  # exact size of the head so far (callbacks)
        self._pending = 0  # raw bytes fed since the last head completed (backstop)
        self._error: ProtocolError | None = None
        self._content_length: int | None = None
        self._chunked = False
        self._connection = b""
        self._special: dict[bytes, bytes] = {}

    # llhttp callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._trailers = None
        self._in_head = True
        self._content_length = None
        self._chunked = False
        self._connection = b""
        self._special = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            headers = self._headers
            headers.append((name, value))
            self._head_bytes += len(name) + len(value) + 4
            if len(headers) > self.max_headers or self._head_bytes > self.max_header_bytes:
                self._fail(ProtocolError("request header fields too large", status=431))
            lname = name.lower()
            if lname == b"content-length":
                self._content_length = int(value)
            elif lname == b"transfer-encoding":
                self._chunked = True
            elif lname == b"connection":
                self._connection = (
                    self._connection + b"," + value.lower() if self._connection else value.lower()
                )
            elif lname in self._interesting:
                if lname in self._special:
                    if lname == b"host":
                        self._fail(ProtocolError("more than one Host header"))
                    self._special[lname] += b"," + value
                else:
                    self._special[lname] = value
        else:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
            if len(self._trailers) > self.max_headers:
                self._fail(ProtocolError("too many trailer fields", status=431))

    def on_body(self, body: bytes) -> None:
        if body:
            self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(End(self._trailers) if self._trailers else END)
        self._head_bytes = 0
        self._pending = 0
        self._in_head = True

    _interesting: frozenset[bytes] = frozenset()

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        raise error


class RequestParser(_Base):
    """Parses a stream of pipelined requests into events."""

    _interesting = frozenset({b"host", b"expect", b"upgrade"})

    def __init__(
        self, *, max_header_bytes: int = 65536, max_headers: int = 100, max_body_bytes: int = 0
    ) -> None:
        super().__init__(max_header_bytes, max_headers)
        self.max_body_bytes = max_body_bytes  # 0: unlimited
        self._body_bytes = 0
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._raw_remaining = 0  # body bytes of an ignored Upgrade, framed by us

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.max_header_bytes:
            self._fail(ProtocolError("request target too long", status=414))

    def on_headers_complete(self) -> None:
        p = self._parser
        head = RequestHead()
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(ProtocolError(f"HTTP/{version} is not supported", status=505))
        head.version = version
        head.method = p.get_method().decode("ascii")
        head.target = self._url.decode("latin-1")
        head.headers = self._headers
        head.keep_alive = p.should_keep_alive()
        head.content_length = self._content_length
        head.chunked = self._chunked
        head.connection = self._connection
        special = self._special
        host = special.get(b"host")
        if host is None:
            if version == "1.1":
                self._fail(ProtocolError("HTTP/1.1 request without Host"))
        else:
            head.host = host.decode("latin-1")
        if self._chunked and version == "1.0":
            self._fail(ProtocolError("Transfer-Encoding in an HTTP/1.0 request"))
        expect = special.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                self._fail(ProtocolError("unsupported Expect", status=417))
            head.expect_continue = version == "1.1"
        head.upgrade = special.get(b"upgrade")
        limit = self.max_body_bytes
        if limit and head.content_length is not None and head.content_length > limit:
            self._fail(ProtocolError(f"request body over {limit} bytes", status=413))
        self._body_bytes = 0
        self._in_head = False
        self._pending = 0
        self.events.append(head)

    def on_body(self, body: bytes) -> None:
        if self.max_body_bytes:
            self._body_bytes += len(body)
            if self._body_bytes > self.max_body_bytes:
                limit = self.max_body_bytes
                self._fail(ProtocolError(f"request body over {limit} bytes", status=413))
        if body:
            self.events.append(body)

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises ProtocolError (status to answer with) on bad input."""
        if self._raw_remaining:
            data = self._feed_raw(data)
            if not data:
                return
        try:
            self._parser.feed_data(data)
            if self._in_head:
                # A head llhttp is still buffering (one endless line) never reaches the
                # callbacks; bound it by raw bytes, allowing for one read of slack.
                self._pending += len(data)
                if self._pending > self.max_header_bytes + 65536:
                    raise ProtocolError("request header fields too large", status=431)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade(data, int(exc.args[0]))
        except (httptools.HttpParserError, ValueError) as exc:
            if self._error is not None:
                raise self._error from None
            raise ProtocolError(f"malformed request: {exc}") from None

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        """An Upgrade/CONNECT we do not honour: continue as plain HTTP/1.1 after the head."""
        head = next((e for e in reversed(self.events) if isinstance(e, RequestHead)), None)
        if head is None or head.method == "CONNECT":
            raise ProtocolError("CONNECT is not supported here", status=405)
        if head.chunked:
            raise ProtocolError("chunked body on an Upgrade request")
        # llhttp reported the message complete before its body: take that End back.
        if self.events and isinstance(self.events[-1], End):
            self.events.pop()
        self._parser = httptools.HttpRequestParser(self)
        self._in_head = True
        self._head_bytes = 0
        self._raw_remaining = head.content_length or 0
        rest = data[offset:]
        if not self._raw_remaining:
            self.events.append(END)
            self._in_head = True
        if rest:
            self.feed(rest)

    def _feed_raw(self, data: bytes) -> bytes:
        n = min(self._raw_remaining, len(data))
        self.events.append(data[:n])
        self._raw_remaining -= n
        if not self._raw_remaining:
            self.events.append(END)
        return data[n:]

    @property
    def partial_head(self) -> bool:
        """True while a request head has begun to arrive but is not complete."""
        return self._in_head and (self._pending > 0 or self._head_bytes > 0)


class ResponseParser(_Base):
    """Parses one response (plus any 1xx before it) from an upstream connection."""

    def __init__(self, *, max_header_bytes: int = 65536, max_headers: int = 200) -> None:
        super().__init__(max_header_bytes, max_headers)
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._head_request = False
        self._done = False
        self._interim = False
        self.close_delimited = False

    def start(self, *, head_request: bool) -> None:
        """Prepare for the next response on the same connection."""
        if self._head_request:  # llhttp still expects the HEAD response's body: start anew
            self._parser = httptools.HttpResponseParser(self)
        self.events.clear()
        self._head_request = head_request
        self._done = False
        self._interim = False
        self.close_delimited = False

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_headers_complete(self) -> None:
        p = self._parser
        head = ResponseHead()
        head.status = p.get_status_code()
        head.reason = self._reason
        head.headers = self._headers
        head.keep_alive = p.should_keep_alive()
        head.content_length = self._content_length
        head.chunked = self._chunked
        head.connection = self._connection
        self._in_head = False
        if 100 <= head.status < 200:
            self._interim = True  # interim responses are not forwarded (docs/decisions.md)
            return
        no_body = self._head_request or head.status in (204, 304)
        self.close_delimited = not no_body and not self._chunked and self._content_length is None
        if self.close_delimited:
            head.keep_alive = False
        self.events.append(head)
        if self._head_request:
            self.events.append(END)
            self._done = True

    def on_body(self, body: bytes) -> None:
        if body and not self._done:
            self.events.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif not self._done:
            self._done = True
            super().on_message_complete()

    def feed(self, data: bytes) -> None:
        if self._done:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, ValueError) as exc:
            if self._done:  # bytes after a HEAD response's head: the connection is unusable
                raise ProtocolError("bytes after a bodiless response", status=502) from None
            raise ProtocolError(f"malformed response: {exc}", status=502) from None

    def feed_eof(self) -> bool:
        """Upstream closed: True if that ends the response (close-delimited body)."""
        if self._done:
            return True
        if self.close_delimited and not self._in_head:
            self._done = True
            self.events.append(END)
            return True
        return False

    @property
    def done(self) -> bool:
        return self._done


# -- serialization ------------------------------------------------------------------------
_REASONS = {
    200: b"OK", 204: b"No Content", 301: b"Moved Permanently", 302: b"Found",
    303: b"See Other", 307: b"Temporary Redirect", 308: b"Permanent Redirect",
    400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}  # fmt: skip


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def connection_tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip() for t in value.split(b",") if t.strip())


def strip_hop_by_hop(
    headers: list[tuple[bytes, bytes]], connection: bytes
) -> list[tuple[bytes, bytes]]:
    """Drop hop-by-hop fields, including those the Connection header names."""
    drop = HOP_BY_HOP | connection_tokens(connection) if connection else HOP_BY_HOP
    return [h for h in headers if h[0].lower() not in drop]


def serialize_head(first_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytearray:
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


def last_chunk(trailers: list[tuple[bytes, bytes]] | None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


def simple_response(
    status: int,
    body: bytes = b"",
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    close: bool = False,
    head_only: bool = False,
) -> bytearray:
    """A complete locally generated response."""
    hs: list[tuple[bytes, bytes]] = list(headers or ())
    hs.append((b"content-length", b"%d" % len(body)))
    if body and not any(n.lower() == b"content-type" for n, _ in hs):
        hs.append((b"content-type", b"text/plain; charset=utf-8"))
    if close:
        hs.append((b"connection", b"close"))
    out = serialize_head(b"HTTP/1.1 %d %b\r\n" % (status, reason_phrase(status)), hs)
    if not head_only:
        out += body
    return out
