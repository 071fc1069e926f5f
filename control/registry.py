"""The builtin registry: service instances as their sidecars report them (pure core).

A sidecar registers its instance when its config watch opens, marks it ready once its first
snapshot is in force, heartbeats on the watch, and deregisters on drain or when the watch
ends. An instance silent for `expiry_s` is removed (a hung host sends no FIN). The registry
is saved beside the resources, an instance per file (control/store.py's RegistryDir), so a
control plane restart does not empty it: loaded instances count as seen at load time and
must be confirmed by their sidecar's reconnect before they expire, so endpoints do not flap
while sidecars find their way back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

EXPIRY_S = 15.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Instance:
    id: str  # random per sidecar process
    namespace: str
    service: str
    version: str
    address: str
    port: int  # the sidecar's inbound (mTLS) port
    protocol: str = "HTTP"  # HTTP | HTTP2 | GRPC | TCP: what the app speaks
    ready: bool = False
    weight: int = 1  # its share of its version's traffic, relative to the others
    app_port: int = 0  # the app's own port (dialled at the instance's address: intercepted)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        return cls(
            id=str(data["id"]), namespace=str(data["namespace"]), service=str(data["service"]),
            version=str(data.get("version", "")), address=str(data["address"]),
            port=int(data["port"]), protocol=str(data.get("protocol", "HTTP")),
            ready=bool(data.get("ready", False)), weight=int(data.get("weight", 1)),
            app_port=int(data.get("app_port", 0)),
        )  # fmt: skip


class Registry:
    def __init__(self, expiry_s: float = EXPIRY_S) -> None:
        self.expiry_s = expiry_s
        self.instances: dict[str, Instance] = {}
        self.seen: dict[str, float] = {}

    def put(self, instance: Instance, now: float) -> bool:
        """Add or update an instance; True if endpoints changed."""
        before = self.instances.get(instance.id)
        self.instances[instance.id] = instance
        self.seen[instance.id] = now
        return before != instance

    def touch(self, instance_id: str, now: float) -> None:
        if instance_id in self.instances:
            self.seen[instance_id] = now

    def set_ready(self, instance_id: str, ready: bool, now: float) -> bool:
        inst = self.instances.get(instance_id)
        if inst is None or inst.ready == ready:
            return False
        return self.put(replace(inst, ready=ready), now)

    def remove(self, instance_id: str) -> bool:
        self.seen.pop(instance_id, None)
        return self.instances.pop(instance_id, None) is not None

    def expire(self, now: float) -> list[Instance]:
        """Remove and return the instances not seen for `expiry_s`."""
        dead = [i for i, t in self.seen.items() if now - t > self.expiry_s]
        return [self.instances.pop(i) for i in dead if self.seen.pop(i, None) is not None]

    def endpoints(self, namespace: str, service: str) -> list[Instance]:
        """Ready instances of a service, in a stable order."""
        return sorted(
            (i for i in self.instances.values()
             if i.ready and i.namespace == namespace and i.service == service),
            key=lambda i: (i.version, i.address, i.port, i.id),
        )  # fmt: skip

    def services(self) -> set[tuple[str, str]]:
        return {(i.namespace, i.service) for i in self.instances.values()}

    def to_json(self) -> list[dict[str, Any]]:
        return [i.to_json() for i in sorted(self.instances.values(), key=lambda i: i.id)]

    def load(self, items: list[dict[str, Any]], now: float) -> None:
        for item in items:
            self.put(Instance.from_json(item), now)
