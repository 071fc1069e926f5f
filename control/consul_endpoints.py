"""Mesh endpoints from Consul: the passing instances Weft sidecars registered.

One blocking query on `/v1/catalog/services` finds the services with the `weft` tag; each
of those gets its own blocking query on `/v1/health/service/<name>?passing&tag=weft`. What
they answer replaces that service's endpoints in the control state, which pushes new
snapshots. Every replica watching the same Consul computes the same endpoints. When Consul
cannot be reached the last endpoints stay (each watch retries with backoff); a service
leaves only when the catalog says it is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from control.registry import Instance
from sidecar.discovery.consul import MESH_TAG, ConsulError, mesh_services, parse_health
from sidecar.discovery.consul_client import ConsulClient

log = logging.getLogger("weft.consul")

Publish = Callable[[str, list[Instance]], None]  # service name, its passing instances


class ConsulEndpoints:
    def __init__(self, client: ConsulClient, publish: Publish) -> None:
        self.client = client
        self.publish = publish
        self._watches: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        try:
            async for _, body in self.client.watch("/v1/catalog/services", {}):
                try:
                    names = set(mesh_services(body or {}))
                except ConsulError as exc:
                    log.error("%s", exc)
                    continue
                for name in sorted(set(self._watches) - names):
                    self._watches.pop(name).cancel()
                    self.publish(name, [])
                for name in sorted(names - set(self._watches)):
                    self._watches[name] = asyncio.create_task(self._service(name))
        finally:
            for task in self._watches.values():
                task.cancel()
            for task in self._watches.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _service(self, name: str) -> None:
        params = {"passing": "true", "tag": MESH_TAG}
        async for _, body in self.client.watch(f"/v1/health/service/{name}", params):
            try:
                found = parse_health(body or [], name)
            except ConsulError as exc:
                log.error("%s", exc)
                continue
            self.publish(name, [
                Instance(
                    id=i.id, namespace=i.namespace, service=i.service, version=i.version,
                    address=i.address, port=i.port, protocol=i.protocol, ready=True,
                    weight=i.weight,
                )
                for i in found
            ])  # fmt: skip
