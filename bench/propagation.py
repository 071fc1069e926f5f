"""Config propagation: from `meshctl shift` to the last sidecar's ACK.

A real `meshctl server` process (alone on core 1) and N real sidecar config clients
(`sidecar/config/watch.py`: gRPC over the sidecar's own HTTP/2 and TLS, session-token hello)
in one trio process on core 0, ACKing each snapshot as it arrives; what a sidecar does
before its ACK (compose, parse and compile the snapshot into its outbound configuration) is
timed separately, since real sidecars do it in parallel. Half register as orders v1,
half as v2; the caller alternates `shift orders v1=90 v2=10` and `v1=10 v2=90` and times each
call, which answers only once every registered instance ACKed the new generation.

    .venv/bin/python -m bench.propagation [--sidecars 100] [--shifts 20] [--rounds 3]

No other mesh runs here to compare with side by side; Istio publishes a p90 of 1.5-4.5 s for
pushes at large scale (and that is its target to beat).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.run import LOAD_CORE, PROXY_CORE, _taskset, _wait_port
from ca import keystore, tokens
from ca.spiffe import SpiffeId
from sidecar.config.compile import compile_snapshot
from sidecar.config.mesh import outbound_config
from sidecar.config.model import ListenerKey
from sidecar.config.parse import Document, load_documents
from sidecar.config.watch import ConfigWatch
from tests.support.net import free_port

OUT = ListenerKey(address="127.0.0.1", port=15001)


def _compile(resources: list[dict[str, Any]]) -> None:
    """What a sidecar does with a snapshot before it ACKs (timed separately: here all the
    clients share one core, where real sidecars compile in parallel, each on its own)."""
    docs = outbound_config(resources, OUT, "default").documents
    compile_snapshot(load_documents(Document(d, f"d{i}") for i, d in enumerate(docs)), version=1)


async def run(sidecars: int, shifts: int) -> tuple[list[float], float]:
    from mesh_ctl.client import AdminClient

    with tempfile.TemporaryDirectory(prefix="weft-propagation-") as d:
        data = Path(d)
        now = datetime.datetime.now(datetime.UTC)
        keystore.init(data, "weft.local", now)
        port = free_port()
        cmd = [sys.executable, "-m", "mesh_ctl", "--log-level", "warning", "server",
               "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"]  # fmt: skip
        server = subprocess.Popen(_taskset(PROXY_CORE, cmd))
        _wait_port(port)
        trust = (data / "ca" / "root.pem").read_bytes()
        key = keystore.token_key(data)
        session = tokens.create(key, SpiffeId("weft.local", "default", "orders"), now=now,
                                ttl=datetime.timedelta(hours=1), use="session")  # fmt: skip
        latest: list[list[dict[str, Any]]] = [[]]  # the last snapshot any client got

        async def ack(version: int, resources: list[dict[str, Any]]) -> str | None:
            latest[0] = resources
            return None

        watches = []
        for i in range(sidecars):
            instance = {"id": f"w{i}", "namespace": "default", "service": "orders",
                        "version": "v1" if i % 2 else "v2", "address": "127.0.0.1", "port": 20000 + i}  # fmt: skip
            hello = {"hello": {"session": session, "instance": instance}}
            watches.append(ConfigWatch(f"127.0.0.1:{port}", lambda: trust, lambda h=hello: h, ack))
        times: list[float] = []
        try:
            async with trio.open_nursery() as nursery:
                for w in watches:
                    nursery.start_soon(w.run)
                with trio.fail_after(120):
                    while not all(w.connected for w in watches):
                        await trio.sleep(0.1)  # waiting for N processes' worth of handshakes
                client = AdminClient(
                    f"127.0.0.1:{port}", trust, (data / "admin.token").read_text().strip()
                )

                def shift(k: int) -> float:
                    weights = {"v1": 90, "v2": 10} if k % 2 else {"v1": 10, "v2": 90}
                    t0 = time.perf_counter()
                    reply = client.call(
                        "Shift", {"service": "orders", "weights": weights, "timeout_s": 30}
                    )
                    took = time.perf_counter() - t0
                    if reply["lagging"] or reply["sidecars"] != sidecars:
                        raise SystemExit(f"bench: shift {k} not applied everywhere: {reply}")
                    return took

                for k in range(shifts + 1):
                    took = await trio.to_thread.run_sync(shift, k)
                    if k:  # the first one creates the route: not counted
                        times.append(took)
                t0 = time.perf_counter()
                for _ in range(20):
                    _compile(latest[0])
                compile_ms = (time.perf_counter() - t0) / 20 * 1000
                client.close()
                nursery.cancel_scope.cancel()
        finally:
            server.terminate()
            server.wait(10)
    return times, compile_ms


def _row(times: list[float], compile_ms: float) -> list[float]:
    """p50, p90, p99 and max of one round's shifts (ms), and the compile time."""
    times = sorted(times)

    def p(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] * 1000

    return [statistics.median(times) * 1000, p(0.9), p(0.99), times[-1] * 1000, compile_ms]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sidecars", type=int, default=100)
    ap.add_argument("--shifts", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    print(f"{args.sidecars} sidecars, {args.shifts} shifts a round, shift → last ACK")
    print("| round | p50 ms | p90 ms | p99 ms | max ms | + one sidecar's compile ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for r in range(args.rounds):
        rows.append(_row(*trio.run(run, args.sidecars, args.shifts)))
        print(
            f"| {r + 1} | "
            + " | ".join(f"{v:.0f}" for v in rows[-1][:4])
            + f" | {rows[-1][4]:.1f} |"
        )
    med = [statistics.median(col) for col in zip(*rows, strict=True)]
    print("| median | " + " | ".join(f"{v:.0f}" for v in med[:4]) + f" | {med[4]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
