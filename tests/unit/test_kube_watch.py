"""The Kubernetes registry's pure parts: one kind's list + watch bookkeeping (resume point,
bookmarks, deletions, 410) and reading a kubeconfig's current context."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest

from control.kube import Gone, KindWatch, from_kubeconfig, resources
from sidecar.errors import ConfigError
from tests.support.pki import TestCA


def _svc(name: str, rv: str, port: int = 80) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "shop", "resourceVersion": rv, "uid": "x"},
            "spec": {"ports": [{"port": port}]}, "status": {}}  # fmt: skip


def test_a_kind_follows_its_list_and_events() -> None:
    kw = KindWatch("", "v1", "services", "Service")
    kw.listed({"metadata": {"resourceVersion": "10"}, "items": [_svc("orders", "9")]})
    assert kw.resource_version == "10" and set(kw.objects) == {("shop", "orders")}
    doc = kw.objects[("shop", "orders")]
    assert doc["apiVersion"] == "v1" and doc["kind"] == "Service"  # lists leave them out
    assert "status" not in doc and doc["metadata"] == {"name": "orders", "namespace": "shop"}
    assert kw.event({"type": "MODIFIED", "object": _svc("orders", "11")}) is False  # same
    assert kw.event({"type": "MODIFIED", "object": _svc("orders", "12", 8080)}) is True
    assert kw.resource_version == "12"
    assert (
        kw.event({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}) is False
    )
    assert kw.resource_version == "20"
    assert kw.event({"type": "ADDED", "object": _svc("bad", "21", 0)}) is True
    assert kw.event({"type": "DELETED", "object": _svc("orders", "22")}) is True
    assert kw.event({"type": "DELETED", "object": _svc("orders", "23")}) is False
    # an object that does not parse is left out of the resources (port 0)
    assert resources([kw], 1).docs == {}
    with pytest.raises(Gone):
        kw.event({"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "old"}})
    with pytest.raises(ValueError, match="watch error: forbidden"):
        kw.event(
            {"type": "ERROR", "object": {"kind": "Status", "code": 403, "message": "forbidden"}}
        )


CONFIG = """apiVersion: v1
kind: Config
current-context: prod
contexts:
- {{name: prod, context: {{cluster: c1, user: u1}}}}
clusters:
- {{name: c1, cluster: {{server: 'https://10.0.0.1:6443/', certificate-authority-data: {ca}}}}}
users:
- {{name: u1, user: {{tokenFile: token}}}}
"""


def test_a_kubeconfig_gives_the_server_its_ca_and_a_fresh_token(tmp_path: Path) -> None:
    ca_pem = TestCA().pem  # a real CA certificate for the context's trust
    (tmp_path / "token").write_text("t1\n")
    path = tmp_path / "config"
    path.write_text(CONFIG.format(ca=base64.b64encode(ca_pem).decode()))
    access = from_kubeconfig(path)
    assert access.server == "https://10.0.0.1:6443"
    assert isinstance(access.verify, ssl.SSLContext)
    assert access.headers() == {"Authorization": "Bearer t1"}
    (tmp_path / "token").write_text("t2\n")  # rotated: read again
    assert access.headers() == {"Authorization": "Bearer t2"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Config\n", "no current-context"),
        ("current-context: x\ncontexts: []\n", "no context named 'x'"),
        (
            "current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
            "clusters: [{name: c, cluster: {}}]\nusers: [{name: u, user: {}}]\n",
            "has no server",
        ),
    ],
)
def test_a_broken_kubeconfig_says_what_is_missing(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        from_kubeconfig(path)


def test_in_a_pod_the_service_account_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from control import kube

    (tmp_path / "ca.crt").write_bytes(TestCA().pem)
    (tmp_path / "token").write_text("sa-token\n")
    monkeypatch.setattr(kube, "SERVICE_ACCOUNT", tmp_path)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    access = kube.in_cluster()
    assert access.server == "https://[fd00::1]:443"
    assert isinstance(access.verify, ssl.SSLContext)
    assert access.headers() == {"Authorization": "Bearer sa-token"}
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(ConfigError, match="give --kubeconfig"):
        kube.in_cluster()
