"""Scaling over cores: each proxy with one and with two processes or threads, side by side.

    .venv/bin/python -m bench.workers [--rounds 5] [--seconds 5]

Weft `meshctl edge --workers 1|2`, nginx `worker_processes 1|2`, Envoy `--concurrency 1|2`,
each in turn on the same HTTP/1.1 benchmark as bench.run (wrk with 2 threads and 64
connections, an nginx backend answering 100 bytes). Nothing is pinned: the load generator
and the backend share the machine's cores with the proxy, as they would on a host running
the edge beside other work, so no proxy can double; what is compared is each proxy's gain
from its second process against nginx's gain, in the same run (medians of per-round
ratios).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.run import PORTS, Target, _configs, _start, _stop, _wait_port, _weft_cmd, require

ROUNDS_DEFAULT = 5


def _wrk(port: int, seconds: float) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds:g}s", f"http://127.0.0.1:{port}/api/x"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"bench: errors against port {port}:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def _targets(tmp: Path, cmds: dict[str, list[str]]) -> list[Target]:
    out = []
    for n in (1, 2):
        conf = tmp / f"nginx-proxy-{n}.conf"
        conf.write_text((tmp / "nginx-proxy.conf").read_text().replace(
            "worker_processes 1;", f"worker_processes {n};").replace("np.pid", f"np{n}.pid"))  # fmt: skip
        out.append(Target(f"nginx x{n}", PORTS["nginx"], ["nginx", "-c", str(conf)]))
        if Path(cmds["envoy"][0]).exists():
            envoy = [*cmds["envoy"][:4], str(n), *cmds["envoy"][5:]]
            out.append(Target(f"envoy x{n}", PORTS["envoy"], envoy))
        weft = [*_weft_cmd(tmp / "weft.yaml", tmp / "weft-access.log"), "--workers", str(n)]
        out.append(Target(f"weft x{n}", PORTS["weft"], weft))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    require("wrk", "nginx")
    rps: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="weft-bench-workers-") as d:
        tmp = Path(d)
        cmds = _configs(tmp)
        backend = Target("backend", PORTS["backend"], cmds["backend"])
        targets = _targets(tmp, cmds)
        try:
            _start(backend, "0-1")
            for r in range(args.rounds):
                for t in targets:  # one at a time: they share ports and cores
                    _start(t, "0-1")
                    _wait_port(t.port)
                    _wrk(t.port, 1)  # warm-up: pools, workers' first connections
                    rps.setdefault(t.name, []).append(_wrk(t.port, args.seconds))
                    _stop(t)
                print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{name} {v[-1]:,.0f}" for name, v in rps.items()), flush=True)  # fmt: skip
        finally:
            _stop(backend)
    print("\n| proxy | RPS x1 | RPS x2 | gain (x2 / x1) | gain vs nginx's |")
    print("| --- | ---: | ---: | ---: | ---: |")
    gains = {}
    for proxy in ("nginx", "envoy", "weft"):
        if f"{proxy} x1" not in rps:
            continue
        one, two = rps[f"{proxy} x1"], rps[f"{proxy} x2"]
        gains[proxy] = [b / a for a, b in zip(one, two, strict=True)]
    for proxy, g in gains.items():
        versus = statistics.median(a / b for a, b in zip(g, gains["nginx"], strict=True))
        print(f"| {proxy} | {statistics.median(rps[proxy + ' x1']):,.0f} | "
              f"{statistics.median(rps[proxy + ' x2']):,.0f} | {statistics.median(g):.2f} | "
              f"{versus:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
