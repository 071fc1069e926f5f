"""`meshctl apply/get/delete` against a real `meshctl server` process."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port
from tests.support.plane import start_server

ROUTES = """apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders}
spec:
  parentRefs: [{kind: Service, name: orders}]
  rules: [{backendRefs: [{name: orders, port: 80}]}]
---
apiVersion: weft.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {defaultPolicy: deny}
"""


def _meshctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_ctl", *args], capture_output=True, text=True, env=env,
        timeout=60, check=False,
    )  # fmt: skip


@contextlib.contextmanager
def _server(data: Path, port: int) -> Iterator[None]:
    proc = start_server(data, port)
    try:
        yield
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


@pytest.fixture
def data(tmp_path: Path) -> Path:
    assert _meshctl("ca", "init", "--data-dir", str(tmp_path / "d")).returncode == 0
    return tmp_path / "d"


def test_apply_get_delete_round_trip_survives_a_restart(data: Path, tmp_path: Path) -> None:
    port = free_port()
    conn = ("--server", f"127.0.0.1:{port}", "--data-dir", str(data))
    (tmp_path / "shop.yaml").write_text(ROUTES)
    with _server(data, port):
        out = _meshctl("apply", "-f", str(tmp_path / "shop.yaml"), *conn)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            "HTTPRoute default/orders created",
            "MeshConfig default/mesh created",
            "configuration version 1",
        ]
        again = _meshctl("apply", "-f", str(tmp_path), *conn)  # a directory, nothing new
        assert again.stdout.splitlines()[-1] == "configuration version 1", again.stderr
        table = _meshctl("get", "routes", *conn)
        assert table.stdout.splitlines()[1].split() == ["HTTPRoute", "default", "orders"]
    with _server(data, port):  # restarted: what was acknowledged is still there
        one = _meshctl("get", "httproute", "orders", "-o", "json", *conn)
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["spec"]["parentRefs"] == [
            {"kind": "Service", "name": "orders"}
        ]
        gone = _meshctl("delete", "route", "orders", *conn)
        assert gone.stdout.splitlines() == [
            "HTTPRoute default/orders deleted",
            "configuration version 2",
        ]
        missing = _meshctl("get", "route", "orders", *conn)
        assert missing.returncode == 1
        assert missing.stderr.strip() == "meshctl: HTTPRoute default/orders not found"


def test_a_bad_document_is_refused_with_its_place_and_nothing_changes(
    data: Path, tmp_path: Path
) -> None:
    port = free_port()
    conn = ("--server", f"127.0.0.1:{port}", "--data-dir", str(data))
    (tmp_path / "good.yaml").write_text(ROUTES)
    bad = tmp_path / "bad.yaml"
    bad.write_text(ROUTES.replace("orders}\nspec:\n  parentRefs", "web}\nspec:\n  parentRefs")
                   .replace("defaultPolicy: deny", "defaultPolicy: sometimes"))  # fmt: skip
    with _server(data, port):
        assert _meshctl("apply", "-f", str(tmp_path / "good.yaml"), *conn).returncode == 0
        out = _meshctl("apply", "-f", str(bad), *conn)
        assert out.returncode == 1
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr
        assert f"{bad} document 2 (MeshConfig default/mesh): spec.defaultPolicy" in lines[0]
        names = _meshctl("get", "routes", "-o", "json", *conn)
        assert [d["metadata"]["name"] for d in json.loads(names.stdout)] == ["orders"]
        env = {"WEFT_ADMIN_TOKEN": "forged", "PATH": "/usr/bin:/bin"}
        forged = _meshctl("get", "routes", *conn, env=env)
        assert forged.returncode == 1 and "valid admin token is needed" in forged.stderr
    down = _meshctl("get", "routes", *conn)
    assert down.returncode == 1
    assert f"cannot reach the control plane at 127.0.0.1:{port}" in down.stderr


def test_check_reports_each_preflight_check(data: Path) -> None:
    port = free_port()
    conn = ("--server", f"127.0.0.1:{port}", "--data-dir", str(data))
    with _server(data, port):
        up = _meshctl("check", *conn)
        as_json = _meshctl("check", "-o", "json", *conn)
    lines = up.stdout.splitlines()
    assert lines[0].startswith("PASS  CA in ") and "intermediate valid 36" in lines[0]
    assert lines[1].startswith("PASS  control plane reachable (generation ")
    assert lines[2].startswith("PASS  clock skew with the control plane: ")
    assert [line.split("  ", 1)[1].split(" (")[0] for line in lines[3:]] == [
        "port 15000", "port 15001", "port 15006"]  # fmt: skip
    assert up.returncode == (0 if all(line.startswith("PASS") for line in lines) else 1)
    got = json.loads(as_json.stdout)
    assert [c["check"] for c in got["checks"]] == [
        "ca", "control_plane", "clock_skew", "port_15000", "port_15001", "port_15006"]  # fmt: skip
    assert [c["ok"] for c in got["checks"][:3]] == [True, True, True]
    assert got["ok"] == all(c["ok"] for c in got["checks"])
    assert as_json.returncode == (0 if got["ok"] else 1)
    down = _meshctl("check", *conn)
    assert down.returncode == 1
    assert f"FAIL  control plane: cannot reach the control plane at 127.0.0.1:{port}" in down.stdout


def test_a_second_control_plane_on_a_used_address_refuses_to_start(data: Path) -> None:
    """No split brain: grpc would share the port (SO_REUSEPORT) and the CLI's calls would
    alternate between the two control planes."""
    port = free_port()
    with _server(data, port):
        second = _meshctl(
            "server", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
            "--http-listen", "127.0.0.1:0",
        )  # fmt: skip
    assert second.returncode == 1
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, second.stderr
    assert f"cannot listen on 127.0.0.1:{port}: address in use" in lines[0]


def test_a_sidecar_on_a_used_port_says_which(data: Path) -> None:
    port = free_port()
    with _server(data, port), socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        token = _meshctl("token", "create", "orders", "--data-dir", str(data)).stdout.strip()
        sidecar = _meshctl(
            "sidecar", "--service", "orders", "--app-port", "1", "--token", token,
            "--control-plane", f"127.0.0.1:{port}", "--ca-file", str(data / "ca" / "root.pem"),
            "--inbound-port", str(taken), "--admin-port", "0", "--outbound-port", "0",
        )  # fmt: skip
    assert sidecar.returncode == 1
    lines = [ln for ln in sidecar.stderr.splitlines() if ln.strip() and "INFO" not in ln]
    assert len(lines) == 1, sidecar.stderr
    assert f"cannot listen on 0.0.0.0:{taken}: Address already in use" in lines[0], lines[0]


def test_admin_verbs_find_the_running_control_plane_without_flags(
    data: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEFT_")}
    env["WEFT_CONTEXT"] = str(tmp_path / "context.json")
    env["HOME"] = str(tmp_path)  # not the data dir the default would find
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh_ctl", "server", "--data-dir", str(data),
         "--listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stderr is not None and "control plane on" in proc.stderr.readline()
        ctx = _meshctl("context", "-o", "json", env=env)
        assert json.loads(ctx.stdout)["server"] == f"127.0.0.1:{port}", ctx.stderr
        assert json.loads(ctx.stdout)["data_dir"] == str(data.resolve())
        status = _meshctl("status", env=env)
        assert status.returncode == 0, status.stderr
        assert "control plane: ok" in status.stdout
        # flags still win over the context, and --control-plane is --server's other name
        other = _meshctl("status", "--control-plane", f"127.0.0.1:{free_port()}", env=env)
        assert other.returncode == 1
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


def test_a_cli_holding_another_meshs_ca_says_so(data: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert _meshctl("ca", "init", "--data-dir", str(other)).returncode == 0
    port = free_port()
    env = {**os.environ, "WEFT_ADMIN_TOKEN": "whatever"}
    with _server(data, port):
        wrong = _meshctl("status", "--server", f"127.0.0.1:{port}", "--data-dir", str(other),
                         env=env)  # fmt: skip
        right = _meshctl("status", "--server", f"127.0.0.1:{port}", "--data-dir", str(data))
    assert right.returncode == 0, right.stderr
    assert wrong.returncode == 1
    lines = [ln for ln in wrong.stderr.splitlines() if ln.strip()]
    assert lines == [
        f"meshctl: TLS handshake with 127.0.0.1:{port} failed: the control plane's certificate "
        f"is not signed by the CA in {other / 'ca' / 'root.pem'} (another mesh's CA?)"
    ], wrong.stderr


async def test_traces_without_jaeger(tmp_path: Path) -> None:
    """An edge exports to the control plane's own OTLP receiver; `meshctl traces` lists the
    trace and draws it."""
    import trio

    from control.server import ControlPlane
    from sidecar.observe.tracing import TraceOptions
    from tests.support.echo import EchoServer
    from tests.support.edge import config, start_edge
    from tests.support.plane import running_plane

    with running_plane(tmp_path / "d") as plain:  # no receiver: says how to get one
        conn = ("--server", f"127.0.0.1:{plain.port}", "--data-dir", str(plain.data_dir))
        none = await trio.to_thread.run_sync(lambda: _meshctl("traces", *conn))
    assert none.returncode == 1 and "start it with --otlp-listen" in none.stderr
    plane = ControlPlane(tmp_path / "d", "127.0.0.1:0", otlp_listen="127.0.0.1:0")
    plane.start()
    conn = ("--server", f"127.0.0.1:{plane.port}", "--data-dir", str(tmp_path / "d"))
    try:
        with EchoServer("api") as api:
            async with trio.open_nursery() as nursery:
                edge, port = await start_edge(
                    nursery, tmp_path / "c.yaml", config({"api": api.port}, [("api", "/api", "api")]),
                    trace=TraceOptions(endpoint=f"127.0.0.1:{plane.otlp_port}", service="edge"),
                )  # fmt: skip
                caller = "4bf92f3577b34da6a3ce929d0e0e4736"
                headers = {"traceparent": f"00-{caller}-00f067aa0ba902b7-01"}
                async with httpx.AsyncClient(timeout=10) as http:
                    assert (
                        await http.get(f"http://127.0.0.1:{port}/api/x", headers=headers)
                    ).status_code == 200
                with trio.fail_after(30):
                    while plane.traces is None or len(plane.traces.traces.get(caller, [])) < 2:
                        assert edge.tracer is not None
                        await edge.tracer.reported.wait()
                nursery.cancel_scope.cancel()
        listed = await trio.to_thread.run_sync(lambda: _meshctl("traces", *conn))
        drawn = await trio.to_thread.run_sync(lambda: _meshctl("traces", caller[:10], *conn))
        missing = await trio.to_thread.run_sync(lambda: _meshctl("traces", "ffff", *conn))
    finally:
        plane.stop(0)
    assert listed.returncode == 0, listed.stderr
    # listed once no span came for a few seconds (the unit tests list settled ones)
    assert listed.stdout.strip() == "1 trace(s) still receiving spans: complete in a few seconds"
    lines = drawn.stdout.splitlines()
    assert lines[0].startswith(f"trace {caller}  2 spans  ")
    assert lines[1].startswith("edge GET /api/*") and "server http=200" in lines[1]
    assert lines[2].startswith("  edge GET /api/*") and "client http=200 peer=api" in lines[2]
    assert missing.returncode == 1 and "no trace ffff" in missing.stderr


def test_a_missing_admin_token_gives_no_hint_already_followed(data: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WEFT_ADMIN_TOKEN"}
    done = _meshctl("status", "--data-dir", str(data), "--server", "127.0.0.1:1", env=env)
    assert done.returncode == 1
    assert done.stderr.startswith("meshctl: no admin token in "), done.stderr
    assert done.stderr.strip().endswith(": set WEFT_ADMIN_TOKEN")  # --data-dir was given
