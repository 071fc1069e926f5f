"""The control plane's resources from the Kubernetes API server (`meshctl server --registry
k8s`): Services (their cluster IPs are the mesh's virtual addresses), EndpointSlices, the
Gateway API's routes and Weft's kinds, each kept current with list + watch.

Theory of operation. Per kind, `KindWatch` (pure) holds the objects as last listed plus the
watch events since, and the resourceVersion to resume from. `Watcher` (I/O) does what the
API documents for a client-go informer: LIST, then WATCH from the list's resourceVersion
with bookmarks allowed; each event updates the kind's objects and every change hands the
whole set to the control state. When the server answers `410 Gone` (the resourceVersion
is older than its history), the kind is listed again. A kind the cluster does not serve (a
CRD not installed: 404) is retried slowly. An object that does not parse is left out with
an error naming it, as a file's would be. The version handed on counts changes, so sidecars
see a new snapshot for each.

Access: in a pod, the ServiceAccount's token and CA (`/var/run/secrets/kubernetes.io/
serviceaccount`, the token re-read for each request since it rotates) and
KUBERNETES_SERVICE_HOST/PORT; elsewhere, a kubeconfig's current context (a server, its CA,
and a bearer token or a client certificate).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from control.store import Key, Resources
from sidecar.config.parse import kind_key, parse_resource
from sidecar.errors import ConfigError

log = logging.getLogger("weft.kubernetes")

# (API group, version, plural, kind): what the control plane reads
KINDS = (
    ("", "v1", "services", "Service"),
    ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ("gateway.networking.k8s.io", "v1", "gateways", "Gateway"),
    ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    ("gateway.networking.k8s.io", "v1", "grpcroutes", "GRPCRoute"),
    ("gateway.networking.k8s.io", "v1beta1", "referencegrants", "ReferenceGrant"),
    ("networking.k8s.io", "v1", "ingresses", "Ingress"),
    ("networking.k8s.io", "v1", "ingressclasses", "IngressClass"),
    ("weft.dev", "v1alpha1", "authorizationpolicies", "AuthorizationPolicy"),
    ("weft.dev", "v1alpha1", "backendtrafficpolicies", "BackendTrafficPolicy"),
    ("weft.dev", "v1alpha1", "meshconfigs", "MeshConfig"),
)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_TIMEOUT_S = 300  # the server ends each watch after this; it is resumed
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
MISSING_RETRY_S = 60.0  # a kind the cluster does not serve (its CRD not installed)
DROPPED_METADATA = ("managedFields", "resourceVersion", "uid", "generation",
                    "creationTimestamp", "selfLink")  # fmt: skip


class Gone(Exception):
    """410: the resourceVersion is older than the server keeps; list again."""


class NotServed(Exception):
    """404 on the list: the cluster does not serve this kind."""


def api_path(group: str, version: str, plural: str) -> str:
    return f"/api/{version}/{plural}" if not group else f"/apis/{group}/{version}/{plural}"


def _clean(obj: dict[str, Any], api_version: str, kind: str) -> dict[str, Any]:
    """An object as Weft reads it: apiVersion and kind set (lists leave them out of their
    items), status and server-kept metadata dropped."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in DROPPED_METADATA}
    if not meta.get("annotations"):
        meta.pop("annotations", None)
    out = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    return {**out, "apiVersion": api_version, "kind": kind, "metadata": meta}


@dataclass
class KindWatch:
    """One kind's objects and where its watch resumes (pure)."""

    group: str
    version: str
    plural: str
    kind: str
    resource_version: str = ""
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        return api_path(self.group, self.version, self.plural)

    def listed(self, body: dict[str, Any]) -> None:
        self.objects = {}
        for item in body.get("items") or []:
            self._put(item)
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion", ""))

    def event(self, event: dict[str, Any]) -> bool:
        """Apply one watch event; whether the objects changed. Gone on a 410 ERROR."""
        kind, obj = event.get("type"), event.get("object") or {}
        rv = str((obj.get("metadata") or {}).get("resourceVersion", ""))
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(str(obj.get("message", "resourceVersion too old")))
            raise ValueError(f"watch error: {obj.get('message', obj)}")
        if rv:
            self.resource_version = rv
        if kind == "BOOKMARK":
            return False
        if kind in ("ADDED", "MODIFIED"):
            return self._put(obj)
        if kind == "DELETED":
            md = obj.get("metadata") or {}
            return (
                self.objects.pop((md.get("namespace") or "default", md.get("name", "")), None)
                is not None
            )
        return False

    def _put(self, obj: dict[str, Any]) -> bool:
        doc = _clean(obj, self.api_version, self.kind)
        md = doc["metadata"]
        key = (md.get("namespace") or "default", md.get("name", ""))
        if self.objects.get(key) == doc:
            return False
        self.objects[key] = doc
        return True


def resources(kinds: list[KindWatch], version: int) -> Resources:
    """Every kind's objects that parse, as the control state's resources."""
    docs: dict[Key, dict[str, Any]] = {}
    for kw in kinds:
        for (ns, name), doc in sorted(kw.objects.items()):
            try:
                res = parse_resource(doc, f"{kw.kind} {ns}/{name} from the API server")
            except ConfigError as exc:
                log.error("ignoring %s", exc)
                continue
            docs[(kind_key(res), res.meta.namespace, res.meta.name)] = doc
    return Resources(version=version, docs=docs)


@dataclass
class KubeAccess:
    """How to reach the API server."""

    server: str
    verify: ssl.SSLContext | bool
    token: Callable[[], str] = lambda: ""

    def headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}


def in_cluster() -> KubeAccess:
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if not host or not port:
        raise ConfigError("not in a pod (no KUBERNETES_SERVICE_HOST): give --kubeconfig")
    ctx = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    host = f"[{host}]" if ":" in host else host
    return KubeAccess(f"https://{host}:{port}", ctx,
                      lambda: (SERVICE_ACCOUNT / "token").read_text().strip())  # fmt: skip


def from_kubeconfig(path: Path) -> KubeAccess:
    """The current context of a kubeconfig (ConfigError naming what is missing)."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None

    def named(section: str, name: str) -> dict[str, Any]:
        for item in config.get(section) or []:
            if item.get("name") == name:
                return dict(item.get(section.rstrip("s")) or {})
        raise ConfigError(f"{path}: no {section.rstrip('s')} named {name!r}")

    current = config.get("current-context")
    if not current:
        raise ConfigError(f"{path}: no current-context")
    context = named("contexts", current)
    cluster, user = (
        named("clusters", context.get("cluster", "")),
        named("users", context.get("user", "")),
    )
    server = str(cluster.get("server", "")).rstrip("/")
    if not server:
        raise ConfigError(f"{path}: cluster {context.get('cluster')!r} has no server")
    base = path.parent

    written: list[str] = []  # the *-data fields, as files for ssl while it loads them

    def file_of(data_key: str, file_key: str, holder: dict[str, Any]) -> str | None:
        if holder.get(data_key):
            fd, name = tempfile.mkstemp(prefix="weft-kube-")
            os.write(fd, base64.b64decode(holder[data_key]))
            os.close(fd)
            written.append(name)
            return name
        return str(base / holder[file_key]) if holder.get(file_key) else None

    verify: ssl.SSLContext | bool = True
    try:
        ca = file_of("certificate-authority-data", "certificate-authority", cluster)
        cert_file = file_of("client-certificate-data", "client-certificate", user)
        key_file = file_of("client-key-data", "client-key", user)
        if ca is not None or (cert_file and key_file):
            verify = ssl.create_default_context(cafile=ca)
            if cert_file and key_file:
                verify.load_cert_chain(cert_file, key_file)
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ConfigError(f"{path}: the cluster's CA or the user's certificate: {exc}") from None
    finally:
        for name in written:
            os.unlink(name)
    if cluster.get("insecure-skip-tls-verify"):
        if isinstance(verify, ssl.SSLContext):
            verify.check_hostname = False
            verify.verify_mode = ssl.CERT_NONE
        else:
            verify = False
    token_file = base / user["tokenFile"] if user.get("tokenFile") else None  # relative: to it
    token = str(user.get("token", ""))

    def read_token() -> str:
        return token_file.read_text().strip() if token_file else token

    return KubeAccess(server, verify, read_token)


class Watcher:
    """List + watch every kind; each change goes to `put` as the whole set."""

    def __init__(self, access: KubeAccess, put: Callable[[Resources], None]) -> None:
        self.access = access
        self.put = put
        self.kinds = [KindWatch(*k) for k in KINDS]
        self.version = 0
        self.synced = asyncio.Event()  # every kind listed once (or found not served)

    def _publish(self) -> None:
        self.version += 1
        self.put(resources(self.kinds, self.version))

    async def run(self) -> None:
        async with httpx.AsyncClient(
            base_url=self.access.server, verify=self.access.verify,
            timeout=httpx.Timeout(30.0, read=WATCH_TIMEOUT_S + 30.0),
        ) as http:  # fmt: skip
            pending = {kw.kind for kw in self.kinds}

            def listed(kw: KindWatch) -> None:
                pending.discard(kw.kind)
                if not pending:
                    self.synced.set()

            async with asyncio.TaskGroup() as group:
                for kw in self.kinds:
                    group.create_task(self._kind(http, kw, listed))

    async def _kind(
        self, http: httpx.AsyncClient, kw: KindWatch, listed: Callable[[KindWatch], None]
    ) -> None:
        failures = 0
        while True:
            try:
                body = await self._get(http, kw.path)
                kw.listed(body)
                self._publish()
                listed(kw)
                failures = 0
                while True:  # watch, resumed from the last resourceVersion seen
                    async for event in self._watch(http, kw):
                        if kw.event(event):
                            self._publish()
            except Gone as exc:
                log.info("%s: %s; listing again", kw.kind, exc)
            except NotServed:
                listed(kw)
                log.warning("the cluster does not serve %s (%s); retrying in %gs",
                            kw.kind, kw.path, MISSING_RETRY_S)  # fmt: skip
                await asyncio.sleep(MISSING_RETRY_S)
            except (httpx.HTTPError, ValueError) as exc:
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning("%s from the API server: %s; retrying in %gs", kw.kind, exc, delay)
                await asyncio.sleep(delay)

    async def _get(self, http: httpx.AsyncClient, path: str) -> dict[str, Any]:
        r = await http.get(path, headers=self.access.headers())
        if r.status_code == 404:
            raise NotServed(path)
        if r.status_code == 410:
            raise Gone(r.text[:200])
        if r.status_code != 200:
            raise ValueError(f"{path}: {r.status_code} {r.text[:200]}")
        body: dict[str, Any] = r.json()
        return body

    async def _watch(self, http: httpx.AsyncClient, kw: KindWatch) -> AsyncIterator[dict[str, Any]]:
        params = {
            "watch": "1",
            "resourceVersion": kw.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        async with http.stream("GET", kw.path, params=params, headers=self.access.headers()) as r:
            if r.status_code == 410:
                raise Gone("resourceVersion too old")
            if r.status_code != 200:
                raise ValueError(f"watch {kw.path}: {r.status_code}")
            async for line in r.aiter_lines():
                if line.strip():
                    yield json.loads(line)
