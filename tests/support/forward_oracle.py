"""The differential oracle for what the HTTP/1 proxy forwards (used by tests and fuzzers).

Client bytes go through the real parser (`RequestParser`) and the real head builder
(`upstream_request`), and each body is framed as the proxy frames it. Every request the
proxy accepted must then reach a backend as exactly that request, whichever way the
backend parses: llhttp (strict, via httptools) and the standard library's lenient header
parser read as a CGI/WSGI server reads it (`_` and `-` alike) must both see one request
with the validated method, target, Host and framing, the same body, and no byte after it.
The fast path (the client's block, cut) and the slow path (fields re-serialized) must
forward the same fields, also with field edits (what filters and header modifiers
produce: `EDITS` drops a credential and sets identity fields a client may have forged).

`check(data, cuts)` raises AssertionError on any difference; a ProtocolError from the
parser is a refusal, which is always a correct answer.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

from sidecar.config.headerops import HeaderOps
from sidecar.config.model import Limits, RouteAction
from sidecar.errors import ProtocolError
from sidecar.http.request import Forwarding, client_cert_line, parse_target, upstream_request
from sidecar.http.router import CompiledMatch
from sidecar.protocol.http1 import EDGE_KINDS, MESH_KINDS, End, RequestHead, RequestParser
from sidecar.protocol.wire import chunk, last_chunk

_ACTION = RouteAction(route="ns/r", rule=0)
_MATCH = CompiledMatch(
    action=_ACTION, path_type="PathPrefix", path_value="/", method=None, headers=(), query=()
)
EDGE = Forwarding(b"192.0.2.7", b"http")
INBOUND = Forwarding(
    client_cert=client_cert_line(
        "spiffe://weft.local/ns/default/sa/callee", "spiffe://weft.local/ns/default/sa/caller"
    )
)
RID = "00000000-0000-4000-8000-000000000001"
# Edits as an API-key filter and a JWT filter make them: the key's field and forged
# identity fields dropped, the verified identity added (and one added field dropped again
# by a later edit, which must not reach the backend).
EDITS = (
    HeaderOps(drop=frozenset({b"x-api-key", b"x-client"}),
              append=((b"x-client", b"alice"), (b"x-tmp", b"1"))),
    HeaderOps(drop=frozenset({b"x-sub", b"x-tmp"}), append=((b"X-Sub", b"u-1"),)),
)  # fmt: skip


@dataclass
class Seen:
    """One request as a backend's parser read it."""

    method: bytes = b""
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    complete: bool = False

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]


class StrictSink:
    """httptools callbacks collecting every message of a byte stream."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._in_head = True
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        self.seen.append(Seen())
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self.seen[-1].target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        (self.seen[-1].headers if self._in_head else self.seen[-1].trailers).append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.seen[-1].method = self.parser.get_method()

    def on_body(self, body: bytes) -> None:
        self.seen[-1].body += body

    def on_message_complete(self) -> None:
        self.seen[-1].complete = True


def parse_strict(data: bytes) -> list[Seen]:
    """What llhttp reads in `data` (AssertionError if it refuses it)."""
    sink = StrictSink()
    try:
        sink.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as exc:
        raise AssertionError(f"llhttp refuses the forwarded bytes ({exc}): {data!r}") from None
    return sink.seen


def parse_lenient(data: bytes) -> tuple[Seen, bytes]:
    """The first request as a lenient CGI-style server reads it, and the bytes after it.

    Lines may end in LF alone; field names are compared as CGI variables (`_` is `-`); the
    body is framed by Transfer-Encoding if present, else Content-Length (no further checks,
    as a lenient server does).
    """
    try:
        return _parse_lenient(data)
    except (ValueError, IndexError) as exc:
        raise AssertionError(f"a lenient parser misreads {data!r}: {exc}") from None


def _parse_lenient(data: bytes) -> tuple[Seen, bytes]:
    head_end = data.find(b"\r\n\r\n")
    lf_end = data.find(b"\n\n")
    ends = [(i, 4) for i in (head_end,) if i >= 0] + [(i, 2) for i in (lf_end,) if i >= 0]
    assert ends, f"no end of head in {data!r}"
    end, size = min(ends)
    request_line, _, block = data[:end].partition(b"\n")
    parts = request_line.rstrip(b"\r").split()
    assert len(parts) == 3, f"request line {request_line!r}"
    text = block.decode("latin-1") + "\n\n"
    msg = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
    seen = Seen(method=parts[0], target=parts[1])
    seen.headers = [
        (k.lower().replace("_", "-").encode("latin-1"), v.encode("latin-1")) for k, v in msg.items()
    ]
    rest = data[end + size :]
    te = seen.values(b"transfer-encoding")
    length = seen.values(b"content-length")
    if te:
        body = bytearray()
        while True:
            line, _, rest = rest.partition(b"\n")
            n = int(line.rstrip(b"\r").split(b";")[0], 16)
            if n == 0:
                trailer_end = rest.find(b"\r\n\r\n") if not rest.startswith(b"\r\n") else -2
                rest = rest[trailer_end + 4 :]
                break
            body += rest[:n]
            rest = rest[n + 2 :]
        seen.body = bytes(body)
    elif length:
        n = int(length[0])
        seen.body, rest = rest[:n], rest[n:]
    seen.complete = True
    return seen, rest


@dataclass
class Accepted:
    """One request the proxy accepted and what it forwarded (fast path and slow path)."""

    ops: tuple[HeaderOps, ...]
    head: RequestHead
    target: str
    authority: str
    body: bytes
    trailers: list[tuple[bytes, bytes]] | None
    fast: bytes
    slow: bytes


def forwarded(
    data: bytes, cuts: Sequence[int] = (), *, edge: bool = True, limits: Limits | None = None,
    ops: tuple[HeaderOps, ...] = (),
) -> tuple[list[Accepted], ProtocolError | None]:  # fmt: skip
    """Run `data` (fed in pieces at `cuts`) through the parser and the head builder."""
    limits = limits or Limits()
    parser = RequestParser(
        max_header_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        max_body_bytes=limits.max_request_body_bytes,
        upgrades=limits.upgrades,
        kinds=EDGE_KINDS if edge else MESH_KINDS,
    )
    fwd = EDGE if edge else INBOUND
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    out: list[Accepted] = []
    head: RequestHead | None = None
    body = bytearray()
    try:
        for a, b in itertools.pairwise(bounds):
            parser.feed(data[a:b])
            while parser.events:
                ev = parser.events.popleft()
                if isinstance(ev, RequestHead):
                    head, body = ev, bytearray()
                    if head.tunnel:  # the rest is another protocol: check the head alone
                        out.append(_build(head, b"", None, fwd, limits, ops))
                        return out, None
                elif isinstance(ev, bytes):
                    body += ev
                elif isinstance(ev, End):
                    assert head is not None
                    out.append(_build(head, bytes(body), ev.trailers, fwd, limits, ops))
                    head = None
    except ProtocolError as exc:
        return out, exc
    return out, None


def _build(
    head: RequestHead,
    body: bytes,
    trailers: list[tuple[bytes, bytes]] | None,
    fwd: Forwarding,
    limits: Limits,
    ops: tuple[HeaderOps, ...] = (),
) -> Accepted:
    authority, target, _, _ = parse_target(head, limits)

    def one(h: RequestHead) -> bytes:
        rid = h.request_id.decode("latin-1") or RID  # as the proxy chooses it
        req = upstream_request(h, target, authority, _ACTION, ops, _MATCH, fwd, rid)
        if h.chunked:
            req += (chunk(body) if body else b"") + last_chunk(trailers)
        else:
            req += body
        return bytes(req)

    slow_head = copy.copy(head)
    slow_head.raw = None
    return Accepted(ops, head, target, authority, body, trailers, one(head), one(slow_head))


def check_one(acc: Accepted, fwd: Forwarding = EDGE) -> None:
    """The oracle for one accepted request."""
    head = acc.head
    for label, data in (("fast", acc.fast), ("slow", acc.slow)):
        seen = parse_strict(data)
        assert len(seen) == 1, f"{label}: llhttp reads {len(seen)} requests in {data!r}"
        s = seen[0]
        assert s.complete or head.tunnel, f"{label}: incomplete {data!r}"
        _same_request(label, s, acc, fwd, data)
        if not head.tunnel:
            lenient, rest = parse_lenient(data)
            assert rest == b"", f"{label}: bytes after the request for a lenient parser: {rest!r}"
            _same_request(label + "/lenient", lenient, acc, fwd, data)
    fast = sorted((n.lower(), v) for n, v in parse_strict(acc.fast)[0].headers)
    slow = sorted((n.lower(), v) for n, v in parse_strict(acc.slow)[0].headers)
    assert fast == slow, f"fast and slow paths differ:\n{fast}\n{slow}"


def _same_request(label: str, s: Seen, acc: Accepted, fwd: Forwarding, data: bytes) -> None:
    head = acc.head
    where = f"{label}: {data!r}"
    assert s.method.decode() == head.method, where
    assert s.target.decode("latin-1") == acc.target, where
    hosts = s.values(b"host")
    assert hosts == [acc.authority.encode("latin-1")], f"Host {hosts} in {where}"
    te = s.values(b"transfer-encoding")
    lengths = s.values(b"content-length")
    if head.chunked:
        assert te == [b"chunked"] and not lengths, where
    else:
        assert not te, where
        want = [b"%d" % len(acc.body)] if acc.body or head.content_length is not None else []
        assert lengths == want, where
    if not head.tunnel:
        assert s.body == acc.body, where
    assert len(s.values(b"x-request-id")) == 1, where
    # Only the inbound hop vouches for a caller, in exactly one field it wrote itself.
    xfcc = [fwd.client_cert.split(b": ", 1)[1].rstrip()] if fwd.client_cert else []
    assert s.values(b"x-forwarded-client-cert") == xfcc, where
    if fwd.peer is not None:  # the edge appends the client it saw, in one field
        chain = head.forwarded_for + b", " + fwd.peer if head.forwarded_for else fwd.peer
        assert s.values(b"x-forwarded-for") == [chain], where
    for name in (b"expect", b"keep-alive", b"proxy-connection", b"te", b"trailer"):
        assert not s.values(name), f"{name!r} forwarded in {where}"
    if acc.ops:  # the edits, exactly: what they drop is gone, what they add is there once
        assert not s.values(b"x-api-key") and not s.values(b"x-tmp"), where
        assert s.values(b"x-client") == [b"alice"] and s.values(b"x-sub") == [b"u-1"], where


def check(
    data: bytes, cuts: Sequence[int] = (), *, edge: bool = True, ops: tuple[HeaderOps, ...] = ()
) -> int:
    """Run the oracle over every request in `data`; the number accepted."""
    accepted, _ = forwarded(data, cuts, edge=edge, ops=ops)
    fwd = EDGE if edge else INBOUND
    for acc in accepted:
        check_one(acc, fwd)
    return len(accepted)


def check_input(data: bytes) -> None:
    """The fuzz harness's and the regression corpus's check of one input: at the edge and
    inbound, whole and split into three reads, and at the edge with field edits."""
    for edge in (True, False):
        check(data, edge=edge)
        check(data, (len(data) // 3, 2 * len(data) // 3), edge=edge)
    check(data, ops=EDITS)
