"""Pure per-request decisions: target parsing, backend choice, and the upstream request head."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.config.headerops import HOP_WRITTEN, HeaderOps
from sidecar.config.headerops import dropped as is_dropped
from sidecar.config.model import Backend, Limits, RouteAction
from sidecar.errors import ProtocolError
from sidecar.http.filters import rewritten_target, split_target
from sidecar.http.paths import normalize_path
from sidecar.http.router import CompiledMatch
from sidecar.observe.tracecontext import REPLACED
from sidecar.protocol.http1 import FIELD_ALIASES, RequestHead
from sidecar.protocol.wire import (
    AUTHORITY,
    cut_lines,
    serialize_head,
    spellings,
    strip_hop_by_hop,
)

log = logging.getLogger("weft.route")

_ABSOLUTE = re.compile(r"^(https?)://([^/?#]*)([^#]*)", re.IGNORECASE)
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
_NEVER_FORWARDED = (b"expect", b"x-forwarded-client-cert", b"host", b"x-request-id")
# Fields forwarded_fields drops, by (this hop sets X-Forwarded-*, this hop traces).
_DROPPED = {
    (edge, trace): frozenset(
        (*_NEVER_FORWARDED, *(_FORWARDED if edge else ()), *(REPLACED if trace else ()))
    )
    | FIELD_ALIASES
    for edge in (False, True)
    for trace in (False, True)
}


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What a hop adds to the requests of one downstream connection. The edge appends the
    client to X-Forwarded-For and sets X-Forwarded-Proto/-Host (`peer` set); sidecars leave
    those as the app sent them (`peer` None), as a mesh hop should, and an inbound sidecar
    tells the app who called in X-Forwarded-Client-Cert (`client_cert`, a whole line). Every
    hop drops an X-Forwarded-Client-Cert a client sent: only a sidecar may vouch for one."""

    peer: bytes | None = None
    scheme: bytes = b"http"
    client_cert: bytes = b""
    trace: bool = False  # this hop traces: it replaces the trace context fields


def client_cert_line(own: str, peer: str) -> bytes:
    """The X-Forwarded-Client-Cert line (Envoy's format) for a verified mTLS caller."""
    return b"x-forwarded-client-cert: By=%b;URI=%b\r\n" % (own.encode(), peer.encode())


def parse_target(head: RequestHead, limits: Limits) -> tuple[str, str, str, str]:
    """(authority, target, path, query) of a request, its path normalized (http/paths.py):
    routing, authorization and the upstream all see this target."""
    target = head.target
    authority = head.host
    if target[:1] != "/":
        m = _ABSOLUTE.match(target)
        if m is not None:
            authority = m.group(2)
            if not AUTHORITY.fullmatch(authority.encode("latin-1")):
                raise ProtocolError("invalid authority in the request target")
            target = m.group(3)
            if target[:1] != "/":  # "http://a?x=1" asks for "/?x=1"
                target = "/" + target
        elif not (target == "*" and head.method == "OPTIONS"):
            raise ProtocolError("request target must be an absolute path or absolute URI")
    path, query = split_target(target)
    if "%" in path or "\\" in path or "/." in path or "//" in path:
        path = normalize_path(
            path, merge_slashes=limits.merge_slashes, escaped_slashes=limits.escaped_slashes
        )
        target = f"{path}?{query}" if query else path
    return authority, target, path, query


class RequestIds:
    """UUID-shaped request ids: a random per-process prefix and a counter.

    Ids need uniqueness, not secrecy; 74 random bits per process make a clash between
    processes negligible, and the counter makes one impossible within a process.
    """

    __slots__ = ("_next", "_prefix")

    def __init__(self, rng: random.Random) -> None:
        h = f"{rng.getrandbits(80):020x}"
        self._prefix = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-"
        self._next = 0

    def new(self) -> str:
        self._next += 1
        return self._prefix + hex_digits(self._next & 0xFFFFFFFFFFFF, 12)


def hex_digits(n: int, digits: int) -> str:
    """0 ≤ n < 16**digits in exactly `digits` lowercase hex digits: `f"{n:0{digits}x}"`
    at a third of its cost when compiled (a format spec is a str.format call)."""
    return hex(n | 1 << 4 * digits)[3:]


def pick_backend(
    action: RouteAction, usable: Callable[[Backend], bool] | None = None
) -> Backend | None:
    """The backend of the rule for this request: the only one, or the weighted split's
    next pick among those `usable` says can take traffic (when several are named; when
    none can, among all of them by weight, as a cluster in panic does). A backend that
    stops or starts being usable is logged once per change."""
    backends = action.backends
    if len(backends) == 1:
        return backends[0] if backends[0].weight > 0 else None
    split = action.split
    if split is None or split.total <= 0:
        return None
    if usable is None:
        return backends[split.pick()]
    mask = [usable(b) for b in backends]
    skipped = frozenset(i for i, ok in enumerate(mask) if not ok)
    if skipped != split.skipped:
        _log_shares(action, split.skipped, skipped)
        split.skipped = skipped
    i = split.pick(mask)
    if i < 0:
        i = split.pick()
    return backends[i] if i >= 0 else None


def _log_shares(action: RouteAction, before: frozenset[int], now: frozenset[int]) -> None:
    for i in sorted(now - before):
        log.warning("route %s: backend %s has no healthy endpoint; its share goes to the others",
                    action.route, action.backends[i].cluster)  # fmt: skip
    for i in sorted(before - now):
        log.info("route %s: backend %s takes its share again", action.route,
                 action.backends[i].cluster)  # fmt: skip


def upstream_request(
    head: RequestHead,
    target: str,
    authority: str,
    action: RouteAction,
    ops: tuple[HeaderOps, ...],
    match: CompiledMatch,
    fwd: Forwarding,
    rid: str,
    trace: bytes = b"",
) -> bytearray:
    """The request head to send upstream (without its body); `trace` holds the trace
    context lines of a tracing hop."""
    target = _target(target, action, match)
    rewrite = action.rewrite
    out = bytearray(b"%b %b HTTP/1.1\r\n" % (head.method.encode(), target.encode("latin-1")))
    host = authority.encode("latin-1")
    if (
        head.raw is not None
        and (rewrite is None or rewrite.hostname is None)
        and authority == head.host
        and (not ops or _plain(ops))
    ):
        # The client's block minus what it may not pass on: its one validated Host,
        # Content-Length and X-Request-Id lines stay, the framing is written here. Field
        # edits (filters, header modifiers) cut the lines they drop and add theirs after.
        cut = head.cut + head.connection_named() if head.connection else head.cut
        if ops:
            for op in ops:
                cut = cut + spellings(head.raw, op.drop)
        out += cut_lines(head.raw, cut) if cut else head.raw
        if ops:
            out += _added_lines(ops)
        if not head.has_host:
            out += b"host: " + host + b"\r\n"
        if head.rewrite_length and not head.chunked:
            out += b"content-length: %d\r\n" % (head.content_length or 0)
        if not head.request_id or head.request_id_cut:
            out += b"x-request-id: " + rid.encode("latin-1") + b"\r\n"
    else:
        out += _rebuilt_headers(head, host, action, ops, fwd)
        out += b"x-request-id: " + rid.encode("latin-1") + b"\r\n"
    out += trace
    if fwd.peer is not None:
        peer = fwd.peer
        xff = head.forwarded_for + b", " + peer if head.forwarded_for else peer
        out += b"x-forwarded-for: " + xff + b"\r\nx-forwarded-proto: " + fwd.scheme + b"\r\n"
        out += b"x-forwarded-host: " + host + b"\r\n"
    out += fwd.client_cert
    if head.chunked:
        out += b"transfer-encoding: chunked\r\n"
    elif head.tunnel:  # the Upgrade the client asked for, hop by hop again
        out += b"connection: upgrade\r\nupgrade: " + (head.upgrade or b"") + b"\r\n"
    out += b"\r\n"
    return out


def _plain(ops: tuple[HeaderOps, ...]) -> bool:
    """Do the edits leave the fields a hop writes itself alone?"""
    for op in ops:  # noqa: SIM110 (a loop: no generator per request)
        if op.touches(HOP_WRITTEN):  # the slow path orders those drops and writes
            return False
    return True


def _added_lines(ops: tuple[HeaderOps, ...]) -> bytes:
    """The lines the edits add that no later edit drops, in order."""
    out = b""
    last = len(ops) - 1
    for i, op in enumerate(ops):
        for name, value in op.append:
            if i == last or not any(is_dropped(name, later.drop) for later in ops[i + 1 :]):
                out += name + b": " + value + b"\r\n"
    return out


def _target(target: str, action: RouteAction, match: CompiledMatch) -> str:
    """The request target after the route's URLRewrite, if it rewrites the path."""
    rewrite = action.rewrite
    if rewrite is None or rewrite.path_type is None:
        return target
    prefix = match.path_value if match.path_type == "PathPrefix" else None
    return rewritten_target(target, rewrite, prefix)


def _rebuilt_headers(
    head: RequestHead, host: bytes, action: RouteAction, ops: tuple[HeaderOps, ...],
    fwd: Forwarding,
) -> bytearray:  # fmt: skip
    """The slow path: parsed fields, filtered and modified, serialized again."""
    headers = forwarded_fields(head, host, action, ops, fwd)
    if head.content_length is not None and not head.chunked:
        headers.append((b"content-length", b"%d" % head.content_length))
    out = serialize_head(b"", headers)
    del out[-2:]
    return out


def forwarded_fields(
    head: RequestHead, host: bytes, action: RouteAction, ops: tuple[HeaderOps, ...],
    fwd: Forwarding,
) -> list[tuple[bytes, bytes]]:  # fmt: skip
    """The request's end-to-end fields after the edits of the route's filters (`ops`, in
    order), `host` first (the rewritten hostname if the route has one); no framing
    fields, and no forwarding fields when this hop sets them."""
    drop = _DROPPED[fwd.peer is not None, fwd.trace]
    kept = strip_hop_by_hop(head.headers, head.connection)
    headers = [h for h in kept if h[0].lower() not in drop]
    rewrite = action.rewrite
    if rewrite is not None and rewrite.hostname is not None:
        host = rewrite.hostname.encode()
    headers.insert(0, (b"host", host))
    for edit in ops:
        headers = edit.apply(headers)
    return headers


def h2_request_headers(
    head: RequestHead,
    target: str,
    authority: str,
    action: RouteAction,
    ops: tuple[HeaderOps, ...],
    match: CompiledMatch,
    fwd: Forwarding,
    rid: str,
    trace: bytes = b"",
) -> list[tuple[bytes, bytes]]:
    """The header list of the request on an HTTP/2 upstream stream."""
    target = _target(target, action, match)
    fields = forwarded_fields(head, authority.encode("latin-1"), action, ops, fwd)
    out = [
        (b":method", head.method.encode()),
        (b":scheme", b"http"),
        (b":authority", fields[0][1]),
        (b":path", target.encode("latin-1")),
    ]
    out.extend((n.lower(), v) for n, v in fields[1:])
    if any(n.lower() == b"te" and v.strip().lower() == b"trailers" for n, v in head.headers):
        out.append((b"te", b"trailers"))  # gRPC needs it end to end; the only TE HTTP/2 allows
    if head.content_length is not None and not head.chunked:
        out.append((b"content-length", b"%d" % head.content_length))
    out.append((b"x-request-id", rid.encode("latin-1")))
    for line in trace.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        out.append((name, value))
    if fwd.peer is not None:
        xff = head.forwarded_for + b", " + fwd.peer if head.forwarded_for else fwd.peer
        out.append((b"x-forwarded-for", xff))
        out.append((b"x-forwarded-proto", fwd.scheme))
        out.append((b"x-forwarded-host", authority.encode("latin-1")))
    if fwd.client_cert:
        name, _, value = fwd.client_cert.partition(b": ")
        out.append((name, value.rstrip()))
    return out
