"""`meshctl edge --workers 2`: real processes sharing a port, one admin port, reloads,
restarts, draining, and a port another process holds refused."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import trio

from tests.support.echo import EchoServer
from tests.support.edge import config
from tests.support.net import free_port


def _children(pid: int) -> dict[int, int]:
    """The supervisor's workers: pid -> admin port (the last --admin-port of its command)."""
    out = {}
    # children of every thread: trio starts processes from a worker thread
    kids = [
        c for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()
    ]
    for child in kids:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            argv = f.read().decode().split("\0")
        if "--worker-index" in argv:
            out[int(child)] = int(argv[len(argv) - 1 - argv[::-1].index("--admin-port") + 1])
    return out


async def _wait(predicate: object, what: str, seconds: float = 30) -> None:
    assert callable(predicate)
    with trio.fail_after(seconds):
        while not await predicate():
            await trio.sleep(0.05)  # polling a process we do not control (bounded)


def _requests(text: str, route: str = "default/r") -> int:
    return sum(
        int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
        if line.startswith("weft_requests_total{") and f'route="{route}"' in line
    )  # fmt: skip


class Edge:
    """`meshctl edge --workers 2` on one route to an echo backend."""

    def __init__(self, cfg: Path, backend: int) -> None:
        self.cfg, self.backend = cfg, backend
        self.port, self.admin = free_port(), free_port()
        self.write()
        self.log = ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mesh_ctl", "edge", "--workers", "2", "-f", str(cfg),
             "--admin-port", str(self.admin), "--access-log", "off", "--drain-timeout", "5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def write(self, *more: tuple[str, str, str]) -> None:
        routes = [("r", "/", "one"), *more]
        self.cfg.write_text(config({"one": self.backend}, routes, port=self.port))

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(f"http://127.0.0.1:{self.admin}/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def metrics(self, port: int | None = None) -> str:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"http://127.0.0.1:{port or self.admin}/metrics")).text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        assert self.proc.stderr is not None
        self.log = self.proc.stderr.read().decode(errors="replace")


@contextlib.asynccontextmanager
async def _edge(tmp_path: Path) -> AsyncIterator[Edge]:
    """A ready edge with two workers; stopped (and its log kept) on the way out."""
    with EchoServer("one") as one:
        edge = Edge(tmp_path / "edge.yaml", one.port)
        try:
            await _wait(edge.ready, "ready")
            yield edge
        finally:
            edge.stop()


async def test_two_workers_share_the_port_and_one_admin_port_sums_them(tmp_path: Path) -> None:
    async with _edge(tmp_path) as edge:
        workers = _children(edge.proc.pid)
        assert len(workers) == 2
        # New connections, so that the kernel spreads them over both workers.
        for _ in range(60):
            async with httpx.AsyncClient() as c:
                assert (await c.get(f"http://127.0.0.1:{edge.port}/x")).status_code == 200
        each = [_requests(await edge.metrics(p)) for p in workers.values()]
        assert sum(each) == 60 and min(each) > 0, each
        summed = await edge.metrics()
        assert _requests(summed) == 60
        assert "weft_workers 2" in summed and "weft_config_version 1" in summed
        count = "weft_request_duration_seconds_count"
        assert f'{count}{{direction="edge",service="edge",peer="default/one:80",' in summed

        # A worker killed is started again; traffic goes on; the restart is counted.
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            now = _children(edge.proc.pid)
            return len(now) == 2 and victim not in now and await edge.ready()

        await _wait(replaced, "a new worker")
        assert "weft_worker_restarts_total{} 1" in await edge.metrics()

        # An edit reaches every worker.
        edge.write(("s", "/s", "one"))

        async def reloaded() -> bool:
            try:
                texts = [await edge.metrics(p) for p in _children(edge.proc.pid).values()]
            except httpx.TransportError:  # the new worker is not listening yet
                return False
            return len(texts) == 2 and all("weft_config_version 2" in t for t in texts)

        await _wait(reloaded, "version 2 in both workers")

        # SIGTERM: every worker drains and exits, then the supervisor.
        pids = list(_children(edge.proc.pid))
        edge.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            code = await trio.to_thread.run_sync(edge.proc.wait)
        assert code == 0
        assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    assert "exited (status -9); starting it again" in edge.log, edge.log


async def test_workers_leave_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    async with _edge(tmp_path) as edge:
        pids = list(_children(edge.proc.pid))
        assert len(pids) == 2
        edge.proc.kill()

        async def gone() -> bool:
            return not any(Path(f"/proc/{p}/cmdline").exists() and
                           Path(f"/proc/{p}/cmdline").read_bytes() for p in pids)  # fmt: skip

        await _wait(gone, "the workers exit")


async def test_a_port_another_process_listens_on_is_refused_not_shared(tmp_path: Path) -> None:
    """Workers bind with SO_REUSEPORT; the supervisor first makes sure no one else listens
    there (another process with SO_REUSEPORT would otherwise get part of the traffic)."""
    with EchoServer("one") as one, socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cfg = tmp_path / "edge.yaml"
        cfg.write_text(config({"one": one.port}, [("r", "/", "one")], port=port))
        proc = subprocess.run(
            [sys.executable, "-m", "mesh_ctl", "edge", "--workers", "2", "-f", str(cfg),
             "--admin-port", str(free_port())],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in proc.stderr
