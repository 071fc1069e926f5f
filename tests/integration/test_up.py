"""`meshctl up examples/shop`, as a user runs it: everything starts, the shop answers through
the edge (edge → web → catalog over gRPC and orders over HTTP → inventory over raw TCP, all
mTLS), and Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def test_up_runs_the_shop_and_ctrl_c_stops_everything() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "mesh_ctl", "up", "examples/shop", "--edge-port", str(port),
           "--interval", "1", "--traffic"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert proc.stdout is not None
    out: list[str] = []
    try:
        with trio.fail_after(120):
            while not out or not out[-1].startswith("Try: curl"):
                line = await trio.to_thread.run_sync(proc.stdout.readline)
                assert line, "".join(out)
                out.append(line.decode())
        state = next(line.split()[1] for line in out if line.startswith("logs: ")).removesuffix(
            "/logs"
        )
        assert out[-1].strip() == f"Try: curl http://127.0.0.1:{port}/"
        assert any(line.startswith("starting: 6/6 ready") for line in out)
        async with httpx.AsyncClient(timeout=10) as http:
            page = (await http.get(f"http://127.0.0.1:{port}/")).json()
        skus = [item["sku"] for item in page["items"]]  # from catalog, over gRPC
        assert skus == ["tea", "mug", "teapot"]
        quotes = [item["quote"] for item in page["items"]]  # from orders, over HTTP
        assert {q["version"] for q in quotes} <= {"v1", "v2"}
        assert [q["in_stock"] for q in quotes] == [42, 7, 0]  # from inventory, over raw TCP
        seen: set[str] = set()
        with trio.fail_after(30):  # the live view counts the traffic it sends, TCP included
            while seen != {"web", "inventory"}:
                line = (await trio.to_thread.run_sync(proc.stdout.readline)).decode()
                out.append(line)
                if line.split()[:1] in (["web"], ["inventory"]) and line.split()[-1] == "100.0%":
                    seen.add(line.split()[0])
        assert _processes_mentioning(state), "the mesh's processes should be running"
        proc.send_signal(signal.SIGINT)
        rest, _ = await trio.to_thread.run_sync(proc.communicate, None, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(out) + rest.decode()
    assert "stopping: draining sidecars and the edge" in rest.decode()
    assert "Traceback" not in rest.decode()
    assert _processes_mentioning(state) == []
    assert not Path(state).exists()
