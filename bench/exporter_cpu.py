"""CPU the trace exporter process spends per edge request (two spans), measured alone.

    .venv/bin/python -m bench.exporter_cpu [--frames 60]

Starts bench/otlp_sink.py and `python -m sidecar.observe.exporter`, feeds the exporter
frames of 2,048 edge-like requests exactly as the data plane does (sidecar/observe/tracing.py),
one at a time (each is exported before the next, so nothing is dropped), and divides the
exporter's CPU time (from /proc) by the requests. The first frame warms it up and is not
counted.
"""

from __future__ import annotations

import argparse
import marshal
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

from bench.run import _wait_port
from sidecar.observe.spans import SERVER

SINK_PORT = 18990
PER_FRAME = 2048
ROOT = Path(__file__).resolve().parent.parent


def _record(i: int, now: float) -> tuple[object, ...]:
    """An edge request as the data plane queues it (spans.Finished's fields)."""
    bits = random.getrandbits
    return (SERVER, bits(128), bits(64), 0, bits(64), now + i * 1e-4, 0.0001, 0.0004, "GET",
            "/api/*", "default/api", "http", "127.0.0.1:18184", "/api/x", 200, "api",
            "127.0.0.1:18181", 0, "1.1", "127.0.0.1", "", "", "", -1)  # fmt: skip


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args()
    now = time.time()
    frames = []
    for _ in range(args.frames):
        data = marshal.dumps([_record(i, now) for i in range(PER_FRAME)])
        frames.append(struct.pack(">II", len(data), 2 * PER_FRAME) + data)
    sink = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", str(SINK_PORT)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    exporter = subprocess.Popen(
        [sys.executable, "-m", "sidecar.observe.exporter", "--endpoint",
         f"127.0.0.1:{SINK_PORT}", "--service", "edge"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert exporter.stdin is not None and exporter.stdout is not None
    try:
        _wait_port(SINK_PORT)
        before = 0.0
        for n, frame in enumerate(frames):
            if n == 1:
                before = _cpu_s(exporter.pid)
            exporter.stdin.write(frame)
            exporter.stdin.flush()
            report = exporter.stdout.readline()
            if b"exported" not in report:
                raise SystemExit(f"bench: the exporter reported {report!r}")
        spent = _cpu_s(exporter.pid) - before
    finally:
        exporter.stdin.close()
        exporter.wait(30)
        sink.terminate()
        received = sink.communicate(timeout=30)[0].strip()
    requests = (args.frames - 1) * PER_FRAME
    print(f"{spent / requests * 1e6:.1f} µs exporter CPU per edge request (2 spans); "
          f"{requests} requests, the receiver got {received} spans")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
