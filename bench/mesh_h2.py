"""HTTP/2 end to end through the mesh hop, as gRPC flows: h2load → proxy → mutual TLS (h2)
→ proxy → an HTTP/2 backend (nghttpd, cleartext), for Weft and Envoy.

Weft: the `orders` sidecar speaks HTTP/2 to its app (`--protocol HTTP2`); the `web` sidecar
reaches it through `--upstream orders:PORT`, learning from the control plane that orders
speaks HTTP/2, so the hop between the sidecars is HTTP/2 over mutual TLS too. Envoy: one
process with both ends, HTTP/2 on every leg (ALPN h2 on the TLS hop), certificates from the
same CA. nginx has no HTTP/2 upstreams besides grpc_pass, so it is not in this row. h2load
(4 connections x 8 streams) and nghttpd share the load core; the pair runs on the proxy core.

    .venv/bin/python -m bench.mesh_h2 [--rounds 5] [--seconds 5]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import mtls
from bench.run import (
    LOAD_CORE,
    PROXY_CORE,
    _envoy_binary,
    _h2load,
    _proc_stat,
    _taskset,
    _wait_port,
    require,
)
from ca import keystore

P = {"weft": 18360, "weft_in": 18361, "envoy": 18370, "envoy_in": 18371, "backend": 18372}
WEB_IN, ORDERS_ADMIN, WEB_ADMIN, ORDERS_OUT = 18362, 18363, 18364, 18365
BODY = b"x" * 100


def _weft(tmp: Path) -> list[list[str]]:
    data = tmp / "weft-data"
    common = ["--control-plane", f"127.0.0.1:{mtls.P['cp']}", "--ca-file",
              str(data / "ca" / "root.pem"), "--inbound-address", "127.0.0.1",
              "--log-level", "warning"]  # fmt: skip
    cmds = []
    for service, inbound, admin, extra in (
        ("orders", P["weft_in"], ORDERS_ADMIN,
         ["--protocol", "HTTP2", "--app-port", str(P["backend"]),
          "--outbound-port", str(ORDERS_OUT)]),
        ("web", WEB_IN, WEB_ADMIN, ["--app-port", "1", "--upstream", f"orders:{P['weft']}"]),
    ):  # fmt: skip
        token = mtls._meshctl("token", "create", service, "--data-dir", str(data))
        cmds.append([sys.executable, "-m", "mesh_ctl", "sidecar", "--service", service,
                     "--token", token.strip().splitlines()[-1], "--inbound-port", str(inbound),
                     "--admin-port", str(admin), *extra, *common])  # fmt: skip
    return cmds


def run(tmp: Path, rounds: int, seconds: float, envoy: str | None) -> str:
    data = tmp / "weft-data"
    mtls._meshctl("ca", "init", "--data-dir", str(data))
    ca = keystore.load(data, datetime.datetime.now(datetime.UTC))
    files = mtls._files(tmp, ca)
    root = tmp / "h2-root"
    root.mkdir()
    (root / "x").write_bytes(BODY)
    pairs: dict[str, list[list[str]]] = {"weft": _weft(tmp)}
    if envoy:
        ports = (P["envoy"], P["envoy_in"], P["backend"])
        pairs["envoy"] = [mtls._envoy(tmp, files, envoy, ports=ports, h2=True, name="envoy-h2",
                                      base_id=8)]  # fmt: skip
    helpers = [
        subprocess.Popen(_taskset(LOAD_CORE, mtls.control_plane(tmp)), stderr=subprocess.DEVNULL),
        subprocess.Popen(_taskset(LOAD_CORE, ["nghttpd", "--no-tls", "-d", str(root),
                                              "--address", "127.0.0.1", str(P["backend"])]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    procs: dict[str, list[subprocess.Popen[bytes]]] = {}
    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in pairs}
    try:
        _wait_port(mtls.P["cp"])
        _wait_port(P["backend"])
        for name, cmds in pairs.items():
            procs[name] = []
            for i, cmd in enumerate(cmds):
                procs[name].append(subprocess.Popen(_taskset(PROXY_CORE, cmd),
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
                _wait_port(P[f"{name}_in"] if i == 0 and len(cmds) > 1 else P[name], timeout=60)
            _wait_port(P[name], timeout=60)
            _h2load(P[name], 2, 32, path="/x")  # warm-up: pools, TLS sessions
        for _ in range(rounds):
            for name in pairs:
                before = sum(_proc_stat(p.pid)[0] for p in procs[name])
                rps, _mean, _max, total = _h2load(P[name], seconds, 32, path="/x")
                cpu = sum(_proc_stat(p.pid)[0] for p in procs[name]) - before
                samples[name].append((rps, cpu / total * 1e6))
    finally:
        for p in [*(p for plist in procs.values() for p in plist), *helpers]:
            p.terminate()
            p.wait(10)
    lines = [
        f"HTTP/2 end to end (h2load → pair over mutual TLS → nghttpd), medians of {rounds}:",
        "",
        "| pair | RPS | CPU µs/req (both ends) | vs Envoy pair |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, s in samples.items():
        ratio = "—"
        if "envoy" in samples and name != "envoy":
            per_round = [a[0] / b[0] for a, b in zip(s, samples["envoy"], strict=True)]
            ratio = f"{statistics.median(per_round):.2f}×"
        lines.append(f"| {name} | {statistics.median(x[0] for x in s):,.0f} "
                     f"| {statistics.median(x[1] for x in s):.1f} | {ratio} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    require("h2load", "nghttpd")
    with tempfile.TemporaryDirectory(prefix="weft-bench-h2-") as d:
        print(run(Path(d), args.rounds, args.seconds, _envoy_binary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
