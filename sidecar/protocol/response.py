"""HTTP/1.1 response parsing for upstream connections, on httptools (llhttp), sans I/O.

Theory of operation. llhttp validates every byte (status line, field syntax, framing), but
its per-field Python callbacks are the largest cost of a small response. An upstream
connection carries one exchange at a time, so the response head always starts at the first
byte fed after `start()` (interim 1xx heads aside, which are dropped from the front): the
parser keeps those bytes and, once llhttp reports the head complete, reads the few fields a
proxy acts on (framing and hop-by-hop fields) from the validated block with bytes searches.
No per-field callback is registered, so llhttp calls into Python three times a response.

Trailers of chunked HTTP/1.1 responses are not forwarded (Envoy's default too); the
chunked body itself is re-framed for the downstream.
"""

from __future__ import annotations

import re
from collections import deque

import httptools

from sidecar.errors import ProtocolError, UpstreamClosed, UpstreamProtocolError
from sidecar.protocol.http1 import END, End
from sidecar.protocol.wire import connection_named

Headers = list[tuple[bytes, bytes]]

# Fields a proxy must act on, found in one pass over the lower-cased block (each line is
# preceded by CRLF there; a value cannot contain CRLF, so matches are line starts).
_FIELDS = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|keep-alive|proxy-connection|te"
    rb"|trailer|upgrade):[ \t]*([^\r]*)"
)


class ResponseHead:
    """A response's status and the fields the proxy needs; the rest stays in `raw`."""

    keep_alive = True
    content_length: int | None = None
    chunked = False
    connection = b""
    upgrade = b""  # the Upgrade field of a 101

    def __init__(self, status: int, reason: bytes, raw: bytes) -> None:
        self.status = status
        self.reason = reason
        self.raw = raw  # the header block as received: one "Name: value\r\n" per field
        self.cut: list[bytes] = []  # names (as received) of lines not to forward
        self.lower = b"\r\n" + raw.lower()  # what wire.spellings searches
        self._scan()

    def _scan(self) -> None:
        for m in _FIELDS.finditer(self.lower):
            name, value = m.group(1), m.group(2).rstrip(b" \t")
            if name == b"content-length":
                self.content_length = int(value)
                continue
            start = m.start()  # where the name starts in raw (which lacks the leading CRLF)
            self.cut.append(self.raw[start : start + len(name)])
            if name == b"transfer-encoding":
                self.chunked = self.chunked or value.endswith(b"chunked")
            elif name == b"connection":
                self.connection = self.connection + b"," + value if self.connection else value
            elif name == b"upgrade":
                self.upgrade = value  # tokens are case-insensitive (RFC 9110 §7.8)

    @property
    def headers(self) -> Headers:
        """Every field as (name, value), parsed on demand (filters need it, forwarding not)."""
        out = []
        for line in self.raw.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b":")
                out.append((name, value.strip(b" \t")))
        return out

    def connection_named(self) -> list[bytes]:
        """Names (as received) of fields the Connection header declares hop-by-hop
        (never one that carries framing: wire.PROTECTED)."""
        names = connection_named(self.connection)
        out = []
        for name in names:  # exact names: a Connection token never stands for another
            key = b"\r\n" + name + b":"
            i = self.lower.find(key)
            while name and i != -1:
                out.append(self.raw[i : i + len(name)])
                i = self.lower.find(key, i + 2)
        return out


class ResponseParser:
    """Parses the responses of one upstream connection, one exchange at a time."""

    def __init__(self, *, max_header_bytes: int = 65536) -> None:
        self.events: deque[ResponseHead | bytes | End] = deque()
        self.max_header_bytes = max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._buf = b""  # bytes of the head not yet complete
        self._in_head = True
        self._head_request = False
        self._done = False
        self._interim = False
        self.close_delimited = False
        self._upgrade = False
        self._trailing = False  # bytes arrived after the response ended
        self.tunnel = b""  # after a 101 to an Upgrade: bytes of the new protocol

    def start(self, *, head_request: bool, upgrade: bool = False) -> None:
        """Prepare for the next response on the same connection; with `upgrade`, a 101
        is the final answer and what follows it is no longer HTTP."""
        if self._head_request or self._upgrade:  # llhttp is not at a message start
            self._parser = httptools.HttpResponseParser(self)
        self.events.clear()
        self._buf = b""
        self._in_head = True
        self._head_request = head_request
        self._upgrade = upgrade
        self._done = False
        self._interim = False
        self._trailing = False
        self.close_delimited = False

    # llhttp callbacks ------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        if self._done:  # a second response to one request: the connection is out of step
            self._trailing = True
            return
        p = self._parser
        buf = self._buf
        line_end = buf.index(b"\r\n")
        end = buf.index(b"\r\n\r\n", line_end)
        status = p.get_status_code()
        if 100 <= status < 200 and not (status == 101 and self._upgrade):
            # Interim responses are not forwarded (docs/decisions.md); the next head
            # starts right after this one.
            self._buf = buf[end + 4 :]
            self._interim = True
            return
        parts = buf[:line_end].split(b" ", 2)
        head = ResponseHead(
            status, parts[2] if len(parts) > 2 else b"", buf[line_end + 2 : end + 2]
        )
        head.keep_alive = p.should_keep_alive()
        self._buf = b""
        self._in_head = False
        no_body = self._head_request or status in (101, 204, 304)
        self.close_delimited = not no_body and not head.chunked and head.content_length is None
        if self.close_delimited:
            head.keep_alive = False
        self.events.append(head)
        if self._head_request or status == 101:
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
            self.events.append(END)

    # feeding --------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._done:
            self._trailing = self._trailing or bool(data)
            return
        if self._in_head:
            self._buf = self._buf + data if self._buf else data
            if len(self._buf) > self.max_header_bytes + len(data):
                raise ProtocolError("response head too large", status=502)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:  # a 101 to our Upgrade: HTTP ends here
            self.tunnel = data[int(upgrade.args[0]) :]
        except (httptools.HttpParserError, ValueError) as exc:
            if self._done:  # bytes after the response: the connection is unusable
                self._trailing = True
                return
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

    @property
    def reusable(self) -> bool:
        """The response ended and nothing followed it: the connection may carry another
        exchange. Bytes after a response (an upstream that answered twice, or a body
        longer than its length) would otherwise reach the next client as its answer."""
        return self._done and not self._trailing


def feed_response(parser: ResponseParser, data: bytes) -> bool:
    """Parse what the upstream sent (b"": it closed); False when the close ended the
    response (a close-delimited body), so the connection cannot be reused."""
    if data:
        try:
            parser.feed(data)
        except ProtocolError as exc:
            raise UpstreamProtocolError(str(exc)) from None
        return True
    if parser.feed_eof():
        return False
    raise UpstreamClosed("upstream closed before the response was complete")
