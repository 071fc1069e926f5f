"""A 1 GB upload and a 1 GB download through `meshctl edge` (a real process) in constant memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support.echo import EchoServer
from tests.support.edge import config
from tests.support.net import free_port

GB = 1 << 30
# The proxy's resident set may not grow with the body: its peak stays under this.
PEAK_RSS_LIMIT_KB = 80 * 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _wait_listening(proc: trio.Process) -> None:
    assert proc.stderr is not None
    seen = b""
    with trio.fail_after(20):
        async for chunk in proc.stderr:
            seen += chunk
            if b"in force" in seen:
                return
    raise AssertionError(f"edge did not start: {seen.decode(errors='replace')}")


async def test_gigabyte_up_and_down_in_constant_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(GB)  # sparse: reads as zeros without using disk
    port, admin = free_port(), free_port()
    with EchoServer("sink") as backend:
        cfg = tmp_path / "edge.yaml"
        cfg.write_text(config({"sink": backend.port}, [("r", "/", "sink")], port=port))
        cmd = [sys.executable, "-m", "sidecar", "edge", "-f", str(cfg), "--admin-port", str(admin),
               "--access-log", "off"]  # fmt: skip
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                lambda task_status: trio.run_process(
                    cmd, stderr=subprocess.PIPE, check=False, task_status=task_status
                )
            )
            try:
                await _wait_listening(proc)
                up = await trio.run_process(
                    ["curl", "-sS", "-T", str(big), f"http://127.0.0.1:{port}/upload"],
                    capture_stdout=True,
                )
                down = await trio.run_process(
                    ["curl", "-sS", "-o", os.devnull, "-w", "%{size_download}",
                     f"http://127.0.0.1:{port}/bytes/{GB}"],
                    capture_stdout=True,
                )  # fmt: skip
                peak = _peak_rss_kb(proc.pid)
            finally:
                proc.terminate()
    assert json.loads(up.stdout)["body_length"] == GB
    assert int(down.stdout) == GB
    print(f"proxy peak RSS {peak} kB")
    assert peak < PEAK_RSS_LIMIT_KB, f"proxy peak RSS {peak} kB"
