"""Active health checks: each endpoint of a cluster probed on an interval.

The pure part, `Verdict`, turns check results into healthy/unhealthy with thresholds (N
failures in a row make an endpoint unhealthy, M passes make it healthy again). The shell,
`run_checks`, probes every endpoint of one cluster concurrently each interval, the way the
data path reaches it (so in the mesh a check goes over mTLS to the peer's sidecar): a TCP
connect, or an HTTP GET of the path over HTTP/1.1 or HTTP/2 per the cluster's protocol,
passing on an expected status within the timeout. New endpoints start healthy (Consul and
the control plane only list ready instances); a check that fails takes them out.
"""

from __future__ import annotations

import logging
import time

import trio

from sidecar.config.model import HealthCheckPolicy
from sidecar.errors import UpstreamError, WeftError
from sidecar.protocol.response import ResponseHead, ResponseParser, feed_response
from sidecar.transport.io import Conn, ConnectionLost
from sidecar.upstream.balance import EndpointStats
from sidecar.upstream.cluster import Cluster
from sidecar.upstream.h2client import H2ClientConnection, Response

log = logging.getLogger("weft.health")


class Verdict:
    """Consecutive results against the thresholds (pure)."""

    __slots__ = ("healthy", "streak")

    def __init__(self) -> None:
        self.healthy = True
        self.streak = 0  # results in a row that disagree with `healthy`

    def observe(self, passed: bool, policy: HealthCheckPolicy) -> bool:
        """Count one result; True when the verdict changed."""
        if passed == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (policy.healthy_threshold if passed else policy.unhealthy_threshold):
            return False
        self.healthy = passed
        self.streak = 0
        return True


async def probe(cluster: Cluster, address: str, port: int, policy: HealthCheckPolicy) -> str:
    """One check of one endpoint: "" when it passed, else why not."""
    spec = cluster.spec
    with trio.move_on_after(policy.timeout_s):
        try:
            conn = await cluster.pools.connect(address, port, policy.timeout_s)
        except (UpstreamError, OSError) as failed:
            return str(failed)
        try:
            if policy.type == "TCP":
                return ""
            host = spec.service.encode()
            if spec.protocol in ("HTTP2", "GRPC"):
                status = await _h2_status(conn, host, policy.path.encode())
            else:
                status = await _h1_status(conn, host, policy.path.encode())
        except (ConnectionLost, WeftError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        if status in policy.expected_statuses:
            return ""
        return f"status {status}"
    return f"no answer within {policy.timeout_s:g}s"


async def _h1_status(conn: Conn, host: bytes, path: bytes) -> int:
    request = b"GET %b HTTP/1.1\r\nhost: %b\r\nuser-agent: weft-health\r\nconnection: close\r\n\r\n"
    await conn.send_all(request % (path, host))
    parser = ResponseParser()
    parser.start(head_request=False)
    while True:
        feed_response(parser, await conn.recv())
        for ev in parser.events:
            if isinstance(ev, ResponseHead):
                return ev.status


async def _h2_status(conn: Conn, host: bytes, path: bytes) -> int:
    client = H2ClientConnection(conn)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        headers = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", host),
                   (b":path", path), (b"user-agent", b"weft-health")]  # fmt: skip
        stream = client.open(headers, end_stream=True)
        try:
            while True:
                ev = await stream.next_event()
                if isinstance(ev, Response):
                    return ev.status
        finally:
            stream.cancel()
            client.close()
            nursery.cancel_scope.cancel()


async def run_checks(cluster: Cluster) -> None:
    """Check the cluster's endpoints every interval until cancelled (the cluster's policy
    and endpoints are read afresh each round, so updates apply at the next round)."""
    verdicts: dict[object, Verdict] = {}
    while True:
        policy = cluster.spec.health_check
        if policy is None:
            return
        stats = list(cluster.stats)
        verdicts = {s.endpoint: verdicts.get(s.endpoint) or Verdict() for s in stats}
        async with trio.open_nursery() as nursery:
            for s in stats:
                nursery.start_soon(_check_one, cluster, s, verdicts[s.endpoint], policy)
        await trio.sleep(policy.interval_s)


async def _check_one(
    cluster: Cluster, s: EndpointStats, verdict: Verdict, policy: HealthCheckPolicy
) -> None:
    e = s.endpoint
    why = await probe(cluster, e.address, e.port, policy)
    now = time.perf_counter()
    changed = verdict.observe(not why, policy)
    if changed:
        s.healthy = verdict.healthy
        if verdict.healthy:
            log.info("cluster %s: endpoint %s passes its health checks again", cluster.spec.name,
                     e.key)  # fmt: skip
        else:
            log.warning("cluster %s: endpoint %s failed %d health checks (%s): out of rotation",
                        cluster.spec.name, e.key, policy.unhealthy_threshold, why)  # fmt: skip
    if not why and s.outlier.until and now >= s.outlier.until and cluster.spec.outlier:
        s.outlier.close(cluster.spec.outlier, now)  # its ejection is over and it passed
        changed = True
        log.info("cluster %s: endpoint %s back after its ejection", cluster.spec.name, e.key)
    if changed:
        cluster.refresh(now)
