"""HTTP/1.1 parsing on httptools (llhttp), sans I/O.

Bytes go in through `feed`; heads, body chunks and ends of message come out in `events`.
llhttp in strict mode already refuses the ambiguous framings request smuggling relies on
(Content-Length with Transfer-Encoding, duplicate or signed lengths, bad chunk sizes,
obs-fold, bare CR/LF, control bytes in values); this module adds the rules a proxy must
enforce on top: limits, HTTP/0.9, Host presence, transfer codings other than chunked (501,
as nginx and Envoy answer), fragments in the target, and Transfer-Encoding on HTTP/1.0.

Theory of operation (the fast path). A head whose request line is the first byte of one
`feed` and which ends within it keeps its header block as received (`raw`), with the names
of the lines a proxy must drop noted in `cut`. Forwarding then cuts those few lines out of
the block with bytes operations instead of re-serializing every field in Python; `headers`
(the parsed list) is still there for routing and for filters that rewrite fields. The
block is kept only when it is provably the one llhttp parsed: the feed starts with exactly
the request line llhttp reported, and the block holds exactly one line per parsed field.
Transfer-Encoding is always in `cut` (the hop writes its own framing); Host, Content-Length
and X-Request-Id stay in the block only as the one validated line in canonical form, and
are otherwise cut and written by the hop from the validated values.
"""

from __future__ import annotations

from collections import deque

import httptools

from sidecar.errors import ProtocolError
from sidecar.protocol.wire import AUTHORITY, PROTECTED, connection_named, underscore_aliases

# What on_header does with a field: 0 keep, else the kind below. Keys are lower case.
# Sidecars leave X-Forwarded-* as the app sent them; the edge sets them (EDGE_KINDS).
_HOST, _LENGTH, _TE, _CONN, _EXPECT, _UPGRADE, _HOP, _XFF, _XFWD, _XRID = range(1, 11)
_TRACE, _TSTATE, _B3 = range(11, 14)
MESH_KINDS = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TE,
    b"connection": _CONN,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"x-forwarded-client-cert": _HOP,  # only a sidecar vouches for a caller: never forwarded
    b"x-request-id": _XRID,
}
EDGE_KINDS = MESH_KINDS | {
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFWD,
    b"x-forwarded-host": _XFWD,
}
# A tracing hop replaces the trace context fields with its own (observe/tracecontext.py).
_TRACE_KINDS = {
    b"traceparent": _TRACE,
    b"tracestate": _TSTATE,
    b"b3": _B3,
    b"x-b3-traceid": _B3,
    b"x-b3-spanid": _B3,
    b"x-b3-parentspanid": _B3,
    b"x-b3-sampled": _B3,
    b"x-b3-flags": _B3,
}


# Every spelling with `_` for `-` of the fields a hop controls: CGI/WSGI-style backends
# read `Transfer_Encoding` as `Transfer-Encoding`, so such aliases are never forwarded.
FIELD_ALIASES = underscore_aliases({*EDGE_KINDS, *_TRACE_KINDS, *PROTECTED})
_ALIAS_KINDS = dict.fromkeys(FIELD_ALIASES, _HOP)
MESH_TRACE_KINDS = MESH_KINDS | _TRACE_KINDS | _ALIAS_KINDS
EDGE_TRACE_KINDS = EDGE_KINDS | _TRACE_KINDS | _ALIAS_KINDS
MESH_KINDS = MESH_KINDS | _ALIAS_KINDS
EDGE_KINDS = EDGE_KINDS | _ALIAS_KINDS
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}
_LINE_END = {"1.1": b" HTTP/1.1\r\n", "1.0": b" HTTP/1.0\r\n"}  # the versions accepted


class End:
    """End of one message, with its trailers (chunked only)."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.trailers = trailers


END = End()


class RequestHead:
    """One request head. Class-level defaults: a head is made per request, so the
    constructor sets only the two lists; fields are assigned when the request says so."""

    method = ""
    target = ""
    version = "1.1"
    host = ""
    keep_alive = True
    content_length: int | None = None
    chunked = False
    connection = b""  # the Connection header's value, lower case
    expect_continue = False
    upgrade: bytes | None = None
    forwarded_for = b""
    request_id = b""
    request_id_name = b""  # the first X-Request-Id line's name, as received
    traceparent = b""  # trace context fields (seen only by a tracing hop's HTTP/1 parser)
    tracestate = b""
    b3 = False
    raw: bytes | None = None  # the header block as received, when whole in one feed
    has_host = False  # a Host line is in the block
    rewrite_length = False  # the Content-Length line is cut from raw (not canonical)
    request_id_cut = False  # X-Request-Id lines are cut from raw (there were several)
    tunnel = False  # an Upgrade the proxy will pass through if the upstream agrees (101)

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.cut: list[bytes] = []  # names (as received) of lines a proxy must not forward

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def connection_named(self) -> list[bytes]:
        """Names (as received) of fields the Connection header declares hop-by-hop,
        besides the usual ones; never one that carries framing or routing (wire.PROTECTED)."""
        tokens = connection_named(self.connection)
        return [n for n, _ in self.headers if n.lower() in tokens] if tokens else []


Event = RequestHead | bytes | End


def _upgrade_token(value: bytes | None) -> bytes:
    """The first protocol an Upgrade field offers, lower case, without its version."""
    if not value:
        return b""
    return value.split(b",")[0].strip().split(b"/")[0].lower()


class RequestParser:
    """Parses a stream of pipelined requests into events."""

    def __init__(
        self,
        *,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
        max_body_bytes: int = 0,
        upgrades: frozenset[bytes] = frozenset(),
        kinds: dict[bytes, int] = EDGE_KINDS,
    ) -> None:
        self.events: deque[Event] = deque()
        self.kinds = kinds
        self.upgrades = upgrades  # Upgrade tokens passed through (lower case)
        self.tunnel: bytes | None = None  # after an accepted Upgrade: the bytes that follow
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes  # 0: unlimited
        self.body_limit = 0  # the request's: max_body_bytes, or lower (limit_body); 0: none
        self._parser = httptools.HttpRequestParser(self)
        self._head = RequestHead()
        self._url = b""
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._in_head = True
        self._head_bytes = 0  # size of the request target so far
        self._pending = 0  # raw bytes fed since the last head completed (backstop)
        self._body_bytes = 0
        self._error: ProtocolError | None = None
        self._data = b""  # the bytes of the feed in progress
        self._completed_in_feed = 0
        self._began_in_feed = False
        self._in_message = False  # between a request's first byte and its end
        self._raw_remaining = 0  # body bytes of an ignored Upgrade, framed by us

    # llhttp callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._head = RequestHead()
        self._url = b""
        self._trailers = None
        self._in_head = True
        self._began_in_feed = self._completed_in_feed == 0
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.max_header_bytes:
            self._fail(ProtocolError("request target too long", status=414))

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))
            if len(self._trailers) > self.max_headers:
                self._fail(ProtocolError("too many trailer fields", status=431))
            return
        head = self._head
        head.headers.append((name, value))
        kind = self.kinds.get(name.lower())
        if kind:
            self._special(head, kind, name, value)

    def _special(self, head: RequestHead, kind: int, name: bytes, value: bytes) -> None:
        if kind == _HOST:
            if head.host:
                self._fail(ProtocolError("more than one Host header"))
            if not AUTHORITY.fullmatch(value):
                self._fail(ProtocolError("invalid Host"))
            head.host = value.decode("latin-1") or " "
            head.has_host = True
            return
        if kind == _LENGTH:
            n = head.content_length = int(value)
            if value != b"%d" % n:  # "05": forwarded as the hop read it, "5"
                head.cut.append(name)
                head.rewrite_length = True
            return
        if kind == _XRID:  # one is forwarded, the first with a value
            if not head.request_id and value:
                head.request_id = value
                if not head.request_id_cut:  # the line can stay as it is
                    head.request_id_name = name
                    return
            if not head.request_id_cut:  # another, or an empty one: every line is cut
                head.request_id_cut = True  # (however each is spelled) and the proxy
                if head.request_id_name:  # writes the one line itself
                    head.cut.append(head.request_id_name)
        head.cut.append(name)
        if kind >= _TRACE:
            if kind == _TRACE:
                head.traceparent = value
            elif kind == _TSTATE:
                head.tracestate = head.tracestate + b"," + value if head.tracestate else value
            else:
                head.b3 = True
        elif kind == _TE:
            if value.strip().lower() != b"chunked":  # llhttp checks chunked is last
                self._fail(ProtocolError("transfer coding other than chunked", status=501))
            head.chunked = True
        elif kind == _CONN:
            low = value.lower()
            head.connection = head.connection + b"," + low if head.connection else low
        elif kind == _XFF:
            head.forwarded_for = head.forwarded_for + b", " + value if head.forwarded_for else value
        elif kind == _EXPECT:
            if value.lower() != b"100-continue":
                self._fail(ProtocolError("unsupported Expect", status=417))
            head.expect_continue = True
        elif kind == _UPGRADE:
            head.upgrade = value

    def on_headers_complete(self) -> None:
        p = self._parser
        head = self._head
        version = p.get_http_version()
        if version not in ("1.1", "1.0"):
            self._fail(ProtocolError(f"HTTP/{version} is not supported", status=505))
        head.version = version
        method = p.get_method()
        head.method = _METHODS.get(method) or method.decode("ascii")
        if b"#" in self._url:
            self._fail(ProtocolError("fragment in the request target"))
        head.target = self._url.decode("latin-1")
        head.keep_alive = p.should_keep_alive()
        if not head.host:
            if version == "1.1":
                self._fail(ProtocolError("HTTP/1.1 request without Host"))
        elif head.host == " ":
            head.host = ""
        if head.chunked and version == "1.0":
            self._fail(ProtocolError("Transfer-Encoding in an HTTP/1.0 request"))
        head.expect_continue = head.expect_continue and version == "1.1"
        limit = self.max_body_bytes
        if limit and head.content_length is not None and head.content_length > limit:
            self._fail(ProtocolError(f"request body over {limit} bytes", status=413))
        head.raw = self._raw_block(head)
        self._body_bytes = 0
        self.body_limit = limit
        self._in_head = False
        self._pending = 0
        self.events.append(head)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self.body_limit and self._body_bytes > self.body_limit:
            limit = self.body_limit
            self._fail(ProtocolError(f"request body over {limit} bytes", status=413))
        if body:
            self.events.append(body)

    def on_message_complete(self) -> None:
        self.events.append(End(self._trailers) if self._trailers else END)
        self._head_bytes = 0
        self._pending = 0
        self._in_head = True
        self._in_message = False
        self._completed_in_feed += 1

    def _raw_block(self, head: RequestHead) -> bytes | None:
        """The header block of a head whose request line opens the current feed and which
        ends within it, when it is exactly what llhttp parsed (None otherwise: forwarding
        then serializes the parsed fields); also enforces the size and count limits (once
        per head, not per field)."""
        headers = head.headers
        if len(headers) > self.max_headers:
            self._fail(ProtocolError("too many header fields", status=431))
        raw = None
        if self._began_in_feed:
            data = self._data
            # concatenated: compiled, bytes %-formatting is a generic call
            line = self._parser.get_method() + b" " + self._url + _LINE_END[head.version]
            if data.startswith(line):
                start = len(line)
                end = data.find(b"\r\n\r\n", start - 2) + 2
                raw = data[start:end]
                # One line per parsed field: no line the parser saw differently (a bare
                # LF, an empty line skipped before the request line, a folded value).
                if raw.count(b"\n") != len(headers):
                    raw = None
        if raw is None:
            size = self._head_bytes + sum(len(n) + len(v) + 4 for n, v in headers)
        else:
            size = self._head_bytes + len(raw)
        if size > self.max_header_bytes:
            self._fail(ProtocolError("request header fields too large", status=431))
        return raw

    def limit_body(self, head: RequestHead, limit: int) -> None:
        """Hold the current request's body to `limit` bytes (a route's), from here on as
        it streams; ProtocolError (413) when it is over already."""
        if self.body_limit == 0 or limit < self.body_limit:
            self.body_limit = limit
        if (head.content_length or 0) > limit or self._body_bytes > limit:
            self._fail(ProtocolError(f"request body over {limit} bytes", status=413))

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        raise error

    def feed(self, data: bytes) -> None:
        """Parse `data`; raises ProtocolError (status to answer with) on bad input."""
        if self.tunnel is not None:  # not HTTP any more: kept for the upstream
            self.tunnel += data
            return
        if self._raw_remaining:
            data = self._feed_raw(data)
            if not data:
                return
        self._data = data
        self._completed_in_feed = 0
        self._began_in_feed = False
        try:
            self._parser.feed_data(data)
            if self._in_head and self._in_message:
                # A head llhttp is still buffering (one endless line) never reaches the
                # callbacks; bound it by raw bytes, allowing for one read of slack.
                self._pending += len(data)
                if self._pending > self.max_header_bytes + 65536:
                    raise ProtocolError("request header fields too large", status=431)
        except httptools.HttpParserUpgrade as upgrade:
            self._after_upgrade(data, int(upgrade.args[0]))
        except (httptools.HttpParserError, ValueError) as exc:
            if self._error is not None:
                raise self._error from None
            raise ProtocolError(f"malformed request: {exc}") from None
        finally:
            self._data = b""

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        """After an Upgrade head: pass it through when its protocol is allowed and it has no
        body (the bytes after it belong to the new protocol); otherwise ignore the Upgrade
        and continue as plain HTTP/1.1."""
        head = next((e for e in reversed(self.events) if isinstance(e, RequestHead)), None)
        if head is None or head.method == "CONNECT":
            raise ProtocolError("CONNECT is not supported here", status=405)
        token = _upgrade_token(head.upgrade)
        if token in self.upgrades and not head.has_body and head.version == "1.1":
            head.tunnel = True
            head.keep_alive = False  # what follows the head is not HTTP, whatever the answer
            self.tunnel = data[offset:]
            return
        if head.chunked:
            raise ProtocolError("chunked body on an Upgrade request")
        # llhttp reported the message complete before its body: take that End back.
        if self.events and isinstance(self.events[-1], End):
            self.events.pop()
        self._parser = httptools.HttpRequestParser(self)
        self._in_head = True
        self._in_message = False
        self._head_bytes = 0
        self._raw_remaining = head.content_length or 0
        rest = data[offset:]
        if not self._raw_remaining:
            self.events.append(END)
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
        return self._in_head and self._in_message
