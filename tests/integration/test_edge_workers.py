"""`meshctl edge --workers 2`: real processes sharing a port, one admin port, reloads,
restarts, draining, and a port another process holds refused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
    def __init__(self, cfg: Path, port: int, admin: int) -> None:
        self.port, self.admin = port, admin
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mesh_ctl", "edge", "--workers", "2", "-f", str(cfg),
             "--admin-port", str(admin), "--access-log", "off", "--drain-timeout", "5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(f"http://127.0.0.1:{self.admin}/ready")).status_code == 200
        except httpx.TransportError:
            return False

    async def metrics(self, port: int | None = None) -> str:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"http://127.0.0.1:{port or self.admin}/metrics")).text

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")


async def test_two_workers_share_the_port_and_one_admin_port_sums_them(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "edge.yaml"
    with EchoServer("one") as one:
        cfg.write_text(config({"one": one.port}, [("r", "/", "one")], port=port))
        edge = Edge(cfg, port, admin)
        try:
            await _wait(edge.ready, "ready")
            workers = _children(edge.proc.pid)
            assert len(workers) == 2
            # New connections, so that the kernel spreads them over both workers.
            for _ in range(60):
                async with httpx.AsyncClient() as c:
                    assert (await c.get(f"http://127.0.0.1:{port}/x")).status_code == 200
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
            cfg.write_text(config({"one": one.port}, [("r", "/", "one"), ("s", "/s", "one")],
                                  port=port))  # fmt: skip

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
        finally:
            log = edge.stop()
    assert "worker 0 exited" in log or "worker 1 exited" in log, log


async def test_workers_leave_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "edge.yaml"
    with EchoServer("one") as one:
        cfg.write_text(config({"one": one.port}, [("r", "/", "one")], port=port))
        edge = Edge(cfg, port, admin)
        try:
            await _wait(edge.ready, "ready")
            pids = list(_children(edge.proc.pid))
            assert len(pids) == 2
            edge.proc.kill()

            async def gone() -> bool:
                return not any(Path(f"/proc/{p}/cmdline").exists() and
                               Path(f"/proc/{p}/cmdline").read_bytes() for p in pids)  # fmt: skip

            await _wait(gone, "the workers exit")
        finally:
            edge.stop()


async def test_a_port_another_process_listens_on_is_refused_not_shared(tmp_path: Path) -> None:
    """Workers bind with SO_REUSEPORT; the supervisor first makes sure no one else listens
    there (another process with SO_REUSEPORT would otherwise get part of the traffic)."""
    port, admin = free_port(), free_port()
    cfg = tmp_path / "edge.yaml"
    with EchoServer("one") as one, socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        cfg.write_text(config({"one": one.port}, [("r", "/", "one")], port=port))
        edge = Edge(cfg, port, admin)
        with trio.fail_after(30):
            code = await trio.to_thread.run_sync(edge.proc.wait)
        log = edge.stop()
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in log, log
