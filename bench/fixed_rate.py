"""A constant-rate HTTP/1.1 load: latency at a fixed request rate, in microseconds.

    .venv/bin/python -m bench.fixed_rate PORT [--rate 2000] [--seconds 10] [--connections 32]

Request i is due at start + i / rate and goes out on a free keep-alive connection. Its
latency runs from when it is sent; but when it was due while every connection was busy
(the proxy stalled), from when it was due, so a stall is charged for the requests that
queued behind it (no coordinated omission, as in wrk2). Sending late for the client's own
reasons (epoll's millisecond timeouts) is not charged to the proxy. autocannon's `--overallRate` was the first choice; it reports whole milliseconds,
and the hop latencies compared here are fractions of one. Prints one JSON object: the
rate achieved and the p50, p90, p99 and p99.9 latencies in ms.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
from collections import deque

CRLF = b"\r\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n\r\n"


def run(port: int, rate: float, seconds: float, connections: int) -> dict[str, float]:
    sel = selectors.DefaultSelector()
    free: deque[socket.socket] = deque()
    due: dict[socket.socket, float] = {}  # in flight: when each was due
    buf: dict[socket.socket, bytes] = {}
    for _ in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        free.append(s)
        buf[s] = b""
    total = int(rate * seconds)
    interval = 1.0 / rate
    latencies: list[float] = []
    start = time.perf_counter() + 0.05
    sent = 0
    starved = False  # a request came due while every connection was busy
    while len(latencies) < total:
        now = time.perf_counter()
        while sent < total and start + sent * interval <= now:
            if not free:
                starved = True
                break
            s = free.popleft()
            due[s] = start + sent * interval if starved else time.perf_counter()
            s.send(REQUEST)
            sent += 1
        else:
            starved = False
        wait = start + sent * interval - time.perf_counter() if sent < total and free else 0.05
        for key, _ in sel.select(timeout=max(0.0, wait)):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            data = s.recv(65536)
            if not data:
                raise SystemExit("bench: the proxy closed a connection")
            b = buf[s] + data
            end = b.find(b"\r\n\r\n")
            if end == -1:
                buf[s] = b
                continue
            length = int(b[:end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(b) < end + 4 + length:
                buf[s] = b
                continue
            if not b.startswith(b"HTTP/1.1 200 "):
                raise SystemExit(f"bench: the proxy answered {b.split(CRLF, 1)[0]!r}")
            buf[s] = b[end + 4 + length :]
            latencies.append(time.perf_counter() - due.pop(s))
            free.append(s)
    elapsed = time.perf_counter() - start
    for s in buf:
        s.close()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {"rate": total / elapsed, "p50": pct(50), "p90": pct(90), "p99": pct(99),
            "p99.9": pct(99.9)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    print(json.dumps(run(args.port, args.rate, args.seconds, args.connections)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
