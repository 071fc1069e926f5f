"""`meshctl install k8s` (pure): the control plane's manifests for a cluster, from a CA made
with `meshctl ca init` — the weft-system Namespace, its ServiceAccount and what it may read
(RBAC: the kinds `--registry k8s` lists and watches), the CA as a Secret, the control
plane's Deployment and Service — and a join token's Secret for a workload."""

from __future__ import annotations

import base64
from typing import Any

NAMESPACE = "weft-system"
NAME = "weft-control-plane"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "weft"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def control_plane(ca_files: dict[str, bytes], image: str) -> list[dict[str, Any]]:
    """The manifests, in the order `kubectl apply` needs them. `ca_files`: the CA
    directory's files by name (the keys go in a Secret, mounted only into the control plane,
    copied to its data directory with mode 0600 by an init container)."""
    meta = {"name": NAME, "namespace": NAMESPACE, "labels": dict(LABELS)}
    copy = ("mkdir -p /var/lib/weft/ca && cp /etc/weft-ca/* /var/lib/weft/ca/ && "
            "chmod 700 /var/lib/weft/ca && chmod 600 /var/lib/weft/ca/*")  # fmt: skip
    secure = {"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": True,
              "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
              "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    data_mount = {"name": "data", "mountPath": "/var/lib/weft"}
    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "weft"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": NAME, "labels": dict(LABELS)}, "rules": _rules()},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": NAME, "labels": dict(LABELS)},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {**meta, "name": "weft-ca"},
         "data": {name: _b64(body) for name, body in sorted(ca_files.items())}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
         "spec": {
             "replicas": 1,
             "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
             "template": {
                 "metadata": {"labels": dict(LABELS)},
                 "spec": {
                     "serviceAccountName": NAME,
                     "securityContext": {"fsGroup": 10001},
                     "initContainers": [{
                         "name": "ca", "image": image, "command": ["sh", "-ec", copy],
                         "securityContext": secure,
                         "volumeMounts": [data_mount,
                                          {"name": "ca", "mountPath": "/etc/weft-ca",
                                           "readOnly": True}],
                     }],
                     "containers": [{
                         "name": "control-plane", "image": image,
                         "args": ["server", "--data-dir", "/var/lib/weft", "--registry", "k8s",
                                  "--listen", "0.0.0.0:15010", "--http-listen", "0.0.0.0:15014"],
                         "ports": [{"name": "grpc", "containerPort": 15010},
                                   {"name": "http", "containerPort": 15014}],
                         "readinessProbe": {"httpGet": {"path": "/healthz", "port": 15014}},
                         "livenessProbe": {"httpGet": {"path": "/healthz", "port": 15014},
                                           "periodSeconds": 10},
                         "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                       "limits": {"memory": "512Mi"}},
                         "securityContext": secure,
                         "volumeMounts": [data_mount],
                     }],
                     "volumes": [{"name": "data", "emptyDir": {}},
                                 {"name": "ca", "secret": {"secretName": "weft-ca",
                                                           "defaultMode": 0o400}}],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta,
         "spec": {"selector": {"app.kubernetes.io/name": NAME},
                  "ports": [{"name": "grpc", "port": 15010, "targetPort": "grpc",
                             "appProtocol": "kubernetes.io/h2c"},
                            {"name": "http", "port": 15014, "targetPort": "http"}]}},
    ]  # fmt: skip


def _rules() -> list[dict[str, Any]]:
    """Read-only access to what the control plane watches (control/kube.py's KINDS)."""
    from control.kube import KINDS

    groups: dict[str, list[str]] = {}
    for group, _, plural, _ in KINDS:
        groups.setdefault(group, []).append(plural)
    return [{"apiGroups": [group], "resources": plurals, "verbs": ["get", "list", "watch"]}
            for group, plurals in groups.items()]  # fmt: skip


def token_secret(service: str, namespace: str, token: str) -> dict[str, Any]:
    """The Secret `meshctl inject k8s` mounts into the service's sidecars."""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": f"weft-token-{service}", "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "weft"}},
        "data": {"token": _b64(token.encode())},
    }  # fmt: skip
