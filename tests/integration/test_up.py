"""`meshctl up examples/shop`, as a user runs it: everything starts, the shop answers through
the edge (edge → web → catalog over gRPC and orders over HTTP → inventory over raw TCP, all
mTLS), one request is one trace at an OTLP receiver, and Ctrl-C stops every process it
started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

from tests.support.net import free_port
from tests.support.otlp import Received, Receiver, otlp_receiver

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
    with otlp_receiver() as (receiver, otlp):
        await _up_and_down(receiver, otlp)


async def _up_and_down(receiver: Receiver, otlp: int) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "mesh_ctl", "up", "examples/shop", "--edge-port", str(port),
           "--interval", "1", "--traffic", "--otlp-endpoint", f"127.0.0.1:{otlp}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert proc.stdout is not None
    out: list[str] = []
    try:
        with trio.fail_after(120):
            while not out or not out[-1].startswith("traces: "):
                line = await trio.to_thread.run_sync(proc.stdout.readline)
                assert line, "".join(out)
                out.append(line.decode())
        assert out[-1].startswith(f"traces: 127.0.0.1:{otlp} ")  # where it was told
        state = out[-1].split("logs: ")[1].split()[0].removesuffix("/logs")
        assert out[-1].strip().endswith(f"try: curl http://127.0.0.1:{port}/")
        assert any(line.startswith("starting: 6/6 ready") for line in out)
        # another terminal: no flags, the current context `up` saved finds this mesh
        top = await trio.run_process(
            [sys.executable, "-m", "mesh_ctl", "top", "-o", "json"], capture_stdout=True,
            capture_stderr=True, check=False,
        )  # fmt: skip
        assert top.returncode == 0, top.stderr
        assert "web" in {s["service"] for s in json.loads(top.stdout)["services"]}
        caller = "5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e"
        async with httpx.AsyncClient(timeout=10) as http:
            page = (await http.get(f"http://127.0.0.1:{port}/",
                                   headers={"traceparent": f"00-{caller}-00000000000000c1-01"})).json()  # fmt: skip
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
                cols = line.split()  # SERVICE VERSION INST RPS SUCCESS P50 P99 TCP/s
                if len(cols) == 8 and cols[4] == "100.00%":
                    if cols[0] == "default/web" and float(cols[3]) > 0 and cols[6] != "-":
                        seen.add("web")
                    if cols[0] == "default/inventory" and float(cols[7]) > 0:
                        seen.add("inventory")
        _one_trace(receiver, await _trace(receiver, caller))
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


async def _trace(receiver: Receiver, trace_hex: str) -> list[Received]:
    """The spans of one trace, once every hop's are in: edge 2, web 1 + 4 calls, catalog 1,
    orders 3 (the exporters send within a second or so)."""

    def spans(all_spans: list[Received]) -> list[Received]:
        return [r for r in all_spans if r.span.trace_id.hex() == trace_hex]

    assert await receiver.wait_for(lambda s: len(spans(s)) >= 11, 60), spans(receiver.spans)
    return spans(receiver.spans)


def _one_trace(receiver: Receiver, spans: list[Received]) -> None:
    server, client = 2, 3
    by_id = {r.span.span_id: r for r in spans}

    def parent(r: Received) -> Received:
        return by_id[r.span.parent_span_id]

    kinds = sorted((r.service, r.span.kind) for r in spans)
    assert kinds == sorted([("edge", server), ("edge", client), ("web", server),
                            ("web", client), *[("web", client)] * 3, ("catalog", server),
                            *[("orders", server)] * 3]), kinds  # fmt: skip
    edge_in = next(r for r in spans if r.service == "edge" and r.span.kind == server)
    assert edge_in.span.parent_span_id == bytes.fromhex("00000000000000c1")  # the caller's
    web_in = next(r for r in spans if r.service == "web" and r.span.kind == server)
    assert parent(web_in).service == "edge" and parent(parent(web_in)) is edge_in
    assert web_in.attributes["weft.peer.identity"] == "spiffe://weft.local/ns/default/svc/edge"
    for callee in ("catalog", "orders"):
        for r in (r for r in spans if r.service == callee):
            call = parent(r)  # web's sidecar's CLIENT span, a child of web's SERVER span
            assert (call.service, call.span.kind) == ("web", client)
            assert parent(call) is web_in
            assert call.attributes["peer.service"] == callee
            assert r.attributes["http.response.status_code"] == 200
    grpc_call = next(r for r in spans if r.service == "catalog")
    assert grpc_call.attributes["network.protocol.version"] == "2"
    assert {r.resource.get("service.version") for r in spans if r.service == "orders"} <= {
        "v1",
        "v2",
    }


def test_up_with_a_missing_directory_says_so_in_one_line(tmp_path: Path) -> None:
    for target, want in (
        (tmp_path / "nowhere", f"meshctl: {tmp_path / 'nowhere'}: no such directory"),
        (tmp_path, f"meshctl: {tmp_path / 'up.yaml'}: not found"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mesh_ctl", "up", str(target)], cwd=ROOT,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 1
        assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
        assert done.stderr.startswith(want), done.stderr


def _start_up(*extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "mesh_ctl", "up", "examples/shop", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


async def test_up_with_the_edge_port_taken_prints_the_cause_and_keeps_the_logs() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _start_up("--edge-port", str(port))
        try:
            with trio.fail_after(10):
                out, _ = await trio.to_thread.run_sync(proc.communicate)
        finally:
            proc.kill()
    assert proc.returncode == 1, out
    assert "edge is not ready: configuration" in out, out
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in out
    kept = Path(
        next(line for line in out.splitlines() if line.startswith("logs kept in ")).split()[-1]
    )
    try:
        assert f"the end of {kept / 'edge.log'}:" in out
        assert "Address already in use" in (kept / "edge.log").read_text()
        assert not (kept.parent / "data").exists()  # the CA's keys go; the logs stay
        assert _processes_mentioning(str(kept.parent)) == []
    finally:
        shutil.rmtree(kept.parent)


async def test_sigterm_during_start_up_stops_everything() -> None:
    proc = _start_up("--edge-port", str(free_port()))
    assert proc.stdout is not None
    try:
        with trio.fail_after(60):
            first = await trio.to_thread.run_sync(proc.stdout.readline)
            assert first.startswith("control plane on "), first
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            if not line.startswith("starting: 0/6 ready"):
                rest, _ = await trio.to_thread.run_sync(proc.communicate)
                raise AssertionError(first + line + rest)
        state = first.split(" CA in ")[1].strip().removesuffix("/data/ca")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        with trio.fail_after(15):
            rest, _ = await trio.to_thread.run_sync(proc.communicate)
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert "stopping: draining sidecars and the edge" in rest
    assert "Traceback" not in rest
    assert _processes_mentioning(state) == []
    assert not Path(state).exists()
    assert took < 5, f"stopping took {took:.1f}s"
