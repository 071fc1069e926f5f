"""The current snapshot: one reference, swapped atomically; readers keep what they took."""

from __future__ import annotations

from sidecar.config.snapshot import Snapshot


class SnapshotStore:
    """Holds the snapshot in force. Requests read `current` once and keep that object."""

    __slots__ = ("current",)

    def __init__(self, initial: Snapshot) -> None:
        self.current = initial

    def swap(self, new: Snapshot) -> Snapshot:
        old, self.current = self.current, new
        return old
