"""A control plane in the test process (its asyncio loop in a thread), with a fresh CA."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
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
