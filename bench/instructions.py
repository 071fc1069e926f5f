"""Instructions per proxied request, counted by callgrind: a repeatable meter for A/B work.

Wall-clock benchmarks on this machine move by ±30% between runs; instruction counts of the
same code and inputs do not. This runs `meshctl edge` under `valgrind --tool=callgrind`
twice (with 0 and with N requests, sent by a small client over 32 keep-alive connections
to an nginx backend) and prints the difference divided by N. It counts user-space
instructions only (the kernel's share of send/recv is not in it).

    .venv/bin/python -m bench.instructions [--requests 3000] [--access-log off]
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import PORTS, _configs, _wait_port, _weft_config, require

REQUEST = b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def drive(port: int, total: int, connections: int = 32) -> None:
    """Send exactly `total` requests, each connection one at a time, and read every answer."""
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}
    sent = done = 0
    for _ in range(min(connections, total)):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(REQUEST)
        sent += 1
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
    while done < total:
        for key, _ in sel.select(timeout=30):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            data = s.recv(65536)
            if not data:
                raise SystemExit("bench: the proxy closed a connection")
            buf = pending[s] + data
            while (end := buf.find(b"\r\n\r\n")) != -1:
                length = int(buf[:end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buf) < end + 4 + length:
                    break
                buf = buf[end + 4 + length :]
                done += 1
                if sent < total:
                    s.sendall(REQUEST)
                    sent += 1
            pending[s] = buf
    for s in pending:
        s.close()


def count(tmp: Path, requests: int, access_log: str) -> int:
    out = tmp / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
           "-m", "sidecar", "edge", "-f", str(tmp / "weft.yaml"), "--admin-port", "18186",
           "--access-log", access_log, "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(PORTS["weft"], timeout=120)
        drive(PORTS["weft"], requests)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit("bench: no callgrind summary")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--access-log", default="on", choices=("on", "off"))
    args = ap.parse_args()
    require("valgrind", "nginx")
    with tempfile.TemporaryDirectory(prefix="weft-icount-") as d:
        tmp = Path(d)
        backend_cmd = _configs(tmp)["backend"]
        _weft_config(tmp / "weft.yaml", 1)
        log = str(tmp / "access.log") if args.access_log == "on" else "off"
        backend = subprocess.Popen(backend_cmd, stderr=subprocess.DEVNULL)
        try:
            _wait_port(PORTS["backend"])
            base = count(tmp, 0, log)
            loaded = count(tmp, args.requests, log)
        finally:
            backend.terminate()
            backend.wait(5)
    per = (loaded - base) / args.requests
    print(f"{per:,.0f} instructions per request (access log {args.access_log}; "
          f"{args.requests} requests, {time.strftime('%Y-%m-%d')})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
