"""The proxy's own requests to a cluster (external authorization): one request with its
body in memory, and the whole answer back, bounded.

They go the way forwarded requests go — the cluster's endpoints and balancing, its
connector (mTLS in a mesh), its keep-alive pools for HTTP/1.1 and multiplexed connections
for HTTP/2 — so an authorization service is configured, discovered and secured like any
backend. HTTP/1.1 answers are parsed by h11.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h11
import trio

from sidecar.errors import UpstreamConnectError, UpstreamProtocolError
from sidecar.transport.io import ConnectionLost
from sidecar.upstream.h2client import Response, Trailers

if TYPE_CHECKING:
    import random

    from sidecar.transport.io import Conn
    from sidecar.upstream.manager import ClusterManager
    from sidecar.upstream.pool import H2Pool

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Answer:
    status: int
    headers: Headers
    body: bytes
    trailers: Headers = field(default_factory=list)


async def call(
    clusters: ClusterManager, nursery: trio.Nursery, rng: random.Random, cluster_name: str,
    method: bytes, target: bytes, authority: bytes, headers: Headers, body: bytes = b"", *,
    http2: bool = False, max_body: int = 64 * 1024,
) -> Answer:  # fmt: skip
    """One request to `cluster_name`; UpstreamError when it cannot be made or answered
    (a body over `max_body` is an error too). The caller bounds the time."""
    cluster = clusters.get(cluster_name)
    stats = cluster.pick(rng, time.perf_counter()) if cluster is not None else None
    if cluster is None or stats is None:
        raise UpstreamConnectError(f"cluster {cluster_name} has no endpoint taking traffic")
    ep, spec = stats.endpoint, cluster.spec
    if http2:
        pool = cluster.pools.multiplexed(ep.key)
        fields = [(b":method", method), (b":scheme", b"http"), (b":path", target),
                  (b":authority", authority), *headers]  # fmt: skip
        return await _h2(pool, nursery, ep.address, ep.port, spec.connect_timeout_s, fields,
                         body, max_body)  # fmt: skip
    pools = cluster.pools
    conn = pools.take(ep.key, time.perf_counter(), spec.idle_timeout_s, check=True)
    if conn is None:
        conn = await pools.connect(ep.address, ep.port, spec.connect_timeout_s)
    h1 = h11.Connection(h11.CLIENT)
    try:
        request = h11.Request(method=method, target=target,
                              headers=[(b"host", authority), *headers,
                                       (b"content-length", b"%d" % len(body))])  # fmt: skip
        out = h1.send(request) or b""
        if body:
            out += h1.send(h11.Data(data=body)) or b""
        await conn.send_all(out + (h1.send(h11.EndOfMessage()) or b""))
        answer = await _h1_answer(conn, h1, max_body)
    except (h11.ProtocolError, ConnectionLost) as exc:
        conn.close()
        raise UpstreamProtocolError(f"{cluster_name}: {exc or type(exc).__name__}") from None
    except BaseException:
        conn.close()
        raise
    if h1.our_state is h11.DONE and h1.their_state is h11.DONE:
        pools.give(ep.key, conn, time.perf_counter())
    else:
        conn.close()
    return answer


async def _h1_answer(conn: Conn, h1: h11.Connection, max_body: int) -> Answer:
    status, headers, body = 0, [], bytearray()
    while True:
        event = h1.next_event()
        if event is h11.NEED_DATA:
            h1.receive_data(await conn.recv())
        elif isinstance(event, h11.Response):
            status, headers = event.status_code, list(event.headers)
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_body:
                raise h11.LocalProtocolError(f"answer body over {max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return Answer(status, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionLost("closed before the answer ended")


async def _h2(
    pool: H2Pool, nursery: trio.Nursery, address: str, port: int, connect_timeout_s: float,
    fields: Headers, body: bytes, max_body: int,
) -> Answer:  # fmt: skip
    client = await pool.connection(nursery, address, port, connect_timeout_s)
    stream = client.open(fields, end_stream=not body)
    try:
        if body:
            await stream.send_data(body, end=True)
        answer = Answer(0, [], b"")
        data = bytearray()
        while True:
            ev = await stream.next_event()
            if isinstance(ev, Response):
                answer.status, answer.headers = ev.status, ev.headers
            elif isinstance(ev, Trailers):
                answer.trailers = ev.headers or []
                answer.body = bytes(data)
                return answer
            else:
                data += ev
                if len(data) > max_body:
                    raise UpstreamProtocolError(f"answer body over {max_body} bytes")
    finally:
        if stream.ended_local and stream.ended_remote:
            stream.close()
        else:
            stream.cancel()
