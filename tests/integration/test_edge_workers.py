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


async def _exited(pid: int) -> None:
    """Until process `pid` (not our child) exits: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def _requests(text: str, route: str = "default/r") -> int:
    return sum(
        int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
        if line.startswith("weft_requests_total{") and f'route="{route}"' in line
    )  # fmt: skip


CACHE = """---
apiVersion: weft.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: cache}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  cache: {}
"""


class Edge:
    """`meshctl edge --workers 2` on one route to an echo backend; its log (the supervisor's
    and the workers', one stderr) is read as it comes, so tests wait for lines."""

    def __init__(self, cfg: Path, backend: int, proc: trio.Process) -> None:
        self.cfg, self.backend, self.proc = cfg, backend, proc
        self.log = ""

    def write(self, port: int, *more: tuple[str, str, str]) -> None:
        routes = [("r", "/", "one"), *more]
        self.cfg.write_text(config({"one": self.backend}, routes, port=port))

    async def wait_for(self, needle: str, count: int = 1) -> None:
        assert self.proc.stderr is not None
        with trio.fail_after(30):
            while self.log.count(needle) < count:
                chunk = await self.proc.stderr.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"the edge exited; log:\n{self.log}")
                self.log += chunk.decode(errors="replace")

    async def metrics(self, port: int) -> str:
        async with httpx.AsyncClient() as c:
            return (await c.get(f"http://127.0.0.1:{port}/metrics")).text


@contextlib.asynccontextmanager
async def _edge(tmp_path: Path) -> AsyncIterator[tuple[Edge, int, int]]:
    """(edge, port, admin port) once both workers have their configuration in force."""
    port, admin = free_port(), free_port()
    with EchoServer("one") as one:
        cfg = tmp_path / "edge.yaml"
        cfg.write_text(config({"one": one.port}, [("r", "/", "one")], port=port) + CACHE)
        command = [sys.executable, "-m", "mesh_ctl", "edge", "--workers", "2", "-f", str(cfg),
                   "--admin-port", str(admin), "--access-log", "off", "--drain-timeout", "5"]  # fmt: skip
        proc = await trio.lowlevel.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        edge = Edge(cfg, one.port, proc)
        try:
            await edge.wait_for("configuration version 1 in force", 2)
            yield edge, port, admin
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def test_two_workers_share_the_port_and_one_admin_port_sums_them(tmp_path: Path) -> None:
    async with _edge(tmp_path) as (edge, port, admin):
        workers = _children(edge.proc.pid)
        assert len(workers) == 2
        # New connections, so that the kernel spreads them over both workers.
        cacheable = {"x-echo-set-header": "Cache-Control: max-age=60"}
        for _ in range(60):
            async with httpx.AsyncClient() as c:
                got = await c.get(f"http://127.0.0.1:{port}/x", headers=cacheable)
                assert got.status_code == 200
        each = [_requests(await edge.metrics(p)) for p in workers.values()]
        assert sum(each) == 60 and min(each) > 0, each
        async with httpx.AsyncClient() as c:  # each worker's cache holds /x: both purge it
            purge = await c.post(f"http://127.0.0.1:{admin}/cache/purge",
                                 params={"url": f"http://127.0.0.1:{port}/x"})  # fmt: skip
        assert purge.json() == {"purged": 2}
        summed = await edge.metrics(admin)
        assert _requests(summed) == 60
        assert "weft_workers 2" in summed and "weft_config_version 1" in summed
        count = "weft_request_duration_seconds_count"
        assert f'{count}{{direction="edge",service="edge",peer="default/one:80",' in summed

        # A worker killed is started again; traffic goes on; the restart is counted.
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        await edge.wait_for("exited (status -9); starting it again")
        await edge.wait_for("configuration version 1 in force", 3)
        now = _children(edge.proc.pid)
        assert len(now) == 2 and victim not in now
        assert "weft_worker_restarts_total{} 1" in await edge.metrics(admin)

        # An edit reaches every worker.
        edge.write(port, ("s", "/s", "one"))
        await edge.wait_for("configuration version 2 in force", 2)
        texts = [await edge.metrics(p) for p in now.values()]
        assert all("weft_config_version 2" in t for t in texts)

        # SIGTERM: every worker drains and exits, then the supervisor.
        edge.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await edge.proc.wait() == 0
            for pid in now:
                await _exited(pid)


async def test_workers_leave_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    async with _edge(tmp_path) as (edge, _, _):
        pids = list(_children(edge.proc.pid))
        assert len(pids) == 2
        edge.proc.kill()
        with trio.fail_after(30):
            for pid in pids:
                await _exited(pid)


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
