"""What the control plane holds in memory, and how a change reaches disk and watchers.

Lives on the control plane's asyncio loop: mutate it from there only. Every change to the
resources or the registry bumps `generation` and wakes the config watches (`changed`), which
recompute their sidecar's documents and send them if they differ.

Two backends. Builtin: resources in `<data-dir>/resources.json`, endpoints from the
registry of connected sidecars. Consul (`consul` given): resources in Consul KV, written with
check-and-set and read back by every replica's watch (`put_resources`), endpoints from
Consul's passing instances (`put_endpoints`); the registry then only tracks this replica's
own sidecars (status, and who a shift waits for).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control import api, delta
from control.metrics import ControlMetrics
from control.registry import Instance, Registry
from control.snapshot import ServiceKey, documents_for
from control.store import RegistryDir, ResourceFile, Resources
from control.top import Sample, history
from sidecar.config.parse import Document
from sidecar.discovery.consul import CasConflict
from sidecar.errors import ConfigError

if TYPE_CHECKING:
    from control.consul_store import ConsulResources

Delta = tuple[list[dict[str, Any]], bytes | None]
# What a sidecar is sent depends on: (namespace, service, gateway, the services it calls)
View = tuple[str, str, bool, "frozenset[ServiceKey] | None"]
CAS_ATTEMPTS = 5  # a change that loses this many races in a row is reported, not retried


@dataclass(slots=True)
class Subscriber:
    """One connected sidecar's config watch."""

    instance: Instance
    sent: int = 0  # generation of the last snapshot it was sent (or is current at)
    acked: int = 0  # generation it confirmed being current at
    error: str = ""  # its last NACK, until a later ACK
    identity_expires: str = ""  # its SVID's not_after (ISO 8601), as it reported
    gateway: bool = False  # an edge gateway: it also gets Gateways and their routes
    deltas: bool = False  # it takes incremental pushes (control/delta.py)
    calls: frozenset[ServiceKey] | None = None  # the services it calls, if it said
    answered: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # last push
    docs: list[dict[str, Any]] | None = field(default=None, repr=False)
    changed_at: float = 0.0  # when the change in its last snapshot was made (until ACKed)
    samples: deque[Sample] = field(default_factory=history, repr=False)  # for `meshctl top`

    @property
    def view(self) -> View:
        return (self.instance.namespace, self.instance.service, self.gateway, self.calls)


class ControlState:
    def __init__(
        self,
        data_dir: Path,
        now: float,
        *,
        consul: ConsulResources | None = None,
        resources: Resources | None = None,
        read_only: str = "",
    ) -> None:
        """`read_only`: resources come from elsewhere (the Kubernetes API server) and
        `put_resources`; why changes here are refused."""
        self.file = ResourceFile(data_dir)
        self.consul = consul
        self.read_only = read_only
        self.resources: Resources = self.file.load() if resources is None else resources
        self._writing = asyncio.Lock()
        # Consul mode: the passing instances of each mesh service, as Consul reports them
        self.discovered: dict[str, list[Instance]] | None = {} if consul is not None else None
        self._endpoints: Registry | None = None
        self.registry_dir = RegistryDir(data_dir)
        self.registry = Registry()
        self.registry.load(self.registry_dir.load(), now)
        self.subscribers: dict[str, Subscriber] = {}
        self.generation = 1
        self.changed_at = time.monotonic()  # when `generation` was made
        self.metrics = ControlMetrics()
        self.metrics.watch(lambda: len(self.subscribers), lambda: self.generation)
        self.stopping = False  # shutting down: keep registrations for the restart
        self.changed = asyncio.Event()
        self.progress = asyncio.Event()  # set (and replaced) when a sidecar becomes current
        self.reported = asyncio.Event()  # set (and replaced) when a sidecar's counters arrive
        # a sidecar's view (Subscriber.view) -> (generation, documents, encoded snapshot
        # message): a hundred sidecars of one service share one computation and one
        # encoding per push
        self._snapshots: dict[View, tuple[int, list[dict[str, Any]], bytes]] = {}
        # (view, id of the documents a sidecar has) -> (those documents, the encoded delta
        # to `_deltas_generation`'s or None): one diff and one encoding per push for all
        # the sidecars of a service that were current
        self._deltas: dict[tuple[View, int], Delta] = {}
        self._deltas_generation = 0

    def snapshot(self, view: View) -> tuple[list[dict[str, Any]], bytes]:
        """The documents for sidecars with this view at this generation, and the
        `{"snapshot": …}` message carrying them, encoded."""
        hit = self._snapshots.get(view)
        if hit is not None and hit[0] == self.generation:
            return hit[1], hit[2]
        if hit is None and len(self._snapshots) > 2 * len(self.subscribers) + 16:
            # views come from sidecars (their `calls`): keep those still connected
            kept = {sub.view for sub in self.subscribers.values()}
            self._snapshots = {v: e for v, e in self._snapshots.items() if v in kept}
        namespace, service, gateway, calls = view
        docs = documents_for(
            self.resources, self.endpoints, namespace, service, gateway=gateway, calls=calls
        )
        if hit is not None and hit[1] == docs:
            docs = hit[1]  # unchanged: the same object, so watches compare by identity
        message = api.encode({"snapshot": {"version": self.generation, "resources": docs}})
        self._snapshots[view] = (self.generation, docs, message)
        return docs, message

    def delta(self, view: View, have: list[dict[str, Any]]) -> bytes | None:
        """The encoded `{"delta": …}` from the documents `have` to this generation's for
        sidecars with this view (None: nothing changed)."""
        key = (view, id(have))
        hit = self._deltas.get(key)
        if hit is not None and self._deltas_generation == self.generation:
            return hit[1]
        if self._deltas_generation != self.generation:  # diffs to an older one: no more use
            self._deltas.clear()
            self._deltas_generation = self.generation
        docs, _ = self.snapshot(view)
        change = delta.diff(have, docs)
        message = None
        if change is not None:
            message = api.encode({"delta": {"version": self.generation, **change}})
        self._deltas[key] = (have, message)  # `have` held: its id is not reused meanwhile
        return message

    def current_at(self, sub: Subscriber, generation: int) -> None:
        """`sub` has (ACKed, or needs nothing new for) `generation`."""
        if generation > sub.acked:
            sub.acked = generation
            self._progressed()

    def sampled(self, sub: Subscriber, sample: Sample) -> None:
        sub.samples.append(sample)
        self.reported.set()
        self.reported = asyncio.Event()

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

    @property
    def endpoints(self) -> Registry:
        """Where snapshots' endpoints come from: the registry, or what Consul reported."""
        if self.discovered is None:
            return self.registry
        if self._endpoints is None:
            self._endpoints = Registry()
            for instances in self.discovered.values():
                for inst in instances:
                    self._endpoints.put(inst, 0.0)
        return self._endpoints

    def versions(self, namespace: str, service: str) -> set[str]:
        """The versions of a service that have instances (for checking a shift)."""
        known = (*self.registry.instances.values(), *self.endpoints.instances.values())
        return {i.version for i in known if (i.namespace, i.service) == (namespace, service)}

    # -- resources ----------------------------------------------------------------------
    async def apply(self, docs: Iterable[Document]) -> tuple[int, list[str]]:
        """ConfigError if a document is invalid; ConsulError if Consul cannot take it."""
        docs = list(docs)
        outcome: list[str] = []

        def change(current: Resources) -> Resources:
            nonlocal outcome
            new, outcome = current.apply(docs)
            return new

        version = await self._change(change)
        return version, outcome

    async def delete(self, kind: str, namespace: str, name: str) -> int:
        return await self._change(lambda current: current.delete(kind, namespace, name))

    async def _change(self, change: Callable[[Resources], Resources]) -> int:
        if self.read_only:
            raise ConfigError(self.read_only)
        async with self._writing:
            for attempt in range(CAS_ATTEMPTS):
                new = change(self.resources)
                if new is self.resources:
                    return new.version
                if self.consul is None:
                    self.file.save(new)  # on disk before in force: an acknowledged change survives
                    self.resources = new
                    self.bump()
                    return new.version
                try:
                    committed = await self.consul.commit(self.resources, new)
                except CasConflict:
                    if attempt == CAS_ATTEMPTS - 1:
                        raise
                    self.put_resources(await self.consul.load())  # someone else wrote first
                    continue
                self.resources = committed
                self.bump()
                return committed.version
        raise AssertionError("unreachable")

    def put_resources(self, new: Resources) -> None:
        """What Consul (this replica's writes and everyone else's) or the API server holds
        now."""
        changed = new.docs != self.resources.docs
        self.resources = new
        if changed:
            self.bump()

    def put_endpoints(self, service: str, instances: list[Instance]) -> None:
        """Consul's passing instances of one mesh service (none: it is gone)."""
        assert self.discovered is not None
        if self.discovered.get(service, []) == instances:
            return
        if instances:
            self.discovered[service] = instances
        else:
            self.discovered.pop(service, None)
        self._endpoints = None
        self.bump()

    # -- registry -----------------------------------------------------------------------
    def _registered(self, *instance_ids: str) -> None:
        """Instances changed or left: the registry's copy on disk follows, and the watches
        are told (once)."""
        for instance_id in instance_ids:
            inst = self.registry.instances.get(instance_id)
            if inst is None:
                self.registry_dir.delete(instance_id)
            else:
                self.registry_dir.save(instance_id, inst.to_json())
        self.bump()

    def connect(self, sub: Subscriber, now: float) -> None:
        old = self.subscribers.pop(sub.instance.id, None)
        if old is not None:
            old.docs = None
        self.subscribers[sub.instance.id] = sub
        known = self.registry.instances.get(sub.instance.id)
        if known is not None and known.ready:  # a sidecar back after a control plane restart
            sub.instance = known
        self.registry.put(sub.instance, now)
        self._registered(sub.instance.id)

    def disconnect(self, sub: Subscriber) -> None:
        if self.subscribers.get(sub.instance.id) is sub:
            del self.subscribers[sub.instance.id]
            if not self.stopping and self.registry.remove(sub.instance.id):
                self._registered(sub.instance.id)

    def set_ready(self, sub: Subscriber, ready: bool, now: float) -> None:
        if self.registry.set_ready(sub.instance.id, ready, now):
            sub.instance = self.registry.instances[sub.instance.id]
            self._registered(sub.instance.id)

    def heartbeat(self, sub: Subscriber, now: float) -> None:
        if sub.instance.id in self.registry.instances:
            self.registry.touch(sub.instance.id, now)
        else:  # expired while silent, then heard from again
            self.registry.put(sub.instance, now)
            self._registered(sub.instance.id)

    def expire(self, now: float) -> list[Instance]:
        dead = self.registry.expire(now)
        if dead:
            self._registered(*(inst.id for inst in dead))
        return dead

    def bump(self) -> None:
        self.generation += 1
        self.changed_at = time.monotonic()
        self.changed.set()
        self.changed = asyncio.Event()
        self._progressed()
