"""The control plane's resources: validated documents, versioned, kept on disk.

Theory of operation. `Resources` is a pure value: the documents in force keyed by (kind,
namespace, name) and a version that grows by one per accepted change. `apply` checks every
document on its own with the data plane's parser (the same errors, naming file, document and
field) and is all-or-nothing: one bad document and nothing changes. `ResourceFile` is the I/O
shell that loads and saves it as one JSON file, replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sidecar.config.parse import Document, kind_key, parse_resource
from sidecar.config.resources import TLSCertificate
from sidecar.errors import ConfigError

Key = tuple[str, str, str]  # kind, namespace, name

# How users name kinds on the command line (`meshctl get routes`), as kubectl does.
KIND_ALIASES = {
    "gateway": "Gateway", "gateways": "Gateway", "gw": "Gateway",
    "httproute": "HTTPRoute", "httproutes": "HTTPRoute", "route": "HTTPRoute",
    "routes": "HTTPRoute",
    "grpcroute": "GRPCRoute", "grpcroutes": "GRPCRoute",
    "tcproute": "TCPRoute", "tcproutes": "TCPRoute",
    "tlsroute": "TLSRoute", "tlsroutes": "TLSRoute",
    "service": "Service", "services": "Service", "svc": "Service",
    "authorizationpolicy": "AuthorizationPolicy", "authorizationpolicies": "AuthorizationPolicy",
    "policy": "AuthorizationPolicy", "policies": "AuthorizationPolicy",
    "backendtrafficpolicy": "BackendTrafficPolicy",
    "backendtrafficpolicies": "BackendTrafficPolicy", "btp": "BackendTrafficPolicy",
    "meshconfig": "MeshConfig", "meshconfigs": "MeshConfig",
    "securitypolicy": "SecurityPolicy", "securitypolicies": "SecurityPolicy",
    "requestvalidation": "RequestValidation", "requestvalidations": "RequestValidation",
    "clienttrafficpolicy": "ClientTrafficPolicy", "clienttrafficpolicies": "ClientTrafficPolicy",
    "ctp": "ClientTrafficPolicy", "configmap": "ConfigMap", "configmaps": "ConfigMap",
    "cm": "ConfigMap",
    "secret": "Secret", "secrets": "Secret",
    "referencegrant": "ReferenceGrant", "referencegrants": "ReferenceGrant",
    "namespace": "Namespace", "namespaces": "Namespace", "ns": "Namespace",
    "endpointslice": "EndpointSlice", "endpointslices": "EndpointSlice",
    "gatewayclass": "GatewayClass", "gatewayclasses": "GatewayClass",
}  # fmt: skip


def kind_of(name: str) -> str:
    """The kind a user means by `name` (case-insensitive, plural or short); ValueError."""
    kind = KIND_ALIASES.get(name.lower())
    if kind is None:
        raise ValueError(
            f"unknown kind {name!r}; known: {', '.join(sorted(set(KIND_ALIASES.values())))}"
        )
    return kind


@dataclass(frozen=True, slots=True)
class Resources:
    version: int = 0
    docs: Mapping[Key, dict[str, Any]] = field(default_factory=dict)

    def apply(self, documents: Iterable[Document]) -> tuple[Resources, list[str]]:
        """The resources with `documents` applied, and what happened to each ("created",
        "configured", "unchanged"); ConfigError, naming the document, if any is invalid."""
        docs = dict(self.docs)
        outcome: list[str] = []
        seen: dict[Key, str] = {}
        for doc in documents:
            if doc.data is None:
                continue
            res = parse_resource(doc.data, doc.source)
            if isinstance(res, TLSCertificate):
                raise ConfigError(
                    "the control plane cannot read certificate files on your machine; "
                    "apply a Secret of type kubernetes.io/tls instead",
                    source=doc.source, field="kind",
                )  # fmt: skip
            key = (kind_key(res), res.meta.namespace, res.meta.name)
            if key in seen:
                raise ConfigError(
                    f"duplicate {_name(key)} (first in {seen[key]})", source=doc.source
                )
            seen[key] = doc.source
            data = _canonical(doc.data)
            before = docs.get(key)
            outcome.append(
                f"{_name(key)} "
                + ("created" if before is None else "unchanged" if before == data else "configured")
            )
            docs[key] = data
        if docs == self.docs:
            return self, outcome
        return replace(self, version=self.version + 1, docs=docs), outcome

    def delete(self, kind: str, namespace: str, name: str) -> Resources:
        key = (kind, namespace, name)
        if key not in self.docs:
            raise KeyError(f"{_name(key)} not found")
        docs = {k: v for k, v in self.docs.items() if k != key}
        return replace(self, version=self.version + 1, docs=docs)

    def select(
        self, kind: str, namespace: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        """Documents of `kind` (in `namespace`, named `name` when given), sorted by key."""
        return [
            d for (k, ns, n), d in sorted(self.docs.items())
            if k == kind and namespace in (None, ns) and name in (None, n)
        ]  # fmt: skip


def _name(key: Key) -> str:
    kind, ns, name = key
    return f"{kind} {ns}/{name}"


def _canonical(data: object) -> dict[str, Any]:
    """A JSON-safe deep copy (YAML may hold dates and other non-JSON scalars as text)."""
    out = json.loads(json.dumps(data, default=str))
    assert isinstance(out, dict)
    return out


class ResourceFile:
    """`<data-dir>/resources.json`: the resources, saved whole and replaced atomically."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "resources.json"

    def load(self) -> Resources:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return Resources()
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the stored resources: {exc}", source=str(self.path)
            ) from None
        docs: dict[Key, dict[str, Any]] = {}
        for item in raw["resources"]:
            docs[(item["kind"], item["namespace"], item["name"])] = item["document"]
        return Resources(version=int(raw["version"]), docs=docs)

    def save(self, resources: Resources) -> None:
        items = [
            {"kind": k, "namespace": ns, "name": n, "document": d}
            for (k, ns, n), d in sorted(resources.docs.items())
        ]
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps({"version": resources.version, "resources": items}, indent=1)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class RegistryDir:
    """`<data-dir>/registry/`: one small file per registered instance, written when it
    changes and removed when it goes, so a registration costs one small write however
    large the mesh (saving the whole registry per change made a thousand sidecars
    connecting at once quadratic) and a control plane killed at any moment restarts with
    every instance it had confirmed."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "registry"
        self.path.mkdir(mode=0o700, exist_ok=True)

    def load(self) -> list[dict[str, Any]]:
        for tmp in self.path.glob("*.tmp"):  # a save the process did not finish
            tmp.unlink(missing_ok=True)
        out = []
        for file in sorted(self.path.glob("*.json")):
            try:
                out.append(json.loads(file.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                file.unlink(missing_ok=True)  # a torn write: its sidecar registers again
        return out

    def save(self, instance_id: str, item: dict[str, Any]) -> None:
        path = self._file(instance_id)
        tmp = path.with_suffix(".tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump(item, f)
        os.replace(tmp, path)

    def delete(self, instance_id: str) -> None:
        self._file(instance_id).unlink(missing_ok=True)

    def _file(self, instance_id: str) -> Path:
        # ids come from sidecars: a digest keeps them out of the path
        return self.path / (hashlib.sha256(instance_id.encode()).hexdigest()[:32] + ".json")
