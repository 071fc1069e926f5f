"""Config propagation: from `meshctl shift` to the last sidecar's ACK.

A real `meshctl server` process (alone on core 1) and N real sidecar config clients
(`sidecar/config/watch.py`: gRPC over the sidecar's own HTTP/2 and TLS, session-token hello)
spread over `--procs` processes on core 0 (one trio loop each), ACKing each snapshot as it
arrives; what a sidecar does
before its ACK (compose, parse and compile the snapshot into its outbound configuration) is
timed separately, since real sidecars do it in parallel. Half register as orders v1,
half as v2; the caller alternates `shift orders v1=90 v2=10` and `v1=10 v2=90` and times each
call, which answers only once every registered instance ACKed the new generation. Each
round also times the start (every watch connected and current) and a control plane restart
(SIGTERM, a new process on the same data dir: every watch back and current), and counts the
watches that ended on the way (cut, or failing to connect while the control plane is down)
and, of those, the ones the control plane refused with an error status.

    .venv/bin/python -m bench.propagation [--sidecars 100] [--shifts 20] [--rounds 3] [--procs 4]

No other mesh runs here to compare with side by side; Istio publishes a p90 of 1.5-4.5 s for
pushes at large scale (and that is its target to beat).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import multiprocessing
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


def _clients(port: int, trust: bytes, session: str, first: int, count: int, pipe: Any) -> None:
    """A process of `count` simulated sidecars: reports (connected, watches ended, watches
    refused by the control plane) every 0.1 s on `pipe`, and its last snapshot when told
    to stop."""
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    latest: list[list[dict[str, Any]]] = [[]]

    async def ack(version: int, resources: list[dict[str, Any]]) -> str | None:
        latest[0] = resources
        return None

    async def main() -> None:
        watches = []
        for i in range(first, first + count):
            instance = {"id": f"w{i}", "namespace": "default", "service": "orders",
                        "version": "v1" if i % 2 else "v2", "address": "127.0.0.1", "port": 20000 + i}  # fmt: skip
            hello = {"hello": {"session": session, "instance": instance}}
            watches.append(ConfigWatch(f"127.0.0.1:{port}", lambda: trust, lambda h=hello: h, ack))
        async with trio.open_nursery() as nursery:
            for w in watches:
                nursery.start_soon(w.run)
            while not pipe.poll():
                pipe.send((sum(w.connected for w in watches), sum(w.ends for w in watches),
                           sum(w.refused for w in watches)))  # fmt: skip
                await trio.sleep(0.1)
            pipe.send(latest[0])
            nursery.cancel_scope.cancel()

    trio.run(main)


class Fleet:
    """The simulated sidecars, spread over processes (one trio loop each)."""

    def __init__(self, port: int, trust: bytes, session: str, sidecars: int, procs: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes = []
        self.procs = []
        share = -(-sidecars // procs)
        for first in range(0, sidecars, share):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_clients, args=(port, trust, session, first,
                                                      min(share, sidecars - first), there))  # fmt: skip
            proc.start()
            self.pipes.append(here)
            self.procs.append(proc)
        self.state = [(0, 0, 0)] * len(self.pipes)

    def poll(self) -> tuple[int, int, int]:
        """(watches with a snapshot in force, watches ended so far, of those refused by
        the control plane), all processes."""
        for i, pipe in enumerate(self.pipes):
            while pipe.poll():
                self.state[i] = pipe.recv()
        connected, ended, refused = (sum(col) for col in zip(*self.state, strict=True))
        return connected, ended, refused

    def wait_connected(self, sidecars: int, timeout: float) -> float:
        t0 = time.perf_counter()
        while self.poll()[0] < sidecars:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"bench: only {self.poll()[0]} of {sidecars} watches current")
            time.sleep(0.05)
        return time.perf_counter() - t0

    def stop(self) -> list[dict[str, Any]]:
        for pipe in self.pipes:
            pipe.send("stop")
        latest: list[dict[str, Any]] = []
        for pipe, proc in zip(self.pipes, self.procs, strict=True):
            with contextlib.suppress(EOFError):
                while not isinstance(got := pipe.recv(), list):
                    pass
                latest = latest or got
            proc.join(10)
        return latest


def _server(data: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "mesh_ctl", "--log-level", "warning", "server",
           "--data-dir", str(data), "--listen", f"127.0.0.1:{port}", "--http-listen", "off"]  # fmt: skip
    server = subprocess.Popen(_taskset(PROXY_CORE, cmd))
    _wait_port(port)
    return server


def run(sidecars: int, shifts: int, procs: int) -> dict[str, Any]:
    from mesh_ctl.client import AdminClient

    with tempfile.TemporaryDirectory(prefix="weft-propagation-") as d:
        data = Path(d)
        now = datetime.datetime.now(datetime.UTC)
        keystore.init(data, "weft.local", now)
        port = free_port()
        server = _server(data, port)
        trust = (data / "ca" / "root.pem").read_bytes()
        session = tokens.create(keystore.token_key(data), SpiffeId("weft.local", "default", "orders"),
                                now=now, ttl=datetime.timedelta(hours=1), use="session")  # fmt: skip
        fleet = Fleet(port, trust, session, sidecars, procs)
        out: dict[str, Any] = {}
        try:
            out["start_s"] = fleet.wait_connected(sidecars, 180)
            out["start_ends"], out["start_refused"] = fleet.poll()[1:]
            client = AdminClient(
                f"127.0.0.1:{port}", trust, (data / "admin.token").read_text().strip()
            )
            times = []
            for k in range(shifts + 1):
                weights = {"v1": 90, "v2": 10} if k % 2 else {"v1": 10, "v2": 90}
                t0 = time.perf_counter()
                reply = client.call(
                    "Shift", {"service": "orders", "weights": weights, "timeout_s": 30}, 40
                )
                took = time.perf_counter() - t0
                if reply["lagging"] or reply["sidecars"] != sidecars:
                    fleet.poll()
                    raise SystemExit(f"bench: shift {k}: {len(reply['lagging'])} of "
                                     f"{reply['sidecars']} sidecars lagging after "
                                     f"{reply['seconds']:.0f} s; per process (current, ended): "
                                     f"{fleet.state}")  # fmt: skip
                if k:  # the first one creates the route: not counted
                    times.append(took)
            client.close()
            out["shifts"] = times
            # a control plane restart: every watch ends at once and comes back
            _, ends, refused = fleet.poll()
            server.terminate()
            server.wait(30)
            t0 = time.perf_counter()
            while fleet.poll()[0] > 0 and time.perf_counter() - t0 < 30:
                time.sleep(0.05)
            server = _server(data, port)
            fleet.wait_connected(sidecars, 120)
            out["restart_s"] = time.perf_counter() - t0  # from the old process's exit
            _, ends_after, refused_after = fleet.poll()
            out["restart_ends"] = ends_after - ends
            out["restart_refused"] = refused_after - refused
        finally:
            latest = fleet.stop()
            server.terminate()
            server.wait(10)
    t0 = time.perf_counter()
    for _ in range(20):
        _compile(latest)
    out["compile_ms"] = (time.perf_counter() - t0) / 20 * 1000
    return out


def _row(out: dict[str, Any]) -> list[float]:
    """p50, p90, p99 and max of one round's shifts (ms), compile ms, start and restart s."""
    times = sorted(out["shifts"])

    def p(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] * 1000

    return [statistics.median(times) * 1000, p(0.9), p(0.99), times[-1] * 1000,
            out["compile_ms"], out["start_s"], out["start_ends"], out["start_refused"],
            out["restart_s"], out["restart_ends"], out["restart_refused"]]  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sidecars", type=int, default=100)
    ap.add_argument("--shifts", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--procs", type=int, default=4, help="processes the sidecars are spread over")
    args = ap.parse_args()
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    print(f"{args.sidecars} sidecars over {args.procs} processes, {args.shifts} shifts a round")
    print(
        "| round | shift → last ACK p50 ms | p90 ms | p99 ms | max ms | one sidecar's compile ms "
        "| all current after start s | watches ended / refused | after a restart s "
        "| watches ended / refused |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = []

    def line(label: str, row: list[float]) -> str:
        return (f"| {label} | " + " | ".join(f"{v:.0f}" for v in row[:4])
                + f" | {row[4]:.1f} | {row[5]:.1f} | {row[6]:.0f} / {row[7]:.0f} | {row[8]:.1f}"
                f" | {row[9]:.0f} / {row[10]:.0f} |")  # fmt: skip

    for r in range(args.rounds):
        rows.append(_row(run(args.sidecars, args.shifts, args.procs)))
        print(line(str(r + 1), rows[-1]), flush=True)
    print(line("median", [statistics.median(col) for col in zip(*rows, strict=True)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
