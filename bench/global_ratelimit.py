"""Accuracy of the global rate limit: two `meshctl edge` processes share one limit of
100 requests per minute in a real redis-server, under concurrent load on both, and we
count what they let through.

    python -m bench.global_ratelimit [--seconds 65] [--limit 100] [--clients 4]

Reports the requests admitted in the first minute (from the first admission), the most
admitted in any sliding minute of the run, and how many were refused. Exact means:
`limit` in the first minute, and never more than `limit` in any minute. Admission times
are Redis's own: the window's sorted set is read every 10 s (an entry lives 60 s), so
the log of every admission is complete, and no client-side latency blurs a window edge.
"""

from __future__ import annotations

import argparse
import bisect
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import trio

from mesh_ctl.ports import free_port
from sidecar.filters.redis_client import RedisClient, RedisTarget

CONFIG = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: api}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{{address: 127.0.0.1, port: {backend}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: api}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: api, port: 80}}]}}]
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: shared}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  rateLimit:
    type: Global
    global:
      rules: [{{limit: {{requests: {limit}, unit: Minute}}}}]
"""


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench: a process exited: {proc.args!r}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {port}")


async def _load(
    ports: list[int], seconds: float, clients: int, redis_port: int
) -> tuple[int, int, dict[bytes, float]]:
    admitted = refused = 0
    log: dict[bytes, float] = {}  # member -> admission time (Redis's clock, seconds)
    start = time.monotonic()
    redis = RedisClient(RedisTarget.parse(f"redis://127.0.0.1:{redis_port}"))

    async def read_log() -> None:
        for key in await redis.command("KEYS", "weft:rl:*"):
            pairs = await redis.command("ZRANGE", key, 0, -1, "WITHSCORES")
            for member, score in zip(pairs[::2], pairs[1::2], strict=True):
                log[member] = float(score) / 1e6

    async def read_logs() -> None:
        while True:  # an entry lives 60 s: reading every 5 s misses none
            await trio.sleep(5)
            await read_log()

    async def client(http: httpx.AsyncClient, port: int) -> None:
        nonlocal admitted, refused
        while time.monotonic() - start < seconds:
            r = await http.get(f"http://127.0.0.1:{port}/")
            if r.status_code == 200:
                admitted += 1
            elif r.status_code == 429:
                refused += 1
            else:
                raise SystemExit(f"bench: unexpected {r.status_code}")

    async with httpx.AsyncClient(timeout=10) as http, trio.open_nursery() as nursery:
        nursery.start_soon(read_logs)
        async with trio.open_nursery() as load:
            for port in ports:
                for _ in range(clients):
                    load.start_soon(client, http, port)
        await read_log()
        nursery.cancel_scope.cancel()
    return admitted, refused, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=65.0)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients per edge")
    args = parser.parse_args()
    redis = shutil.which("redis-server")
    if redis is None:
        raise SystemExit("bench: redis-server is not installed (make bench installs it as root)")
    tmp = Path(tempfile.mkdtemp(prefix="weft-rl-"))
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    rport = free_port()
    procs = [subprocess.Popen([redis, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp)],
                              stdout=subprocess.DEVNULL)]  # fmt: skip
    try:
        _wait_port(rport, procs[0])
        ports = []
        for i in range(2):
            port, admin = free_port(), free_port()
            path = tmp / f"edge{i}.yaml"
            path.write_text(CONFIG.format(port=port, backend=backend.server_address[1],
                                          limit=args.limit))  # fmt: skip
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "mesh_ctl", "edge", "-f", str(path), "--admin-port",
                 str(admin), "--access-log", "off", "--ratelimit-redis",
                 f"redis://127.0.0.1:{rport}"], stdout=subprocess.DEVNULL))  # fmt: skip
            _wait_port(port, procs[-1])
            ports.append(port)
        admitted, refused, log = trio.run(_load, ports, args.seconds, args.clients, rport)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        backend.shutdown()
    times = sorted(log.values())
    if not times or len(times) != admitted:
        raise SystemExit(f"bench: {admitted} admitted, {len(times)} in Redis's log")
    first_minute = bisect.bisect_left(times, times[0] + 60.0)
    busiest = max(bisect.bisect_left(times, t + 60.0) - i for i, t in enumerate(times))
    total = admitted + refused
    print(f"global rate limit, {args.limit}/minute shared by 2 edge processes, "
          f"{2 * args.clients} concurrent clients, {args.seconds:g} s:")  # fmt: skip
    print(f"  admitted in the first minute:     {first_minute} (limit {args.limit})")
    print(f"  most admitted in any 60 s window: {busiest}")
    print(f"  admitted in the run:              {admitted}")
    print(f"  refused (429):                    {refused} of {total} requests "
          f"({total / args.seconds:.0f} requests/s)")  # fmt: skip
    return 0 if first_minute == args.limit and busiest <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
