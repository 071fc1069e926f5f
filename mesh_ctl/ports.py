"""Ports for processes that must be told theirs before they start."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from mesh_ctl.common import CliError

_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def reserve(*ports: int) -> None:
    """Ports this process was told to use (an edge's): free_port never hands them out,
    though what will listen there may not have bound them yet."""
    _GIVEN.update(ports)


def free_port() -> int:
    """A free port below the kernel's ephemeral range, never the same one twice.

    A port from bind(0) is an ephemeral port: between closing the probe and the child
    binding it, any outgoing connection on the machine may take it as its source port
    (and bind(0) may hand it out again). Ports below the range are only ever taken by
    listeners that ask for them by number."""
    high = max(_ephemeral_low(), 12000)
    for _ in range(200):
        port = random.randrange(10000, high)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise CliError("no free port found on 127.0.0.1 below the ephemeral range")
