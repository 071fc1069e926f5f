"""What the control plane holds in memory, and how a change reaches disk and watchers.

Lives on the control plane's asyncio loop: mutate it from there only. Every change to the
resources or the registry bumps `generation` and wakes the config watches (`changed`), which
recompute their sidecar's documents and send them if they differ.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control import api
from control.registry import Instance, Registry
from control.snapshot import documents_for
from control.store import ResourceFile, Resources
from sidecar.config.parse import Document


@dataclass(slots=True)
class Subscriber:
    """One connected sidecar's config watch."""

    instance: Instance
    sent: int = 0  # generation of the last snapshot it was sent (or is current at)
    acked: int = 0  # generation it confirmed being current at
    error: str = ""  # its last NACK, until a later ACK
    identity_expires: str = ""  # its SVID's not_after (ISO 8601), as it reported
    gateway: bool = False  # an edge gateway: it also gets Gateways and their routes
    docs: list[dict[str, Any]] | None = field(default=None, repr=False)


class ControlState:
    def __init__(self, data_dir: Path, now: float) -> None:
        self.file = ResourceFile(data_dir)
        self.resources: Resources = self.file.load()
        self.registry_path = data_dir / "registry.json"
        self.registry = Registry()
        if self.registry_path.exists():
            self.registry.load(json.loads(self.registry_path.read_text()), now)
        self.subscribers: dict[str, Subscriber] = {}
        self.generation = 1
        self.stopping = False  # shutting down: keep registrations for the restart
        self.changed = asyncio.Event()
        self.progress = asyncio.Event()  # set (and replaced) when a sidecar becomes current
        # (namespace, service, gateway) -> (generation, documents, encoded snapshot message):
        # a hundred sidecars of one service share one computation and one encoding per push
        self._snapshots: dict[tuple[str, str, bool], tuple[int, list[dict[str, Any]], bytes]] = {}

    def snapshot(
        self, namespace: str, service: str, gateway: bool
    ) -> tuple[list[dict[str, Any]], bytes]:
        """The documents for sidecars of `namespace/service` at this generation, and the
        `{"snapshot": …}` message carrying them, encoded."""
        key = (namespace, service, gateway)
        hit = self._snapshots.get(key)
        if hit is not None and hit[0] == self.generation:
            return hit[1], hit[2]
        docs = documents_for(self.resources, self.registry, namespace, service, gateway=gateway)
        if hit is not None and hit[1] == docs:
            docs = hit[1]  # unchanged: the same object, so watches compare by identity
        message = api.encode({"snapshot": {"version": self.generation, "resources": docs}})
        self._snapshots[key] = (self.generation, docs, message)
        return docs, message

    def current_at(self, sub: Subscriber, generation: int) -> None:
        """`sub` has (ACKed, or needs nothing new for) `generation`."""
        if generation > sub.acked:
            sub.acked = generation
            self._progressed()

    def lagging(self, generation: int) -> list[Instance]:
        """Registered instances whose sidecar is not current at `generation` (or not
        connected: after a control plane restart, until it is back or expires)."""
        out = []
        for inst in self.registry.instances.values():
            sub = self.subscribers.get(inst.id)
            if sub is None or sub.acked < generation:
                out.append(inst)
        return out

    def _progressed(self) -> None:
        self.progress.set()
        self.progress = asyncio.Event()

    # -- resources ----------------------------------------------------------------------
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
        self.bump()

    # -- registry -----------------------------------------------------------------------
    def connect(self, sub: Subscriber, now: float) -> None:
        old = self.subscribers.pop(sub.instance.id, None)
        if old is not None:
            old.docs = None
        self.subscribers[sub.instance.id] = sub
        known = self.registry.instances.get(sub.instance.id)
        if known is not None and known.ready:  # a sidecar back after a control plane restart
            sub.instance = known
        self.registry.put(sub.instance, now)
        self.bump(registry=True)

    def disconnect(self, sub: Subscriber) -> None:
        if self.subscribers.get(sub.instance.id) is sub:
            del self.subscribers[sub.instance.id]
            if not self.stopping and self.registry.remove(sub.instance.id):
                self.bump(registry=True)

    def set_ready(self, sub: Subscriber, ready: bool, now: float) -> None:
        if self.registry.set_ready(sub.instance.id, ready, now):
            sub.instance = self.registry.instances[sub.instance.id]
            self.bump(registry=True)

    def heartbeat(self, sub: Subscriber, now: float) -> None:
        if sub.instance.id in self.registry.instances:
            self.registry.touch(sub.instance.id, now)
        else:  # expired while silent, then heard from again
            self.registry.put(sub.instance, now)
            self.bump(registry=True)

    def expire(self, now: float) -> list[Instance]:
        dead = self.registry.expire(now)
        if dead:
            self.bump(registry=True)
        return dead

    def bump(self, *, registry: bool = False) -> None:
        self.generation += 1
        if registry:
            tmp = self.registry_path.with_suffix(".tmp")
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                json.dump(self.registry.to_json(), f)
            os.replace(tmp, self.registry_path)
        self.changed.set()
        self.changed = asyncio.Event()
        self._progressed()
