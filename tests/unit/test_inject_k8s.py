"""`meshctl inject k8s`, `uninject k8s` and `install k8s`: manifests of real-world shapes
(several containers, an existing init container, named ports and probes, a StatefulSet, a
CronJob and a Pod inside a List) injected as the golden file holds, every document valid
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict, offline), stable under
a second injection, and given back by `uninject`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.cli import meshctl as _meshctl

GOLDEN = Path(__file__).parents[1] / "golden" / "inject"
PIN = "sha256:" + "00112233445566778899aabbccddeeff" * 2
INJECT = ["inject", "k8s", "--ca-fingerprint", PIN, "--image", "registry.example/weft:0.1"]
K8S = "1.31"  # native sidecars (restartPolicy: Always on an init container) are GA from 1.29


def _objects(text: str) -> list[dict[str, Any]]:
    out = []
    for doc in yaml.safe_load_all(text):
        out += doc["items"] if doc["kind"] == "List" else [doc]
    return out


def _valid(text: str) -> None:
    for obj in _objects(text):
        kubernetes_validate.validate(obj, K8S, strict=True)  # raises ValidationError


def _flags(args: list[str]) -> dict[str, str]:
    """A command line's options: --name value, or --name alone ("")."""
    out = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else ""
            out[arg] = "" if nxt.startswith("--") else nxt
    return out


def _pod(obj: dict[str, Any]) -> dict[str, Any]:
    node = obj
    path = {"CronJob": ("spec", "jobTemplate", "spec", "template", "spec"), "Pod": ("spec",)}
    for key in path.get(obj["kind"], ("spec", "template", "spec")):
        node = node[key]
    return node


def test_injection_matches_the_golden_file_and_the_schemas(
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = (GOLDEN / "shop.k8s.yaml").read_text()
    _valid(source)
    code, out, err = _meshctl(capsys, *INJECT, "-f", str(GOLDEN / "shop.k8s.yaml"))
    assert code == 0, err
    assert (
        err.strip()
        == "injected: Deployment/orders-v2, StatefulSet/catalog, CronJob/report, Pod/debug"
    )
    assert out == (GOLDEN / "shop.k8s.injected.yaml").read_text()
    _valid(out)
    assert "# runs the schema migrations first" in out  # the user's comments stay
    code, again, _ = _meshctl(capsys, *INJECT, "-f", "-", stdin=out)
    assert code == 0 and again == out
    code, back, _ = _meshctl(capsys, "uninject", "k8s", "-f", "-", stdin=out)
    assert code == 0
    assert _objects(back) == _objects(source)


def test_the_pods_are_wired_as_the_mesh_needs(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _meshctl(capsys, *INJECT, "-f", str(GOLDEN / "shop.k8s.yaml"))
    objs = {o["metadata"]["name"]: o for o in _objects(out)}
    orders = _pod(objs["orders-v2"])
    names = [c["name"] for c in orders["initContainers"]]
    assert names == ["weft-init", "weft-proxy", "migrate"]  # the mesh is up before theirs
    init, proxy = orders["initContainers"][:2]
    assert set(init["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    # probed (named "http" = 8080, 8081), scraped (9090) and admin ports stay uncaptured
    assert init["args"][-1] == "8080,8081,9090,15000"
    assert (
        proxy["restartPolicy"] == "Always" and proxy["startupProbe"]["httpGet"]["path"] == "/ready"
    )
    flags = _flags(proxy["args"])
    assert "--intercept" in flags
    assert flags["--service"] == "orders" and flags["--version"] == "v2"
    assert flags["--app-port"] == "8080" and flags["--protocol"] == "HTTP"
    assert flags["--ca-fingerprint"] == PIN and flags["--advertise"] == "$(WEFT_POD_IP)"
    assert proxy["securityContext"]["runAsUser"] == 10001
    assert {"name": "weft-token", "secret": {"secretName": "weft-token-orders"}} in orders[
        "volumes"
    ]
    assert [c["name"] for c in orders["containers"]] == ["orders", "log-agent"]  # untouched
    protocols = {name: _flags(p["args"])["--protocol"]
                 for name in ("catalog", "report", "debug")
                 for p in [_pod(objs[name])["initContainers"][1]]}  # fmt: skip
    assert protocols == {"catalog": "GRPC", "report": "TCP", "debug": "HTTP2"}
    assert objs["orders"]["kind"] == "Service" and "initContainers" not in str(objs["orders"])


def test_host_network_pods_are_left_out_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _meshctl(capsys, *INJECT, "-f", str(GOLDEN / "hostnet.k8s.yaml"))
    assert code == 0
    assert "not injected: DaemonSet/node-exporter: hostNetwork" in err
    assert "weft-proxy" not in out


def test_a_pod_without_a_port_needs_the_annotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"
                    "spec: {containers: [{name: c, image: x}]}\n")  # fmt: skip
    code, _, err = _meshctl(capsys, *INJECT, "-f", str(path))
    assert code == 1 and "Pod/p: cannot tell the app's port: annotate" in err
    code, _, err = _meshctl(capsys, "inject", "k8s", "-f", str(path), "--data-dir", str(tmp_path))
    assert code == 1 and "meshctl ca init" in err  # no pin given, no CA to read it from


def test_install_prints_the_control_plane_and_its_pin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "weft")
    assert _meshctl(capsys, "ca", "init", "--data-dir", data)[0] == 0
    code, out, err = _meshctl(capsys, "install", "k8s", "--data-dir", data)
    assert code == 0, err
    _valid(out)
    kinds = [o["kind"] for o in _objects(out)]
    assert kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                     "Secret", "Deployment", "Service"]  # fmt: skip
    role = next(o for o in _objects(out) if o["kind"] == "ClusterRole")
    assert {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"]} in role["rules"]  # fmt: skip
    deployment = next(o for o in _objects(out) if o["kind"] == "Deployment")
    assert "--registry" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    pin = out.split("--ca-fingerprint ")[1].split()[0]
    code, shown, _ = _meshctl(capsys, "ca", "show", "--data-dir", data)
    assert pin in shown  # the root's fingerprint, which sidecars pin
    secret = next(o for o in _objects(out) if o["kind"] == "Secret")
    assert {"root.pem", "intermediate-key.pem", "state.json", "token-key"} <= set(secret["data"])
    # the workload's token, as the Secret the injected pods mount
    code, token, _ = _meshctl(capsys, "token", "create", "orders", "--namespace", "shop",
                              "--data-dir", data, "-o", "secret")  # fmt: skip
    assert code == 0
    (obj,) = _objects(token)
    kubernetes_validate.validate(obj, K8S, strict=True)
    assert obj["metadata"] == {"name": "weft-token-orders", "namespace": "shop",
                               "labels": {"app.kubernetes.io/part-of": "weft"}}  # fmt: skip


KEYS = st.sampled_from(["kind", "metadata", "spec", "template", "containers", "initContainers",
                        "ports", "containerPort", "name", "labels", "annotations", "items",
                        "jobTemplate", "volumes", "hostNetwork", "readinessProbe", "httpGet",
                        "port", "weft.dev/app-port", "appProtocol"])  # fmt: skip
KINDS = st.sampled_from(["Deployment", "Pod", "List", "CronJob", "Service"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=6), KINDS)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(KEYS, VALUES, max_size=5), max_size=3))
def test_any_manifest_is_injected_or_refused_with_a_reason(docs: list[dict[str, Any]]) -> None:
    """Whatever the documents hold, inject succeeds (and uninject takes it back) or refuses
    with InjectError; nothing else escapes."""
    from mesh_ctl.inject import kubernetes
    from mesh_ctl.inject.compose import InjectError

    try:
        kubernetes.inject(docs, kubernetes.Options(ca_fingerprint=PIN))
    except InjectError:
        return
    kubernetes.uninject(docs)
    assert "weft-proxy" not in str(docs)
