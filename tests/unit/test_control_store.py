"""The control plane's resource store: all-or-nothing apply, versions, persistence."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from control.store import ResourceFile, Resources, kind_of
from sidecar.config.parse import Document
from sidecar.errors import ConfigError

ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "orders"},
    "spec": {"parentRefs": [{"kind": "Service", "name": "orders"}],
             "rules": [{"backendRefs": [{"name": "orders", "port": 80}]}]},
}  # fmt: skip
MESH = {
    "apiVersion": "weft.dev/v1alpha1",
    "kind": "MeshConfig",
    "metadata": {"name": "mesh"},
    "spec": {"trustDomain": "weft.local", "defaultPolicy": "deny"},
}


def _docs(*data: object) -> list[Document]:
    return [Document(d, f"shop.yaml document {i}") for i, d in enumerate(data, start=1)]


def test_apply_reports_each_document_and_versions_only_real_changes() -> None:
    first, said = Resources().apply(_docs(ROUTE, MESH))
    assert first.version == 1
    assert said == ["HTTPRoute default/orders created", "MeshConfig default/mesh created"]
    same, said = first.apply(_docs(ROUTE))
    assert same is first and said == ["HTTPRoute default/orders unchanged"]
    changed = {**ROUTE, "spec": {**ROUTE["spec"], "rules": []}}  # type: ignore[dict-item]
    second, said = first.apply(_docs(changed))
    assert second.version == 2 and said == ["HTTPRoute default/orders configured"]
    assert second.select("HTTPRoute")[0]["spec"]["rules"] == []
    assert first.select("HTTPRoute")[0]["spec"]["rules"]  # values, not shared state


def test_one_bad_document_changes_nothing_and_names_file_document_and_field() -> None:
    before, _ = Resources().apply(_docs(ROUTE))
    bad = {**MESH, "spec": {"defaultPolicy": "maybe"}}
    with pytest.raises(ConfigError) as err:
        before.apply(_docs({**ROUTE, "metadata": {"name": "web"}}, bad))
    assert "shop.yaml document 2" in str(err.value) and "spec.defaultPolicy" in str(err.value)
    assert before.version == 1 and len(before.docs) == 1
    with pytest.raises(ConfigError, match="duplicate HTTPRoute default/orders"):
        before.apply(_docs(ROUTE, ROUTE))
    cert = {"apiVersion": "weft.dev/v1alpha1", "kind": "TLSCertificate",
            "metadata": {"name": "c"}, "spec": {"certFile": "a.pem", "keyFile": "b.pem"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"kubernetes\.io/tls"):
        before.apply(_docs(cert))


def test_delete_select_and_kind_names() -> None:
    res, _ = Resources().apply(_docs(ROUTE, MESH))
    assert [d["metadata"]["name"] for d in res.select(kind_of("routes"))] == ["orders"]
    assert res.select("HTTPRoute", namespace="other") == []
    gone = res.delete("HTTPRoute", "default", "orders")
    assert gone.version == 2 and gone.select("HTTPRoute") == []
    with pytest.raises(KeyError, match="HTTPRoute default/orders not found"):
        gone.delete("HTTPRoute", "default", "orders")
    with pytest.raises(ValueError, match="unknown kind 'widgets'"):
        kind_of("widgets")


def test_saved_resources_survive_a_restart_and_are_private(tmp_path: Path) -> None:
    store = ResourceFile(tmp_path)
    assert store.load() == Resources()
    res, _ = Resources().apply(_docs(ROUTE, MESH))
    store.save(res)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert ResourceFile(tmp_path).load() == res
    store.path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load the stored resources"):
        store.load()
