"""Small socket helpers for tests that start real processes."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port nothing listens on now (for processes that must be told their port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
