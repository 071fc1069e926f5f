"""Injection into Kubernetes manifests (pure: loaded documents in, changed in place), as
`linkerd inject` and istioctl's kube-inject do.

Each workload's pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
CronJob; a bare Pod; the items of a List) gets two init containers, ahead of its own:

- `weft-init` runs `meshctl init` with NET_ADMIN, then exits. The ports the kubelet probes
  are left out of inbound capture, so probes reach the app as before.
- `weft-proxy` is the sidecar, as a native sidecar (an init container with
  `restartPolicy: Always`, Kubernetes 1.29+). It starts before the app, whose containers
  wait for its startup probe on `/ready`, and it stops after the app.

The pod's identity is `spiffe://<trust domain>/ns/<namespace>/svc/<service>`:
- the service is the `app.kubernetes.io/name` label, else `app`, else the workload's name;
- the namespace comes from the downward API;
- the version comes from the `version` label (or `app.kubernetes.io/version`).

The join token comes from the Secret `weft-token-<service>`. The control plane's root is
pinned by its fingerprint (`meshctl install k8s` prints it), so no trust bundle has to be
copied into every namespace. The app's port is the `weft.dev/app-port` annotation, else
the first container's first port. Its protocol is the `weft.dev/protocol` annotation, else
read from that port's `appProtocol` or name (`grpc…`, `http2`/`h2c…`, `tcp…`), else HTTP.
Inbound capture also leaves out `prometheus.io/port` and `weft.dev/skip-inbound-ports`.
Injecting twice gives the same manifests; `uninject` removes exactly what was added.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from mesh_ctl.inject.compose import InjectError

INJECTED = "weft.dev/injected"  # pod annotation: the version that injected it
APP_PORT, PROTOCOL = "weft.dev/app-port", "weft.dev/protocol"
SKIP = "weft.dev/skip-inbound-ports"
INIT, PROXY = "weft-init", "weft-proxy"
TOKEN_VOLUME = "weft-token"
PROXY_UID = 10001
ADMIN_PORT, INBOUND_PORT = 15000, 15006
TEMPLATE_PATHS = {  # kind -> where its pod template is
    "Deployment": ("spec", "template"), "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"), "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"), "CronJob": ("spec", "jobTemplate", "spec", "template"),
}  # fmt: skip
Doc = MutableMapping[str, Any]


@dataclass(frozen=True)
class Options:
    image: str = "weft:latest"
    control_plane: str = "weft-control-plane.weft-system.svc:15010"
    ca_fingerprint: str = ""
    version: str = "0.1.0"


class Skip(Exception):
    """A workload left as it is, and why."""


def inject(docs: list[Any], opts: Options) -> tuple[list[str], list[str]]:
    """Inject every workload in `docs`: "Kind/name" of each one injected, and of each one
    left out with why."""
    if not opts.ca_fingerprint:
        raise InjectError("--ca-fingerprint is needed (`meshctl install k8s` prints it)")
    done: list[str] = []
    skipped: list[str] = []
    for doc in docs:
        _walk(doc, lambda d: _inject(d, opts), done, skipped)
    return done, skipped


def uninject(docs: list[Any]) -> list[str]:
    done: list[str] = []
    for doc in docs:
        _walk(doc, _uninject, done, [])
    return done


def _walk(doc: Any, change: Any, done: list[str], skipped: list[str]) -> None:
    kind = doc.get("kind") if isinstance(doc, MutableMapping) else None
    if not isinstance(kind, str):
        return
    if kind.endswith("List"):
        items = doc.get("items")
        for item in items if isinstance(items, list) else []:
            _walk(item, change, done, skipped)
        return
    if kind != "Pod" and kind not in TEMPLATE_PATHS:
        return
    where = _where(doc)
    try:
        if change(doc):
            done.append(where)
    except Skip as why:
        skipped.append(f"{where}: {why}")


def _metadata(doc: Doc) -> Doc:
    md = doc.get("metadata")
    return md if isinstance(md, MutableMapping) else {}


def _where(doc: Doc) -> str:
    return f"{doc.get('kind')}/{_metadata(doc).get('name', '?')}"


def _template(doc: Doc) -> tuple[Doc, Doc]:
    """(the pod's metadata, the pod's spec) of a workload or Pod; InjectError when they are
    not in the shape Kubernetes gives them (for what inject reads and writes)."""
    node: Any = doc
    path = TEMPLATE_PATHS.get(doc["kind"], ())
    for key in path:
        node = node.get(key)
        if not isinstance(node, MutableMapping):
            raise InjectError(f"{_where(doc)}: no pod template at {'.'.join(path)}")
    meta, spec = node.setdefault("metadata", {}), node.get("spec")
    problem = _pod_problem(meta, spec)
    if problem is not None:
        raise InjectError(f"{_where(doc)}: {problem}")
    if spec.get("hostNetwork"):
        raise Skip("hostNetwork: the pod shares the node's network namespace")
    return meta, spec


PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def _pod_problem(meta: Any, spec: Any) -> str | None:
    if not isinstance(meta, MutableMapping) or not all(
        isinstance(meta.get(k) or {}, MutableMapping) for k in ("labels", "annotations")
    ):
        return "the pod's metadata, labels or annotations are not mappings"
    if not isinstance(spec, MutableMapping) or not spec.get("containers"):
        return "no pod spec with containers"
    for key in ("containers", "initContainers", "volumes"):
        items = spec.get(key) or []
        if not isinstance(items, list) or not all(isinstance(i, MutableMapping) for i in items):
            return f"{key} is not a list of mappings"
    for container in spec["containers"]:
        ports = container.get("ports") or []
        if not isinstance(ports, list) or not all(isinstance(p, MutableMapping) for p in ports):
            return f"container {container.get('name')!r}: ports is not a list of mappings"
        for probe in PROBES:
            action = container.get(probe) or {}
            if not isinstance(action, MutableMapping) or not all(
                isinstance(action.get(k) or {}, MutableMapping)
                for k in ("httpGet", "tcpSocket", "grpc")
            ):
                return f"container {container.get('name')!r}: {probe} is malformed"
    return None


def service_name(doc: Doc, meta: Doc) -> str:
    outer = _metadata(doc).get("labels")
    for labels in (meta.get("labels") or {}, outer if isinstance(outer, MutableMapping) else {}):
        for key in ("app.kubernetes.io/name", "app"):
            if labels.get(key):
                return str(labels[key])
    return str(_metadata(doc).get("name", "app"))


def _inject(doc: Doc, opts: Options) -> bool:
    meta, spec = _template(doc)
    _uninject(doc)  # again from the start: injecting twice gives the same
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    service = service_name(doc, meta)
    version = str(labels.get("version") or labels.get("app.kubernetes.io/version") or "")
    app = spec["containers"][0]
    port, protocol = _app_port(doc, app, annotations)
    skip = sorted({ADMIN_PORT, *_probe_ports(spec), *_annotated_ports(annotations)})
    init = {
        "name": INIT,
        "image": opts.image,
        "args": ["init", "--proxy-uid", str(PROXY_UID), "--inbound-port", str(INBOUND_PORT),
                 "--skip-inbound-ports", ",".join(map(str, skip))],
        "securityContext": {"runAsUser": 0, "runAsNonRoot": False,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                      "limits": {"memory": "64Mi"}},
    }  # fmt: skip
    ready = {"httpGet": {"path": "/ready", "port": ADMIN_PORT}}
    proxy = {
        "name": PROXY,
        "image": opts.image,
        "restartPolicy": "Always",  # a native sidecar: up before the app, down after it
        "args": ["sidecar", "--service", service, "--namespace", "$(WEFT_NAMESPACE)",
                 "--version", version, "--app-port", str(port), "--protocol", protocol,
                 "--intercept", "--advertise", "$(WEFT_POD_IP)", "--admin-address", "0.0.0.0",
                 "--control-plane", opts.control_plane, "--ca-fingerprint", opts.ca_fingerprint,
                 "--token-file", "/var/run/weft/token/token"],
        "env": [_field("WEFT_NAMESPACE", "metadata.namespace"),
                _field("WEFT_POD_IP", "status.podIP")],
        "ports": [{"name": "weft-inbound", "containerPort": INBOUND_PORT},
                  {"name": "weft-admin", "containerPort": ADMIN_PORT}],
        "startupProbe": {**ready, "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {**ready, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
        "securityContext": {"runAsUser": PROXY_UID, "runAsGroup": PROXY_UID,
                            "runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                      "limits": {"memory": "256Mi"}},
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": "/var/run/weft/token",
                          "readOnly": True}],
    }  # fmt: skip
    if not version:
        args = proxy["args"]
        assert isinstance(args, list)
        del args[args.index("--version") : args.index("--version") + 2]
    spec["initContainers"] = [init, proxy, *(spec.get("initContainers") or [])]
    volume = {"name": TOKEN_VOLUME, "secret": {"secretName": f"weft-token-{service}"}}
    spec["volumes"] = [*(spec.get("volumes") or []), volume]
    meta.setdefault("annotations", {})[INJECTED] = opts.version
    return True


def _uninject(doc: Doc) -> bool:
    meta, spec = _template(doc)
    annotations = meta.get("annotations")
    if not isinstance(annotations, MutableMapping) or INJECTED not in annotations:
        return False
    del annotations[INJECTED]
    if not annotations:
        del meta["annotations"]
    inits = [c for c in spec.get("initContainers") or [] if c.get("name") not in (INIT, PROXY)]
    if inits:
        spec["initContainers"] = inits
    else:
        spec.pop("initContainers", None)
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") != TOKEN_VOLUME]
    if volumes:
        spec["volumes"] = volumes
    else:
        spec.pop("volumes", None)
    return True


def _app_port(doc: Doc, app: Doc, annotations: Doc) -> tuple[int, str]:
    """The app's port and protocol (see the module docstring)."""
    ports = app.get("ports") or []
    first = ports[0] if ports else {}
    given = str(annotations.get(APP_PORT) or "")
    port = int(given) if given.isdigit() else first.get("containerPort")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InjectError(f"{_where(doc)}: cannot tell the app's port: annotate the pod template "
                          f'{APP_PORT}: "8080" or declare a containerPort')  # fmt: skip
    protocol = str(annotations.get(PROTOCOL) or "").upper()
    if not protocol:
        protocol = _protocol_hint(str(first.get("appProtocol") or first.get("name") or ""))
    if protocol not in ("HTTP", "HTTP2", "GRPC", "TCP"):
        raise InjectError(f"{PROTOCOL}: {protocol!r} is not HTTP, HTTP2, GRPC or TCP")
    return port, protocol


def _annotated_ports(annotations: Doc) -> set[int]:
    """Ports scraped or called from outside the mesh, as annotated: Prometheus's
    `prometheus.io/port` and Weft's `weft.dev/skip-inbound-ports` (comma-separated)."""
    text = f"{annotations.get('prometheus.io/port', '')},{annotations.get(SKIP, '')}"
    return {int(p) for p in text.split(",") if p.strip().isdigit() and 0 < int(p) < 65536}


def _protocol_hint(hint: str) -> str:
    """A port's appProtocol or name as a protocol: grpc…, http2/h2c…, tcp…, else HTTP."""
    hint = hint.lower()
    if "grpc" in hint:
        return "GRPC"
    if hint.startswith(("http2", "h2c")) or hint.endswith("h2c"):
        return "HTTP2"
    return "TCP" if hint.startswith("tcp") else "HTTP"


def _field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _probe_ports(spec: Doc) -> set[int]:
    """The ports the kubelet probes (numbers; names resolved against containerPorts)."""
    out: set[int] = set()
    for container in spec.get("containers") or []:
        named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        for probe in PROBES:
            action = container.get(probe) or {}
            for kind in ("httpGet", "tcpSocket", "grpc"):
                port = (action.get(kind) or {}).get("port")
                port = named.get(port, port) if isinstance(port, str) else port
                if isinstance(port, int):
                    out.add(port)
    return out
