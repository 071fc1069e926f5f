"""A proxied request's spans, and their OTLP protobuf encoding (pure).

The data path keeps one `Finished` tuple per sampled request; the exporter encodes batches
of them here, straight into the bytes of OTLP `Span` messages (opentelemetry/proto/trace/v1/
trace.proto). The SDK's own encoder builds a message object per attribute and costs ~48 µs
a span on this hardware; this writer produces the same messages (tests decode both and
compare) for a fraction of that, since a span's keys and shape are fixed.

Names and attributes follow the OpenTelemetry semantic conventions. HTTP: a server span is
`{method} {http.route}` (the matched rule's path template, never the raw path; just
`{method}` when the rule matches every path, as the conventions say when no route is
known), a client span `{method} {url.template}` likewise; `http.request.method`,
`http.response.status_code`, `url.path`/`url.scheme` (server spans), `url.full` (client
spans: the edge's call names the upstream endpoint it reached, a sidecar's outbound span
the URL its app asked for), `server.address`/`.port`, `network.peer.address`/`.port`,
`peer.service`, `http.request.resend_count` (retries), `error.type`. gRPC calls follow the
RPC conventions: the span is `package.Service/Method`, with `rpc.system` `grpc`,
`rpc.service`, `rpc.method` and `rpc.grpc.status_code`, and fails on the codes the
conventions name (a server on UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
UNAVAILABLE, DATA_LOSS; a client on any but OK). Weft adds `weft.route` (the route's
name) and `weft.peer.identity` (a caller's SPIFFE ID on inbound spans).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from operator import itemgetter
from typing import Any, NamedTuple

SERVER, CLIENT = 2, 3  # Span.SpanKind
_STATUS_ERROR = 2
# SpanFlags: whether the parent is remote is known (as the SDK sets it), and is it.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


class Finished(NamedTuple):
    """One sampled request, as the data path saw it. The data path builds it as a plain
    tuple (marshal carries it to the exporter process); the exporter names its fields."""

    kind: int  # of the hop's first span: SERVER, or CLIENT on a sidecar's outbound side
    trace_id: int
    span_id: int
    parent_id: int  # 0: a root
    client_id: int  # an edge's CLIENT span for its upstream call (0: none)
    start_s: float  # wall clock (seconds) the request began
    upstream_s: float  # seconds from start to the first upstream try (0: none made)
    duration_s: float
    method: str
    template: str  # http.route ("" when no route matched)
    route: str  # the route's name
    scheme: str
    authority: str
    path: str
    status: int  # 0: no response
    peer_service: str
    upstream: str  # "address:port" of the endpoint of the last try ("" none)
    retries: int
    version: str  # "1.1" | "1.0" | "2"
    client: str  # the downstream peer's address
    identity: str  # the caller's SPIFFE ID (inbound) or ""
    error: str  # what went wrong ("" nothing)
    rpc: str = ""  # a gRPC call's "package.Service/Method" ("" not gRPC)
    grpc_status: int = -1  # its grpc-status (-1: none seen)


def encode(records: Iterable[tuple[Any, ...]]) -> bytes:
    """The concatenated `Span` messages (as ScopeSpans field 2) of these requests (each a
    `Finished`, or the plain tuple of its fields that the data path sends)."""
    out = bytearray()
    shapes, urls = _SHAPES, _URLS
    for r in records:
        kind, trace_id, span_id, parent_id, client_id, start_s, upstream_s, duration_s = r[:8]
        key = (*_SHAPE_FIELDS(r), parent_id != 0, client_id != 0)
        shape = shapes.get(key)
        if shape is None:
            if len(shapes) >= _CACHE_MAX:
                shapes.clear()
            shape = shapes[key] = _shape(Finished(*r))
        first, child, origin, child_origin = shape
        path = r[13]
        url = _url(urls, origin, path)  # url.path (server spans), url.full (client spans)
        hi, lo = trace_id >> 64, trace_id & _LOW64
        start = int(start_s * 1e9)
        end = start + int(duration_s * 1e9)
        if parent_id:
            ids = _IDS_PARENT.pack(0x0A, 16, hi, lo, 0x12, 8, span_id, 0x22, 8, parent_id)
        else:
            ids = _IDS.pack(0x0A, 16, hi, lo, 0x12, 8, span_id)
        body = ids + _TIMES.pack(0x39, start, 0x41, end) + first + url[kind != SERVER]
        out += _length(body)
        out += body
        if child:  # the edge's call upstream, a child of its SERVER span
            up = start + int(upstream_s * 1e9)
            body = (
                _IDS_PARENT.pack(0x0A, 16, hi, lo, 0x12, 8, client_id, 0x22, 8, span_id)
                + _TIMES.pack(0x39, up, 0x41, end) + child + _url(urls, child_origin, path)[1]
            )  # fmt: skip
            out += _length(body)
            out += body
    return bytes(out)


def _url(
    urls: dict[tuple[str, str], tuple[bytes, bytes]], origin: str, path: str
) -> tuple[bytes, bytes]:
    url = urls.get((origin, path))
    if url is None:
        if len(urls) >= _CACHE_MAX:
            urls.clear()
        url = urls[(origin, path)] = (_str(_URL_PATH, path), _str(_URL_FULL, origin + path))
    return url


def _length(body: bytes) -> bytes:
    """ScopeSpans.spans' tag (field 2) and the span's length."""
    n = len(body)
    if n < 0x80:
        return bytes((0x12, n))
    if n < 0x4000:
        return bytes((0x12, (n & 0x7F) | 0x80, n >> 7))
    return b"\x12" + varint(n)


# What a span's message holds besides ids, times and the path, by the request's shape (route,
# status, addresses...): requests repeat a few shapes, so each is encoded once; likewise the
# url attributes per path. Cleared when full: client-chosen values (authorities, paths)
# cannot grow them without bound.
_SHAPES: dict[tuple[object, ...], tuple[bytes, bytes, str, str]] = {}
_Urls = dict[tuple[str, str], tuple[bytes, bytes]]
_URLS: _Urls = {}
_CACHE_MAX = 4096
# Finished's fields that make a shape: kind, method … authority, status … grpc_status
_SHAPE_FIELDS = itemgetter(0, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23)
_LOW64 = (1 << 64) - 1
_IDS = struct.Struct(">BBQQBBQ")  # trace_id (field 1), span_id (2); ids are big-endian bytes
_IDS_PARENT = struct.Struct(">BBQQBBQBBQ")  # and parent_span_id (4)


def _shape(r: Finished) -> tuple[bytes, bytes, str, str]:
    """(the first span's fixed fields, its CLIENT child's or b"", the first span's
    "scheme://authority", the child's)."""
    server_name = client_name = r.method
    if r.rpc:
        server_name = client_name = r.rpc
    elif r.template:
        server_name = client_name = f"{r.method} {r.template}"
    remote = r.parent_id != 0
    if r.kind == SERVER:
        first = _fixed(server_name, SERVER, _server_attributes(r), _error(r, SERVER), remote)
    else:
        first = _fixed(client_name, CLIENT, _client_attributes(r), _error(r, CLIENT), remote)
    child = b""
    if r.client_id:  # the edge's call: to the endpoint it reached
        attrs = _client_attributes(r, upstream=True)
        child = _fixed(client_name, CLIENT, attrs, _error(r, CLIENT), False)
    upstream = f"http://{r.upstream}" if r.upstream else f"{r.scheme}://{r.authority}"
    return first, child, f"{r.scheme}://{r.authority}", upstream


def _fixed(name: str, kind: int, attrs: bytes, error: str, remote: bool) -> bytes:
    raw = name.encode()
    out = b"\x2a" + varint(len(raw)) + raw + b"\x30" + bytes((kind,)) + attrs
    if error:
        msg = error.encode()
        status = b"\x12" + varint(len(msg)) + msg + b"\x18\x02"
        out += b"\x7a" + varint(len(status)) + status
    return out + _FLAGS.pack(0x85, 0x01, _HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))


def _error(r: Finished, kind: int) -> str:
    """error.type of a failed span ("" when it did not fail): what went wrong, else the
    status. HTTP: server spans fail from 500, client spans from 400; gRPC: as the RPC
    conventions say (`_GRPC_SERVER_ERRORS`; a client on any status but OK)."""
    if r.rpc and r.grpc_status >= 0:
        failed = r.grpc_status in _GRPC_SERVER_ERRORS if kind == SERVER else r.grpc_status != 0
        if not failed:
            return ""
        return r.error or _GRPC_CODES.get(r.grpc_status, str(r.grpc_status))
    if r.status and r.status < (500 if kind == SERVER else 400):
        return ""
    return r.error or str(r.status) or "no_response"


def _server_attributes(r: Finished) -> bytes:
    a = _str(_METHOD, r.method) + _str(_URL_SCHEME, r.scheme)
    if r.template:
        a += _str(_ROUTE, r.template)
    if r.route:
        a += _str(_WEFT_ROUTE, r.route)
    if r.status:
        a += _int(_STATUS, r.status)
    a += _str(_SERVER_ADDRESS, _host(r.authority)) + _str(_CLIENT_ADDRESS, r.client)
    a += _str(_PROTOCOL_VERSION, r.version)
    a += _rpc_attributes(r)
    if r.identity:
        a += _str(_PEER_IDENTITY, r.identity)
    if error := _error(r, SERVER):
        a += _str(_ERROR_TYPE, error)
    if r.upstream and not r.client_id:
        a += _str(_WEFT_UPSTREAM, r.upstream)
    return a


def _client_attributes(r: Finished, *, upstream: bool = False) -> bytes:
    """A client span's attributes; `upstream`: the edge's call, whose server is the
    endpoint it reached (a sidecar's outbound span is the app's call to a service name)."""
    a = _str(_METHOD, r.method)
    if r.template:
        a += _str(_URL_TEMPLATE, r.template)
    if r.route:
        a += _str(_WEFT_ROUTE, r.route)
    if r.status:
        a += _int(_STATUS, r.status)
    host, _, port = r.upstream.rpartition(":")
    host = host.strip("[]")
    if upstream and r.upstream:
        a += _str(_SERVER_ADDRESS, host)
        if port.isdigit():
            a += _int(_SERVER_PORT, int(port))
    else:
        a += _str(_SERVER_ADDRESS, _host(r.authority))
    if r.peer_service:
        a += _str(_PEER_SERVICE, r.peer_service)
    if r.upstream:
        a += _str(_PEER_ADDRESS, host)
        if port.isdigit():
            a += _int(_PEER_PORT, int(port))
    a += _rpc_attributes(r)
    if r.retries:
        a += _int(_RESEND_COUNT, r.retries)
    if error := _error(r, CLIENT):
        a += _str(_ERROR_TYPE, error)
    return a


def _rpc_attributes(r: Finished) -> bytes:
    if not r.rpc:
        return b""
    service, _, method = r.rpc.rpartition("/")
    a = _str(_RPC_SYSTEM, "grpc") + _str(_RPC_SERVICE, service) + _str(_RPC_METHOD, method)
    if r.grpc_status >= 0:
        a += _int(_RPC_GRPC_STATUS, r.grpc_status)
    return a


def _host(authority: str) -> str:
    if authority.startswith("["):
        return authority[1 : authority.find("]")]
    return authority.rpartition(":")[0] if ":" in authority else authority


_TIMES = struct.Struct("<BQBQ")
_FLAGS = struct.Struct("<BBI")


def varint(n: int) -> bytes:
    """A protobuf base-128 varint."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(name: str) -> bytes:
    """KeyValue.key, encoded once per attribute name."""
    raw = name.encode()
    return b"\x0a" + varint(len(raw)) + raw


def _str(key: bytes, value: str) -> bytes:
    raw = value.encode("utf-8", "replace")
    any_value = b"\x0a" + varint(len(raw)) + raw  # AnyValue.string_value
    kv = key + b"\x12" + varint(len(any_value)) + any_value
    return b"\x4a" + varint(len(kv)) + kv  # Span.attributes (field 9)


def _int(key: bytes, value: int) -> bytes:
    any_value = b"\x18" + varint(value)  # AnyValue.int_value
    kv = key + b"\x12" + varint(len(any_value)) + any_value
    return b"\x4a" + varint(len(kv)) + kv


_METHOD = _key("http.request.method")
_ROUTE = _key("http.route")
_STATUS = _key("http.response.status_code")
_URL_PATH = _key("url.path")
_URL_SCHEME = _key("url.scheme")
_URL_FULL = _key("url.full")
_SERVER_ADDRESS = _key("server.address")
_CLIENT_ADDRESS = _key("client.address")
_PEER_ADDRESS = _key("network.peer.address")
_PEER_PORT = _key("network.peer.port")
_PROTOCOL_VERSION = _key("network.protocol.version")
_PEER_SERVICE = _key("peer.service")
_RESEND_COUNT = _key("http.request.resend_count")
_ERROR_TYPE = _key("error.type")
_WEFT_ROUTE = _key("weft.route")
_WEFT_UPSTREAM = _key("weft.upstream.address")
_PEER_IDENTITY = _key("weft.peer.identity")
_URL_TEMPLATE = _key("url.template")
_SERVER_PORT = _key("server.port")
_RPC_SYSTEM = _key("rpc.system")
_RPC_SERVICE = _key("rpc.service")
_RPC_METHOD = _key("rpc.method")
_RPC_GRPC_STATUS = _key("rpc.grpc.status_code")
_GRPC_CODES = dict(enumerate((
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)))  # fmt: skip
# gRPC codes that fail a server span (the others are the caller's doing)
_GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
