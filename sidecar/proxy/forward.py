"""A forward-proxy listener (`protocol: weft.dev/ForwardProxy`): clients that use Weft as
their proxy (HTTP_PROXY, HTTPS_PROXY, `curl -x`).

Theory of operation. The request head is read (at most the listener's head limit, within
its header timeout) and parsed by llhttp; a malformed one is answered 400. With a
`proxyAuth`, `Proxy-Authorization` must carry a user of the policy's htpasswd (else 407
with `Proxy-Authenticate`). Then:

- `CONNECT host:port` is a tunnel: allowed by the egress policy, connected, answered
  `200 Connection Established`, and relayed both ways until either side ends it.
- An absolute-form request (`GET http://host:port/path`) is sent to its origin in origin
  form, without the proxy's own fields (`Proxy-*`) and hop-by-hop ones, with `Connection:
  close`, its body as its `Content-Length` says (a chunked request body is refused, 411),
  and the origin's answer is relayed back until the origin closes; the client's connection
  closes after it.

A destination the policy does not allow is answered 403 and never connected to. CIDR rules
are checked against the addresses the name resolves to, and the proxy connects to the
address it checked (no second lookup an attacker's DNS could answer differently). Every
request is in the access log (route `forward-proxy`, upstream `host:port`, the bytes both
ways) and in `weft_tcp_connections_total` / `weft_tcp_bytes_total`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from dataclasses import dataclass, field

import httptools
import trio

from sidecar.errors import UpstreamConnectError
from sidecar.filters.chain import Exchange, LocalReply
from sidecar.http.context import ProxyContext
from sidecar.http.router import PortRouter
from sidecar.protocol.wire import simple_response
from sidecar.proxy.egress import EgressPolicy
from sidecar.tcp.proxy import record_tunnel, relay_tracked
from sidecar.tcp.relay import Counts
from sidecar.transport.io import Conn, ConnectionLost, connect_within

ROUTE = "forward-proxy"
CONNECT_TIMEOUT_S = 10.0
ANSWER_IDLE_S = 300.0  # an origin that sends nothing for this long is given up
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
                        b"proxy-authenticate", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade"))  # fmt: skip
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


_DNS_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})")  # or an IPv4 literal


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


class BadRequest(Exception):
    pass


@dataclass
class Head:
    method: str = ""
    target: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""  # what came after the head in the same reads

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name), None)


def parse_head(data: bytes, limit_headers: int) -> Head:
    """The request head at the start of `data` (BadRequest when llhttp refuses it)."""
    head = Head()
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise BadRequest("incomplete head")
    head.body = data[end + 4 :]

    class Callbacks:
        def on_url(self, url: bytes) -> None:
            head.target += url.decode("latin-1")

        def on_header(self, name: bytes, value: bytes) -> None:
            if len(head.headers) >= limit_headers:
                raise BadRequest("too many header fields")
            head.headers.append((bytes(name), bytes(value)))

    parser = httptools.HttpRequestParser(Callbacks())
    try:
        parser.feed_data(data[: end + 4])
    except httptools.HttpParserUpgrade:
        pass  # CONNECT (and Upgrade): the head is whole
    except (httptools.HttpParserError, BadRequest) as exc:
        raise BadRequest(str(exc) or "malformed request") from None
    head.method = parser.get_method().decode("latin-1")
    return head


async def serve_forward_proxy(ctx: ProxyContext, router: PortRouter, conn: Conn) -> None:
    policy = router.egress or EgressPolicy()
    limits = ctx.store.current.limits
    start = time.perf_counter()
    try:
        data = await _read_head(conn, limits.max_header_bytes, limits.header_timeout_s)
        if data is None:
            return
        try:
            head = parse_head(data, limits.max_headers)
        except BadRequest:
            await conn.send_all(simple_response(400, b"malformed proxy request\n", close=True))
            return
        if policy.auth is not None and not await _authorized(policy, head, conn):
            return
        if head.method == "CONNECT":
            await _tunnel(ctx, policy, head, conn, start)
        else:
            await _forward(ctx, policy, head, conn, start)
    except ConnectionLost:
        pass
    finally:
        conn.close()


async def _read_head(conn: Conn, limit: int, timeout_s: float) -> bytes | None:
    data = b""
    with trio.move_on_after(timeout_s):
        while b"\r\n\r\n" not in data:
            if len(data) > limit:
                await conn.send_all(simple_response(431, b"request head too large\n", close=True))
                return None
            chunk = await conn.recv()
            if not chunk:
                return None
            data += chunk
        return data
    return None


async def _authorized(policy: EgressPolicy, head: Head, conn: Conn) -> bool:
    """Proxy-Authorization checked as basic auth against the policy's users."""
    assert policy.auth is not None
    given = head.header(b"proxy-authorization")
    x = Exchange(head.method, "", head.target, "", [(b"authorization", given)] if given else [],
                 "")  # fmt: skip
    verdict = policy.auth.on_request(x)
    if verdict is not None and not isinstance(verdict, LocalReply):
        verdict = await verdict
    if verdict is None:
        return True
    challenge = b'Basic realm="%b"' % policy.name.encode()
    await conn.send_all(simple_response(407, b"proxy authentication required\n", close=True,
                                        headers=[(b"proxy-authenticate", challenge)]))  # fmt: skip
    return False


async def _destination(
    policy: EgressPolicy, host: str, port: int
) -> tuple[str | None, str]:  # fmt: skip
    """The address to connect to when the policy allows `host:port`, and why not when not."""
    try:
        ipaddress.ip_address(host)
        addresses: tuple[str, ...] = (host,)
    except ValueError:
        try:
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            return None, f"cannot resolve {host}: {exc.strerror or exc}"
        addresses = tuple(dict.fromkeys(str(i[4][0]) for i in infos))
    if not policy.allows(host, port, addresses):
        return None, "denied"
    return addresses[0] if addresses else host, ""


async def _open(
    policy: EgressPolicy, host: str, port: int, conn: Conn
) -> tuple[Conn | None, int, str]:
    """A connection to `host:port` when the policy allows it and it answers, (it, 200, "");
    else the client is answered and (None, status, why)."""
    address, why = await _destination(policy, host, port)
    if address is None:
        if why == "denied":
            text = b"destination not allowed by the egress policy\n"
            await conn.send_all(simple_response(403, text, close=True))
            return None, 403, "denied"
        await conn.send_all(simple_response(502, why.encode("latin-1", "replace") + b"\n",
                                            close=True))  # fmt: skip
        return None, 502, "resolve_failed"
    try:
        return await connect_within(address, port, CONNECT_TIMEOUT_S), 200, ""
    except UpstreamConnectError as exc:
        await conn.send_all(simple_response(502, str(exc).encode() + b"\n", close=True))
        return None, 502, "connect_failed"


def _split_authority(authority: str, default_port: int) -> tuple[str, int] | None:
    """(host, port) of `host`, `host:port`, `[v6]` or `[v6]:port`; None when malformed
    (a host that is neither a DNS name nor an IP literal among them)."""
    if authority.startswith("["):
        end = authority.find("]")
        rest = authority[end + 1 :] if end > 0 else "x"
        if rest and not rest.startswith(":"):
            return None
        host, port = authority[1:end], rest[1:]
        if not _is_ipv6(host):
            return None
    elif authority.count(":") <= 1:
        host, _, port = authority.partition(":")
        if not _DNS_NAME.fullmatch(host):
            return None
    else:
        return None
    if port and not port.isdigit():
        return None
    number = int(port) if port else default_port
    return (host.lower(), number) if 0 <= number < 65536 else None


async def _tunnel(
    ctx: ProxyContext, policy: EgressPolicy, head: Head, conn: Conn, start: float
) -> None:
    target = _split_authority(head.target, 0)
    if target is None or target[1] == 0:
        await conn.send_all(simple_response(400, b"CONNECT needs host:port\n", close=True))
        return
    host, port = target
    counts = Counts()
    status, result = 502, "connect_failed"
    try:
        upstream, status, result = await _open(policy, host, port, conn)
        if upstream is None:
            return
        await conn.send_all(ESTABLISHED)
        result = await relay_tracked(ctx, conn, upstream, head.body, counts)
    finally:
        _log(ctx, conn, head, f"{host}:{port}", status, result, counts, start)


async def _forward(
    ctx: ProxyContext, policy: EgressPolicy, head: Head, conn: Conn, start: float
) -> None:
    counts = Counts()
    status, result, upstream_name = 400, "bad_request", ""
    try:
        if not head.target.startswith("http://"):
            text = b"send absolute-form requests (http://host/path), or CONNECT for https\n"
            await conn.send_all(simple_response(400, text, close=True))
            return
        rest = head.target[len("http://") :].partition("#")[0]
        end = next((i for i, c in enumerate(rest) if c in "/?"), len(rest))
        authority = rest[:end].rpartition("@")[2]  # no userinfo
        origin_form = rest[end:] if rest[end:].startswith("/") else "/" + rest[end:]
        target = _split_authority(authority, 80)
        if target is None:
            await conn.send_all(simple_response(400, b"bad target\n", close=True))
            return
        host, port = target
        upstream_name = f"{host}:{port}"
        if head.header(b"transfer-encoding") is not None:
            status, result = 411, "chunked_body"
            await conn.send_all(simple_response(411, b"send a Content-Length\n", close=True))
            return
        length_text = head.header(b"content-length") or b"0"
        if not length_text.isdigit():
            await conn.send_all(simple_response(400, b"bad Content-Length\n", close=True))
            return
        upstream, status, result = await _open(policy, host, port, conn)
        if upstream is None:
            return
        # RFC 9112 §3.2.1: origin form ("/" when the URI has no path); §3.2.2: the
        # target's authority is the Host, whatever the client said
        lines = [f"{head.method} {origin_form} HTTP/1.1".encode("latin-1")]
        lines.append(b"Host: " + authority.encode("latin-1"))
        lines += [n + b": " + v for n, v in head.headers
                  if n.lower() not in HOP_BY_HOP and n.lower() != b"host"]  # fmt: skip
        lines.append(b"Connection: close")
        first = b"\r\n".join(lines) + b"\r\n\r\n"
        length = int(length_text)
        body = head.body[:length]
        result = await _exchange(conn, upstream, first + body, length - len(body), counts)
    finally:
        _log(ctx, conn, head, upstream_name, status, result, counts, start)


async def _exchange(
    conn: Conn, upstream: Conn, first: bytes, remaining: int, counts: Counts
) -> str:
    """The request (the rest of its body read from the client: only as much as its
    Content-Length says, never bytes past it), then the origin's answer until it closes."""
    try:
        await upstream.send_all(first)
        counts.up += len(first)
        while remaining > 0:
            chunk = await conn.recv()
            if not chunk:
                return "client_closed"
            chunk = chunk[:remaining]
            remaining -= len(chunk)
            await upstream.send_all(chunk)
            counts.up += len(chunk)
        while True:  # the answer, until the origin closes (Connection: close)
            with trio.move_on_after(ANSWER_IDLE_S):
                chunk = await upstream.recv()
                if not chunk:
                    return "closed"
                await conn.send_all(chunk)
                counts.down += len(chunk)
                continue
            return "idle_timeout"
    finally:
        upstream.close()


def _log(
    ctx: ProxyContext, conn: Conn, head: Head, upstream: str, status: int, result: str,
    counts: Counts, start: float,
) -> None:  # fmt: skip
    duration = time.perf_counter() - start
    record_tunnel(ctx, ROUTE, upstream, result, counts, duration)
    ctx.access_log.record(
        start=time.time() - duration, duration_s=duration,
        downstream=conn.peer[0] if conn.peer else "-", method=head.method or "-",
        authority=upstream, path=head.target, protocol="HTTP/1.1", status=status,
        bytes_in=counts.up, bytes_out=counts.down, route=ROUTE, upstream=upstream,
        request_id="", detail=result if status >= 400 or result != "closed" else "",
    )  # fmt: skip
