"""External authorization (SecurityPolicy.extAuth): every request is checked with a
service before it is forwarded — over HTTP, or over Envoy's
`envoy.service.auth.v3.Authorization/Check` gRPC API — which is how OPA, Authelia,
oauth2-proxy or a team's own service plug in.

HTTP (Envoy's and Envoy Gateway's contract): the check is the request's method, `path`
prefixed to its path and query, its Host, `Content-Length: 0`, `Authorization` and the
headers `headersToExtAuth` names. A 2xx answer lets the request through, with the
answer's `headersToBackend` fields set on it; any other answer is the client's answer
(status, body, fields). gRPC: a CheckRequest with the request's attributes (all fields
unless `headersToExtAuth` narrows them); status OK lets it through with `ok_response`'s
header edits, anything else is the denial (`denied_response`'s status, default 403).

The service is a backend like any other (a Service and port: its cluster's endpoints,
balancing and, in a mesh, mTLS). When it cannot be reached or answer in `timeout`, or
answers gRPC with an error, the request is refused 403 (`ext_auth_error`) unless the
policy says `failOpen`. Fields the service sets are checked as a client's would be: no
framing or connection fields, no pseudo-fields, no control characters.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import trio

from sidecar.config.headerops import HOP_WRITTEN, HeaderOps, field_key
from sidecar.config.resources import ExtAuth
from sidecar.errors import UpstreamError, why
from sidecar.filters.chain import Exchange, LocalReply, Verdict
from sidecar.upstream.call import Answer, call

if TYPE_CHECKING:
    from sidecar.http.context import ProxyContext

log = logging.getLogger("weft.ext_auth")

MAX_ANSWER = 64 * 1024
CHECK_PATH = b"/envoy.service.auth.v3.Authorization/Check"
_NAME = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]{0,8192}$")
ERROR = LocalReply(403, b"forbidden: the authorization service could not decide\n", (),
                   "ext_auth_error")  # fmt: skip


def settable(name: bytes, value: bytes) -> bool:
    """May an authorization service put this field on a request or an answer? Not one a
    hop writes itself (framing, Host, the request id, forwarding, tracing)."""
    return bool(_NAME.match(name) and _VALUE.match(value)) and field_key(name) not in HOP_WRITTEN


class ExtAuthFilter:
    __slots__ = ("auth", "cluster", "logged_at", "metrics_labels", "name", "sent")

    def __init__(self, auth: ExtAuth, cluster: str | None, name: str) -> None:
        self.auth = auth
        self.cluster = cluster  # None: the backend did not resolve (every check fails)
        self.name = name
        self.metrics_labels = (("policy", name),)
        self.logged_at = -1e9
        self.sent = frozenset({b"authorization", *auth.headers_to_ext_auth})  # HTTP checks

    def describe(self) -> str:
        kind = "gRPC" if self.auth.grpc else "HTTP"
        return f"external authorization ({kind}) by {self.cluster or 'an unresolved backend'}" + (
            ", fail open" if self.auth.fail_open else ""
        )

    def on_request(self, x: Exchange) -> Awaitable[Verdict]:
        return self._check(x)

    async def _check(self, x: Exchange) -> Verdict:
        ctx = x.ctx
        try:
            if self.cluster is None or ctx is None:
                raise UpstreamError("the authorization service's backend did not resolve")
            with trio.fail_after(self.auth.timeout_s):
                if self.auth.grpc:
                    return await self._grpc(ctx, x)
                return await self._http(ctx, x)
        except (UpstreamError, OSError, trio.TooSlowError, ValueError) as exc:
            if ctx is not None:
                ctx.metrics.inc("weft_ext_auth_errors_total", self.metrics_labels)
            self._log_error(exc)
            return None if self.auth.fail_open else ERROR

    # -- HTTP -------------------------------------------------------------------------------
    async def _http(self, ctx: ProxyContext, x: Exchange) -> Verdict:
        assert self.cluster is not None
        target = (self.auth.path + x.path + (f"?{x.query}" if x.query else "")).encode("latin-1")
        headers = [(n.lower(), v) for n, v in x.headers if n.lower() in self.sent]
        answer = await call(
            ctx.clusters, ctx.background, ctx.rng, self.cluster, x.method.encode(), target,
            x.authority.encode(), headers, max_body=MAX_ANSWER,
        )  # fmt: skip
        if 200 <= answer.status < 300:
            keep = self.auth.headers_to_backend
            self._allow(x, [(n, v) for n, v in answer.headers if n in keep], ())
            return None
        return _denial(answer.status, answer.headers, answer.body)

    # -- gRPC -------------------------------------------------------------------------------
    async def _grpc(self, ctx: ProxyContext, x: Exchange) -> Verdict:
        from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

        from sidecar.filters.proto import ext_authz_pb2 as pb

        assert self.cluster is not None
        message = check_request(x, self.auth.headers_to_ext_auth).SerializeToString()
        ms = max(1, int(self.auth.timeout_s * 1000))
        answer = await call(
            ctx.clusters, ctx.background, ctx.rng, self.cluster, b"POST", CHECK_PATH,
            self.cluster.encode(),
            [(b"content-type", b"application/grpc"), (b"te", b"trailers"),
             (b"grpc-timeout", b"%dm" % ms)],
            b"\x00" + struct.pack(">I", len(message)) + message, http2=True,
            max_body=MAX_ANSWER,
        )  # fmt: skip
        status = _grpc_status(answer)
        if status != 0:
            raise UpstreamError(f"Check answered grpc-status {status}")
        body = answer.body
        if len(body) < 5 or body[0] != 0 or struct.unpack(">I", body[1:5])[0] != len(body) - 5:
            raise UpstreamError("Check answered a malformed gRPC message")
        try:
            response = pb.CheckResponse.FromString(body[5:])
        except DecodeError:
            raise UpstreamError("Check answered a message that is not a CheckResponse") from None
        if response.status.code == 0:
            ok = response.ok_response
            drops = tuple(n.lower().encode() for n in ok.headers_to_remove)
            self._allow(x, _fields(ok.headers), drops)
            if added := [(n, v) for n, v in _fields(ok.response_headers_to_add) if settable(n, v)]:
                x.response_ops.append(HeaderOps(drop=frozenset(), append=tuple(added)))
            return None
        denied = response.denied_response
        return _denial(denied.status.code or 403, _fields(denied.headers), denied.body.encode())

    # -- shared -----------------------------------------------------------------------------
    @staticmethod
    def _allow(x: Exchange, sets: list[tuple[bytes, bytes]], drops: tuple[bytes, ...]) -> None:
        sets = [(n, v) for n, v in sets if settable(n, v)]
        drops = tuple(n for n in drops if _NAME.match(n) and field_key(n) not in HOP_WRITTEN)
        if not sets and not drops:
            return
        names = (*drops, *(n for n, _ in sets))
        ops = HeaderOps(drop=frozenset(field_key(n) for n in names), append=tuple(sets))
        x.request_ops.append(ops)
        x.headers = ops.apply(x.headers)

    def _log_error(self, exc: BaseException) -> None:
        """At most one line every 10 s: an outage must not flood the log."""
        now = trio.current_time()
        if now - self.logged_at >= 10.0:
            self.logged_at = now
            log.warning("SecurityPolicy %s: the authorization service failed (%s)", self.name,
                        why(exc))  # fmt: skip


def _fields(options: Any) -> list[tuple[bytes, bytes]]:
    """HeaderValueOptions as fields (names lower-cased; `raw_value` when set)."""
    return [(o.header.key.lower().encode(), o.header.raw_value or o.header.value.encode())
            for o in options]  # fmt: skip


def check_request(x: Exchange, only: tuple[bytes, ...]) -> Any:
    """The CheckRequest for a request: its attributes as Envoy sends them."""
    from sidecar.filters.proto import ext_authz_pb2 as pb

    req = pb.CheckRequest()
    attrs = req.attributes
    attrs.source.address.socket_address.address = x.client
    http = attrs.request.http
    http.method = x.method
    http.path = x.path + (f"?{x.query}" if x.query else "")
    http.host = x.authority
    http.scheme = x.scheme
    http.query = x.query
    http.id = (x.header(b"x-request-id") or b"").decode("latin-1")
    for name, value in x.headers:
        key = name.lower().decode("latin-1")
        if only and name.lower() not in only:
            continue
        text = value.decode("latin-1")
        http.headers[key] = f"{http.headers[key]},{text}" if key in http.headers else text
    return req


def _grpc_status(answer: Answer) -> int:
    if answer.status != 200:
        raise UpstreamError(f"Check answered HTTP {answer.status}")
    for name, value in (*answer.trailers, *answer.headers):
        if name == b"grpc-status":
            try:
                return int(value)
            except ValueError:
                break
    raise UpstreamError("Check answered without a grpc-status")


def _denial(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> LocalReply:
    if not 200 <= status <= 599:
        status = 403
    fields = tuple((n, v) for n, v in headers if settable(n, v))
    return LocalReply(status, body, fields, "ext_auth_denied")
