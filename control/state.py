"""What the control plane holds in memory, and how a change reaches disk and watchers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from control.store import ResourceFile, Resources
from sidecar.config.parse import Document


class ControlState:
    """Resources in force; `changed` is set (and replaced) whenever they change. Lives on
    the control plane's asyncio loop: mutate it from there only."""

    def __init__(self, data_dir: Path) -> None:
        self.file = ResourceFile(data_dir)
        self.resources: Resources = self.file.load()
        self.changed = asyncio.Event()

    def apply(self, docs: Iterable[Document]) -> tuple[int, list[str]]:
        new, outcome = self.resources.apply(docs)
        self._put(new)
        return new.version, outcome

    def delete(self, kind: str, namespace: str, name: str) -> int:
        new = self.resources.delete(kind, namespace, name)
        self._put(new)
        return new.version

    def _put(self, new: Resources) -> None:
        if new is self.resources:
            return
        self.file.save(new)  # on disk before in force: an acknowledged change survives
        self.resources = new
        self.changed.set()
        self.changed = asyncio.Event()
