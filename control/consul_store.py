"""The control plane's resources in Consul KV (`meshctl server --store consul://…`).

Each document is one key, `<prefix>/resources/<Kind>/<namespace>/<name>`, holding its JSON.
A change is one transaction (`PUT /v1/txn`) of check-and-set operations against the
ModifyIndex this replica last saw for every key it touches (0: the key must not exist), so two
replicas writing at once cannot lose either write: the later one's transaction is rolled
back whole (CasConflict), and the control state re-reads and applies again. Consul takes at
most 64 operations per transaction; a bigger change is written in several, each still
checked, in order (a crash between them leaves a prefix of the change, every document valid).

Every replica watches the prefix with a blocking query and puts what it reads in force, so
all replicas serve the same resources; the version is Consul's index for the prefix, the
same on every replica. A key someone wrote by hand that does not parse is left out, with an
error naming the key. The last resources read are also cached in `<data-dir>/resources.json`:
a replica that starts while Consul is down serves those, and catches up once it is back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from control.store import Key, ResourceFile, Resources
from sidecar.config.parse import kind_key, parse_resource
from sidecar.discovery.consul import (
    TXN_MAX_OPS,
    ConsulError,
    KvEntry,
    parse_kv,
    txn_delete,
    txn_set,
)
from sidecar.discovery.consul_client import ConsulClient
from sidecar.errors import ConfigError

log = logging.getLogger("weft.consul")


class ConsulResources:
    def __init__(self, client: ConsulClient, cache: ResourceFile) -> None:
        self.client = client
        self.cache = cache
        self.root = f"{client.config.prefix}/resources"
        self.indexes: dict[Key, int] = {}  # ModifyIndex of each key as last seen

    def key(self, k: Key) -> str:
        kind, ns, name = k
        return f"{self.root}/{kind}/{ns}/{name}"

    async def load(self) -> Resources:
        """What Consul holds now (ConsulError when it cannot be read)."""
        index, entries = await self.client.kv_list(self.root)
        return self.decode(index, entries)

    def decode(self, index: int, entries: list[KvEntry]) -> Resources:
        docs: dict[Key, dict[str, Any]] = {}
        indexes: dict[Key, int] = {}
        for entry in entries:
            try:
                data = json.loads(entry.value)
                res = parse_resource(data, f"Consul key {entry.key}")
                k = (kind_key(res), res.meta.namespace, res.meta.name)
                if self.key(k) != entry.key:
                    raise ConfigError(f"belongs under {self.key(k)}", source=entry.key)
            except (ValueError, ConfigError) as exc:
                if entry.value:  # folders have no value
                    log.error("ignoring Consul key %s: %s", entry.key, exc)
                continue
            docs[k] = data
            indexes[k] = entry.modify_index
        self.indexes = indexes
        resources = Resources(version=index, docs=docs)
        self.cache.save(resources)
        return resources

    async def commit(self, old: Resources, new: Resources) -> Resources:
        """Write the difference; CasConflict (nothing of that batch written) if another
        writer got there first."""
        ops: list[dict[str, Any]] = []
        keys: list[Key] = []
        for k, doc in sorted(new.docs.items()):
            if old.docs.get(k) != doc:
                ops.append(txn_set(self.key(k), json.dumps(doc).encode(), self.indexes.get(k, 0)))
                keys.append(k)
        for k in sorted(set(old.docs) - set(new.docs)):
            ops.append(txn_delete(self.key(k), self.indexes.get(k, 0)))
            keys.append(k)
        version = old.version
        for start in range(0, len(ops), TXN_MAX_OPS):
            written = await self.client.txn(ops[start : start + TXN_MAX_OPS])
            for k in keys[start : start + TXN_MAX_OPS]:
                if k in new.docs:
                    self.indexes[k] = written.get(self.key(k), 0)
                    version = max(version, self.indexes[k])
                else:
                    self.indexes.pop(k, None)
        committed = replace(new, version=max(version, old.version + 1))
        self.cache.save(committed)
        return committed

    async def watch(self, put: Callable[[Resources], None]) -> None:
        """Hand every change Consul reports to `put`, forever."""
        async for index, body in self.client.watch(f"/v1/kv/{self.root}/", {"recurse": "true"}):
            try:
                entries = [] if body is None else parse_kv(body)
            except ConsulError as exc:
                log.error("%s", exc)
                continue
            put(self.decode(index, entries))
