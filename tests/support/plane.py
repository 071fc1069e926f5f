"""Control planes for tests: in the test process (its asyncio loop in a thread) with a fresh
CA, or `meshctl server` as a process."""

from __future__ import annotations

import contextlib
import datetime
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ca import keystore
from control.server import ControlPlane


@contextlib.contextmanager
def running_plane(data: Path) -> Iterator[ControlPlane]:
    keystore.init(data, "weft.local", datetime.datetime.now(datetime.UTC))
    srv = ControlPlane(data, "127.0.0.1:0")
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
         "--listen", f"127.0.0.1:{port}", *extra],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert f"control plane on 127.0.0.1:{port}" in line, line
    return proc
