"""`meshctl edge` as a user runs it: a real process, curl, the admin port, SIGHUP and file edits."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.echo import EchoServer
from tests.support.edge import config
from tests.support.net import free_port

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


class _Stderr:
    """Reads the process's log as it comes, so tests wait for lines instead of sleeping."""

    def __init__(self, proc: trio.Process) -> None:
        assert proc.stderr is not None
        self.stream = proc.stderr
        self.text = ""

    async def wait_for(self, needle: str, count: int = 1) -> None:
        with trio.fail_after(20):
            while self.text.count(needle) < count:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"process exited; log:\n{self.text}")
                self.text += chunk.decode(errors="replace")


async def _curl(url: str) -> str:
    out = await trio.run_process(["curl", "-sS", url], capture_stdout=True)
    return out.stdout.decode()


async def test_admin_reload_on_edit_and_sighup(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    cfg = tmp_path / "edge.yaml"
    with EchoServer("one") as one, EchoServer("two") as two:
        cfg.write_text(config({"one": one.port}, [("r", "/", "one")], port=port))
        cmd = [sys.executable, "-m", "sidecar", "edge", "-f", str(cfg), "--admin-port", str(admin)]
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                lambda task_status: trio.run_process(
                    cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, check=False,
                    task_status=task_status,
                )
            )  # fmt: skip
            log = _Stderr(proc)
            try:
                await log.wait_for("in force")
                assert json.loads(await _curl(f"http://127.0.0.1:{port}/x"))["pod"] == "one"
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}") as client:
                    assert (await client.get("/live")).status_code == 200
                    assert (await client.get("/ready")).status_code == 200
                    metrics = (await client.get("/metrics")).text
                    assert (
                        'weft_requests_total{direction="edge",service="edge",peer="default/one:80",route="default/r",code_class="2xx",code="200"} 1'
                        in metrics
                    )
                    assert "weft_config_version 1" in metrics
                    dump = (await client.get("/config_dump")).json()
                    assert dump["version"] == 1 and "default/one:80" in dump["clusters"]
                    assert (await client.get("/drain")).status_code == 405

                    # An invalid edit is refused with file, document and field; v1 stays.
                    cfg.write_text(
                        config({"one": one.port}, [("r", "/", "one")], port=port).replace(
                            "port: 80}]", "port: 0}]", 1
                        )
                    )
                    proc.send_signal(signal.SIGHUP)
                    await log.wait_for("configuration rejected")
                    assert f"{cfg} document 2 (Service default/one): spec.ports[0].port" in log.text
                    assert json.loads(await _curl(f"http://127.0.0.1:{port}/x"))["pod"] == "one"

                    # A valid edit is picked up by the file watcher without a signal.
                    cfg.write_text(config({"two": two.port}, [("r", "/", "two")], port=port))
                    await log.wait_for("in force", count=2)
                    assert json.loads(await _curl(f"http://127.0.0.1:{port}/x"))["pod"] == "two"
                    assert "weft_config_version 2" in (await client.get("/metrics")).text

                    assert (await client.post("/drain")).status_code == 200
                    assert (await client.get("/ready")).status_code == 503
            finally:
                proc.terminate()


async def test_bad_initial_config_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: e}\nspec: {}\n"
    )
    proc = await trio.run_process(
        [sys.executable, "-m", "sidecar", "edge", "-f", str(cfg), "--admin-port", "0"],
        capture_stderr=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.decode().strip().splitlines()
    assert lines[-1].startswith("meshctl: configuration error: ")
    assert "spec.listeners: must have at least one listener" in lines[-1]
    assert "Traceback" not in proc.stderr.decode()


async def test_the_meshs_kinds_are_refused_by_an_edge(tmp_path: Path) -> None:
    for doc, why in (
        ("kind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {targetRef: {name: web}, "
         "from: [{services: [x]}]}", "AuthorizationPolicy default/p: is enforced by mesh sidecars"),
        ("kind: MeshConfig\nmetadata: {name: mesh}", "MeshConfig default/mesh: configures a mesh"),
    ):  # fmt: skip
        cfg = tmp_path / "edge.yaml"
        cfg.write_text(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: e}\n"
            "spec: {listeners: [{name: h, port: 8080, protocol: HTTP}]}\n---\n"
            f"apiVersion: weft.dev/v1alpha1\n{doc}\n"
        )
        proc = await trio.run_process(
            [sys.executable, "-m", "sidecar", "edge", "-f", str(cfg), "--admin-port", "0"],
            capture_stderr=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 1
        assert why in proc.stderr.decode().strip().splitlines()[-1], proc.stderr.decode()


async def test_listener_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "edge.yaml"
        cfg.write_text(config({"x": 9}, [("r", "/", "x")], port=port))
        proc = await trio.run_process(
            [sys.executable, "-m", "sidecar", "edge", "-f", str(cfg), "--admin-port", "0"],
            capture_stderr=True, check=False,
        )  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use")
    )
    assert "Traceback" not in err


async def test_ctrl_c_exits_130_without_a_traceback(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(config({"x": 9}, [("r", "/", "x")], port=free_port()))
    cmd = [sys.executable, "-m", "sidecar", "edge", "-f", str(cfg), "--admin-port", "0"]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                cmd, stderr=subprocess.PIPE, check=False, task_status=task_status
            )
        )
        log = _Stderr(proc)
        await log.wait_for("in force")
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            while chunk := await log.stream.receive_some(65536):
                log.text += chunk.decode(errors="replace")
            assert await proc.wait() == 130
    assert "Traceback" not in log.text
