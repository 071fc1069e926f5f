"""Control planes for tests: in the test process (its asyncio loop in a thread) with a fresh
CA, or `meshctl server` as a process."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ca import keystore, tokens
from ca.spiffe import SpiffeId
from control.server import ControlPlane
from control.state import ControlState
from sidecar.config.ingress import IngressListeners
from sidecar.modes.sidecar import SidecarOptions, SidecarServer


@contextlib.contextmanager
def running_plane(data: Path) -> Iterator[ControlPlane]:
    keystore.init(data, "weft.local", datetime.datetime.now(datetime.UTC))
    srv = ControlPlane(data, "127.0.0.1:0", http_listen="127.0.0.1:0")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(0)


@dataclass(frozen=True)
class PlaneAt:
    """Where a control plane running as a process is: what clients of it need."""

    data_dir: Path
    port: int


def start_server(data: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    """`meshctl server` as a process, returned once it listens (it logs a line then)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh_ctl", "server", "--data-dir", str(data),
         "--listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0", *extra],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert f"control plane on 127.0.0.1:{port}" in line, line
    return proc


def mesh_sidecar(
    data: Path,
    control_plane: str,
    service: str,
    app_port: int,
    version: str = "",
    *,
    gateway: bool = False,
    discovery: str = "",
    namespace: str = "default",
    upstreams: tuple[tuple[str, int], ...] = (),
    protocol: str = "HTTP",
    ingress: IngressListeners | None = None,
) -> SidecarServer:
    """A sidecar joining the mesh whose CA is in `data` (a fresh join token), on ports 0."""
    token = tokens.create(
        keystore.token_key(data), SpiffeId("weft.local", namespace, service),
        now=datetime.datetime.now(datetime.UTC), ttl=datetime.timedelta(hours=1),
    )  # fmt: skip
    return SidecarServer(SidecarOptions(
        service=service, namespace=namespace, version=version, app_port=app_port,
        control_plane=control_plane,
        token=token, ca_file=str(data / "ca" / "root.pem"), inbound_address="127.0.0.1",
        inbound_port=0, admin_port=0, outbound_port=0, gateway=gateway, discovery=discovery,
        upstreams=upstreams, protocol=protocol, ingress=ingress,
    ))  # fmt: skip


async def on_plane(plane: ControlPlane, fn: Callable[[ControlState], Awaitable[Any]]) -> Any:
    """Run `fn(state)` on the control plane's own loop (it owns its state); its result."""
    assert plane._loop is not None and plane.state is not None
    state = plane.state

    async def run() -> Any:
        return await fn(state)

    done = asyncio.run_coroutine_threadsafe(run(), plane._loop)
    return await trio.to_thread.run_sync(done.result)
