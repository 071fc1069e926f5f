"""`meshctl up --transparent`: every instance of the shop in its own network namespace, the
apps calling `catalog:8080`, `orders:8080` and `inventory:8080` by name as in a cluster,
their sidecars intercepting; Ctrl-C removes everything it made, and `meshctl up --cleanup`
removes what a killed `up` left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from mesh_ctl import transparent
from tests.support.net import free_port

pytestmark = pytest.mark.skipif(
    transparent.unavailable() is not None, reason=transparent.unavailable() or ""
)
ROOT = Path(__file__).resolve().parents[2]


def _left(owner: int) -> list[str]:
    """What of mesh `owner`'s network is still there."""
    tag = f"{transparent.PREFIX}{owner}"
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    found = [n.split()[0] for n in names.splitlines() if n.startswith(tag)]
    found += re.findall(rf"^\d+: ({tag}\w*)[@:]", links, re.MULTILINE)
    found += [str(p) for p in transparent.NETNS_ETC.glob(f"{tag}*")]
    return found


def _stop(proc: subprocess.Popen[str]) -> None:
    """However the test ended: Ctrl-C, and if that did not stop it, what it made goes."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    transparent.remove(proc.pid)


async def _start(tmp: Path, port: int) -> tuple[subprocess.Popen[str], list[str]]:
    """`up --transparent` until it prints how to reach the mesh; its output so far."""
    cmd = [sys.executable, "-m", "mesh_ctl", "up", "examples/shop", "--transparent",
           "--edge-port", str(port), "--interval", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WEFT_CONTEXT": str(tmp / "context.json")}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)  # fmt: skip
    assert proc.stdout is not None
    out: list[str] = []
    with trio.fail_after(120):
        while not out or "try: curl" not in out[-1]:
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            assert line, "".join(out)
            out.append(line)
    return proc, out


async def test_the_shop_runs_in_namespaces_and_ctrl_c_removes_them(tmp_path: Path) -> None:
    port = free_port()
    proc, out = await _start(tmp_path, port)
    try:
        network = next((line for line in out if line.startswith("network ")), "")
        assert network.startswith("network 10.233."), out
        subnet = network.split()[1].rsplit(".", 1)[0]  # "10.233.N"
        # each instance's sidecar answers at its namespace's address
        admins = re.findall(rf"http://({re.escape(subnet)}\.\d+):15000/", "".join(out))
        assert len(admins) == 5, out  # inventory, orders v1 and v2, catalog, web
        async with httpx.AsyncClient(timeout=10) as http:
            page = (await http.get(f"http://127.0.0.1:{port}/")).json()
            assert [i["sku"] for i in page["items"]] == ["tea", "mug", "teapot"]  # gRPC
            assert [i["quote"]["in_stock"] for i in page["items"]] == [42, 7, 0]  # HTTP, TCP
            metrics = ""
            for address in admins:
                metrics += (await http.get(f"http://{address}:15000/metrics")).text
        # the apps dialled names; their sidecars took the connections (inventory's TCP
        # shows under the route interception gives it)
        assert 'route="intercepted/default/inventory:80"' in metrics
        assert 'peer="default/catalog:80"' in metrics and 'peer="default/orders:80@v' in metrics
        assert _left(proc.pid)
        proc.send_signal(signal.SIGINT)
        rest, _ = await trio.to_thread.run_sync(proc.communicate, None, 60)
    finally:
        _stop(proc)
    assert proc.returncode == 0, "".join(out) + rest
    assert "Traceback" not in rest
    assert _left(proc.pid) == []


async def test_cleanup_removes_what_a_killed_up_left(tmp_path: Path) -> None:
    proc, _ = await _start(tmp_path, free_port())
    proc.kill()  # no chance to clean up
    await trio.to_thread.run_sync(proc.wait)
    try:
        assert _left(proc.pid)
        done = subprocess.run([sys.executable, "-m", "mesh_ctl", "up", "--cleanup"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"removed namespace {transparent.PREFIX}{proc.pid}-web" in done.stdout
        assert _left(proc.pid) == []
        again = subprocess.run([sys.executable, "-m", "mesh_ctl", "up", "--cleanup"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert again.stdout.strip() == "nothing to clean up"
    finally:
        transparent.remove(proc.pid)  # whatever a failed assertion left
