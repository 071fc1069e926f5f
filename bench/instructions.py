"""Instructions per proxied request, counted by callgrind: a repeatable meter for A/B work.

Wall-clock benchmarks on this machine move by ±30% between runs; instruction counts of the
same code and inputs do not. This runs Weft under `valgrind --tool=callgrind` twice, with
N/4 and with N requests sent by a small client over 32 keep-alive connections to an nginx
backend, and prints the difference divided by 3N/4 (so start-up and connection set-up, the
same in both runs, drop out). It counts user-space instructions only (the kernel's share of
send/recv is not in it).

    .venv/bin/python -m bench.instructions [--requests 3000] [--access-log off] [--target mtls]
        [--trace] [--policies jwt,ratelimit,apikey]

`--target edge` (default) measures `meshctl edge`; `--target h2c` the same edge driven by
h2load over cleartext HTTP/2 (4 connections x 8 streams; requires h2load); `--target
mesh-h2` the sidecar pair of bench/mesh_h2.py, HTTP/2 on every hop (requires nghttpd); `--target mtls` the sidecar pair of the
mTLS hop (both sidecars under callgrind, their counts added; the control plane is not).
`--trace` turns tracing on at 100% (to bench/otlp_sink.py); the span exporter runs in a child
process that callgrind does not follow, so this counts what tracing costs the data path.
`--policies` puts edge policies (bench/policies.py) on the benchmark route, and the fields
that pass them on every request.
"""

from __future__ import annotations

import argparse
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import mesh_h2, mtls
from bench.policies import policies
from bench.run import OTLP_SINK, PORTS, _configs, _wait_port, _weft_config, require

CRLF = b"\r\n"
REQUEST = b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"


def drive(port: int, total: int, connections: int = 32, request: bytes = REQUEST) -> None:
    """Send exactly `total` requests, each connection one at a time, and read every answer."""
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}
    sent = done = 0
    for _ in range(min(connections, total)):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
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
                if not buf.startswith(b"HTTP/1.1 200 "):  # a refusal is not what is measured
                    raise SystemExit(f"bench: the proxy answered {buf[: buf.find(CRLF)]!r}")
                length = int(buf[:end].lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buf) < end + 4 + length:
                    break
                buf = buf[end + 4 + length :]
                done += 1
                if sent < total:
                    s.sendall(request)
                    sent += 1
            pending[s] = buf
    for s in pending:
        s.close()


def drive_h2(port: int, total: int, path: str = "/api/x") -> None:
    """Send exactly `total` HTTP/2 requests with h2load (prior knowledge, 4 connections x 8
    streams, as bench.run's h2c scenario)."""
    cmd = ["h2load", "-n", str(total), "-c", "4", "-m", "8", f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    if f"{total} succeeded" not in out or f"{total} 2xx" not in out:
        raise SystemExit(f"bench: h2load did not complete:\n{out}")


def _summary(out: Path) -> int:
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit("bench: no callgrind summary")


def _measure(
    cmds: list[tuple[list[str], int]], port: int, requests: int, tmp: Path,
    request: bytes = REQUEST, h2: bool = False,
) -> int:  # fmt: skip
    """Start each command under callgrind (waiting for its port), send `requests` to `port`,
    stop them all; their instruction counts, added."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i, (cmd, ready_port) in enumerate(cmds):
            out = tmp / f"callgrind-{i}.out"
            grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]
            proc = subprocess.Popen(grind, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append((proc, out))
            _wait_port(ready_port, timeout=180)
        if h2:
            drive_h2(port, requests, "/x" if port == mesh_h2.P["weft"] else "/api/x")
        else:
            drive(port, requests, request=request)
    finally:
        for proc, _ in reversed(procs):
            proc.send_signal(signal.SIGINT)
            proc.wait(120)
    return sum(_summary(out) for _, out in procs)


def edge(tmp: Path, access_log: str, trace: list[str]) -> tuple[list[tuple[list[str], int]], int]:
    cmd = [sys.executable, "-m", "sidecar", "edge", "-f", str(tmp / "weft.yaml"),
           "--admin-port", "18186", "--access-log", access_log, "--log-level", "warning",
           *trace]  # fmt: skip
    return [(cmd, PORTS["weft"])], PORTS["weft"]


def pair(tmp: Path, access_log: str, trace: list[str]) -> tuple[list[tuple[list[str], int]], int]:
    sidecars = mtls._weft(tmp, "weft", *trace)
    log = [] if access_log == "on" else ["--access-log", "off"]
    orders, web = ([*cmd, *log] for cmd in sidecars)
    return [(orders, mtls.P["weft_in"]), (web, mtls.P["weft"])], mtls.P["weft"]


def _mesh(
    target: str, tmp: Path, access_log: str, trace: list[str]
) -> tuple[list[tuple[list[str], int]], int]:
    return pair_h2(tmp) if target == "mesh-h2" else pair(tmp, access_log, trace)


def pair_h2(tmp: Path) -> tuple[list[tuple[list[str], int]], int]:
    orders, web = mesh_h2._weft(tmp)
    return [(orders, mesh_h2.P["weft_in"]), (web, mesh_h2.P["weft"])], mesh_h2.P["weft"]


def _keep(tmp: Path, keep: Path | None, run: str) -> None:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for out in tmp.glob("callgrind-*.out"):
            shutil.copy(out, keep / out.name.replace("callgrind", run))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--access-log", default="on", choices=("on", "off"))
    ap.add_argument("--target", default="edge", choices=("edge", "h2c", "mtls", "mesh-h2"))
    ap.add_argument("--trace", action="store_true", help="tracing at 100%% to an OTLP receiver")
    ap.add_argument("--policies", default="", help="edge policies: jwt,ratelimit,apikey")
    ap.add_argument("--keep", type=Path, help="copy both runs' callgrind files here "
                    "(few-*.out, many-*.out: per function, for callgrind_annotate)")  # fmt: skip
    args = ap.parse_args()
    extra_docs, extra_lines = policies(args.policies)
    request = REQUEST[:-2] + extra_lines + b"\r\n"
    h2 = args.target in ("h2c", "mesh-h2")
    require("valgrind", "nginx", *(["h2load"] if h2 else []),
            *(["nghttpd"] if args.target == "mesh-h2" else []))  # fmt: skip
    trace = []
    if args.trace:
        trace = ["--otlp-endpoint", f"http://127.0.0.1:{OTLP_SINK}", "--trace-sampling", "1"]
    with tempfile.TemporaryDirectory(prefix="weft-icount-") as d:
        tmp = Path(d)
        configs = _configs(tmp)
        procs = [subprocess.Popen(configs["backend"], stderr=subprocess.DEVNULL)]
        if args.trace:
            procs.append(subprocess.Popen(configs["sink"], stdout=subprocess.DEVNULL))
        try:
            _wait_port(PORTS["backend"])
            if args.target in ("edge", "h2c"):
                _weft_config(tmp / "weft.yaml", 1)
                with (tmp / "weft.yaml").open("a") as f:
                    f.write("\n" + extra_docs)
                log = str(tmp / "access.log") if args.access_log == "on" else "off"
                cmds, port = edge(tmp, log, trace)
            else:
                mtls._meshctl("ca", "init", "--data-dir", str(tmp / "weft-data"))
                procs.append(subprocess.Popen(mtls.control_plane(tmp), stderr=subprocess.DEVNULL))
                _wait_port(mtls.P["cp"])
                if args.target == "mesh-h2":
                    (tmp / "x").write_bytes(mesh_h2.BODY)
                    procs.append(subprocess.Popen(
                        ["nghttpd", "--no-tls", "-d", str(tmp), "--address", "127.0.0.1",
                         str(mesh_h2.P["backend"])], stdout=subprocess.DEVNULL))  # fmt: skip
                    _wait_port(mesh_h2.P["backend"])
                cmds, port = _mesh(args.target, tmp, args.access_log, trace)
            few = _measure(cmds, port, args.requests // 4, tmp, request, h2)
            _keep(tmp, args.keep, "few")
            if args.target in ("edge", "h2c"):
                cmds, port = edge(tmp, log, trace)
            else:
                cmds, port = _mesh(args.target, tmp, args.access_log, trace)
            many = _measure(cmds, port, args.requests, tmp, request, h2)
            _keep(tmp, args.keep, "many")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(5)
    per = (many - few) / (args.requests - args.requests // 4)
    traced = ", tracing 100%" if args.trace else ""
    traced += f", policies {args.policies}" if args.policies else ""
    print(f"{per:,.0f} instructions per request ({args.target}, access log {args.access_log}"
          f"{traced}; "
          f"{args.requests} requests, {time.strftime('%Y-%m-%d')})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
