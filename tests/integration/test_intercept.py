"""Transparent interception in network namespaces the test creates: an unmodified client (curl)
in one namespace calls a service's address in the other, `meshctl init`'s rules send the
connection to its sidecar, and it travels over mTLS to the callee's sidecar; traffic to
addresses outside the mesh passes through, a server-first protocol is not held up, and
once the rules are removed the client reaches the address directly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.netns import Pair, namespace_pair, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

PROXY_GID = 1337  # the caller's sidecar runs in this group: its own traffic is not captured
APP_PORT = 8080  # the callee's app
OUTSIDE_PORT = 9090  # an HTTP server in the callee's namespace that is not in the mesh
GREET_PORT = 2525  # a server-first protocol, not in the mesh
CP_PORT = 15010


class Proc:
    """A process in a namespace whose output the test waits on, line by line."""

    def __init__(self, proc: trio.Process, stream: Any) -> None:
        self.proc = proc
        self.stream = stream
        self.text = ""

    async def wait_for(self, needle: str, count: int = 1) -> None:
        with trio.fail_after(30):
            while self.text.count(needle) < count:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(f"process exited; output:\n{self.text}")
                self.text += chunk.decode(errors="replace")


async def _start(nursery: trio.Nursery, cmd: list[str], *, log: str = "stderr") -> Proc:
    proc: trio.Process = await nursery.start(
        lambda task_status: trio.run_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
            cwd=Path(__file__).parents[2], task_status=task_status,
        )
    )  # fmt: skip
    stream = proc.stderr if log == "stderr" else proc.stdout
    return Proc(proc, stream)


def _meshctl(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mesh_ctl", *argv], capture_output=True,
                          text=True, check=True, timeout=60)  # fmt: skip
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


async def _curl(net: Pair, url: str, *extra: str) -> dict[str, Any]:
    done = await trio.to_thread.run_sync(
        lambda: net.run(net.a, "curl", "-sS", "--max-time", "10", *extra, url)
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def _mesh(nursery: trio.Nursery, net: Pair, data: Path, *caller_args: str) -> Proc:
    """Control plane, callee app and sidecar in b; the caller's sidecar (intercepting) in a,
    once it knows the callee's instance. Returns the caller's sidecar."""
    py = [sys.executable, "-m"]
    plane = await _start(nursery, net.cmd(net.b, *py, "mesh_ctl", "server", "--data-dir",
                         str(data), "--listen", f"{net.ip_b}:{CP_PORT}", "--http-listen", "off"))  # fmt: skip
    await plane.wait_for("control plane on")
    for argv in (("echo", "b", "0.0.0.0", str(APP_PORT)),
                 ("echo", "outside", "0.0.0.0", str(OUTSIDE_PORT)),
                 ("greet", "0.0.0.0", str(GREET_PORT))):  # fmt: skip
        app = await _start(nursery, net.cmd(net.b, *py, "tests.support.netns_app", *argv),
                           log="stdout")  # fmt: skip
        await app.wait_for("ready")
    common = ["--control-plane", f"{net.ip_b}:{CP_PORT}", "--ca-file",
              str(data / "ca" / "root.pem"), "--inbound-address", "0.0.0.0"]  # fmt: skip
    callee = await _start(nursery, net.cmd(
        net.b, *py, "mesh_ctl", "sidecar", "--service", "b", "--app-port", str(APP_PORT),
        "--token", _meshctl("token", "create", "b", "--data-dir", str(data)),
        "--advertise", net.ip_b, *common,
    ))  # fmt: skip
    await callee.wait_for("ready: inbound mTLS")
    caller = await _start(nursery, net.cmd(
        net.a, *py, "mesh_ctl", "--log-level", "debug", "sidecar", "--service", "a",
        "--app-port", "9", "--intercept",
        "--token", _meshctl("token", "create", "a", "--data-dir", str(data)),
        "--advertise", net.ip_a, *common, *caller_args, gid=PROXY_GID,
    ))  # fmt: skip
    await caller.wait_for("ready: inbound mTLS")
    seen = 1
    while True:  # until the caller's configuration has the callee's instance
        dump = net.run(net.a, "curl", "-sS", "http://127.0.0.1:15000/config_dump").stdout
        if f'"{net.ip_b}:' in dump:
            return caller
        seen += 1
        await caller.wait_for("from the control plane in force", seen)


def _init(net: Pair, *argv: str) -> None:
    done = net.run(net.a, sys.executable, "-m", "mesh_ctl", "init", *argv)
    assert done.returncode == 0, done.stderr


async def test_an_unmodified_client_is_intercepted_and_crosses_over_mtls(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    _meshctl("ca", "init", "--data-dir", str(data))
    with namespace_pair() as net:
        async with trio.open_nursery() as nursery:
            await _mesh(nursery, net, data)
            _init(net, "--proxy-gid", str(PROXY_GID))
            rules = net.run(net.a, "iptables-save", "-t", "nat").stdout
            assert "-A OUTPUT -p tcp -j WEFT_OUTPUT" in rules

            # The callee's address at its app's port is the mesh service b: over mTLS,
            # whatever Host the client sends (the address decides, not the name).
            got = await _curl(net, f"http://{net.ip_b}:{APP_PORT}/hello", "-H", "Host: nobody")
            assert got["pod"] == "b" and got["path"] == "/hello"
            xfcc = got["headers"].get("x-forwarded-client-cert", [""])[0]
            assert "URI=spiffe://weft.local/ns/default/svc/a" in xfcc, got["headers"]

            # Outside the mesh: relayed as it is, from the caller's own address.
            got = await _curl(net, f"http://{net.ip_b}:{OUTSIDE_PORT}/out")
            assert got["pod"] == "outside"
            assert "x-forwarded-client-cert" not in got["headers"]

            # A server-first protocol: the greeting arrives without the client speaking.
            greeting = net.run(net.a, sys.executable, "-c", (
                "import socket; s = socket.create_connection"
                f"(('{net.ip_b}', {GREET_PORT}), timeout=5); print(s.recv(100).decode())"
            ))  # fmt: skip
            assert greeting.stdout.startswith("220 greeter ready"), greeting.stderr

            metrics = net.run(net.a, "curl", "-sS", "http://127.0.0.1:15000/metrics").stdout
            assert 'route="passthrough"' in metrics
            # The rules gone, the client reaches the callee's app directly (no mTLS).
            _init(net, "--uninstall")
            assert "WEFT_" not in net.run(net.a, "iptables-save", "-t", "nat").stdout
            got = await _curl(net, f"http://{net.ip_b}:{APP_PORT}/direct")
            assert got["pod"] == "b"
            assert "x-forwarded-client-cert" not in got["headers"]
            nursery.cancel_scope.cancel()


async def test_registry_only_refuses_addresses_outside_the_mesh(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    _meshctl("ca", "init", "--data-dir", str(data))
    with namespace_pair() as net:
        async with trio.open_nursery() as nursery:
            await _mesh(nursery, net, data, "--outbound-policy", "registry-only")
            _init(net, "--proxy-gid", str(PROXY_GID))
            got = await _curl(net, f"http://{net.ip_b}:{APP_PORT}/in")
            assert got["pod"] == "b"
            refused = net.run(net.a, "curl", "-sS", "--max-time", "10",
                              f"http://{net.ip_b}:{OUTSIDE_PORT}/out")  # fmt: skip
            assert refused.returncode != 0 and refused.stdout == ""
            metrics = net.run(net.a, "curl", "-sS", "http://127.0.0.1:15000/metrics").stdout
            assert 'weft_tcp_denied_total{reason="registry_only"} 1' in metrics
            nursery.cancel_scope.cancel()
