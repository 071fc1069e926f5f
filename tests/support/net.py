"""Small socket helpers for tests that start real processes."""

from __future__ import annotations

from mesh_ctl.ports import free_port

__all__ = ["free_port"]
