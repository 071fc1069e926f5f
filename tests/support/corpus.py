"""Load the routing corpus (tests/corpora/routing) and turn a test file into a live setup.

The corpus gives Kubernetes objects and pod labels; a cluster would add the pods and
EndpointSlices. Here every workload is an echo server on 127.0.0.1, each selector Service
gets EndpointSlices pointing at the echo servers its selector picks, and each Gateway gets
its own loopback address (Gateways in one file have distinct addresses in a cluster too).
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

from tests.support.pki import self_signed

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpora" / "routing" / "public"

H2C = "kubernetes.io/h2c"


def corpus_files(api: str) -> list[Path]:
    if not CORPUS.is_dir():
        return []
    out = []
    for path in sorted(CORPUS.glob("*.json")):
        if path.name == "index.json":
            continue
        doc = json.loads(path.read_text())
        if doc["api"] == api:
            out.append(path)
    return out


def has_h2c_ports(doc: dict[str, Any]) -> bool:
    return any(
        p.get("appProtocol") == H2C
        for r in doc["resources"]
        if r["kind"] == "Service"
        for p in r.get("spec", {}).get("ports", [])
    )


def req_h2c_backend(doc: dict[str, Any], case: dict[str, Any]) -> bool:
    """Whether the case's expected backend is reached through an h2c Service port (the
    corpus has one such case: every route of its file targets that port)."""
    return has_h2c_ports(doc) and case["id"].startswith("HTTPRouteBackendProtocolH2C/")


def gateway_addresses(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    gateways = [r for r in doc["resources"] if r["kind"] == "Gateway"]
    return {
        (g["metadata"].get("namespace", "default"), g["metadata"]["name"]): f"127.0.0.{10 + i}"
        for i, g in enumerate(gateways)
    }


def build_resources(
    doc: dict[str, Any],
    echo_ports: dict[tuple[str, str], int],
    removed: list[dict[str, Any]] | None = None,
    h2_ports: dict[tuple[str, str], int] | None = None,
) -> list[dict[str, Any]]:
    """The test's objects plus the EndpointSlices a cluster would have made.

    `echo_ports` maps (namespace, workload) to the echo server's port.
    """
    text = json.dumps(doc["resources"]).replace("{GATEWAY_CLASS_NAME}", "weft")
    text = text.replace("{INGRESS_CLASS_NAME}", "weft")
    resources: list[dict[str, Any]] = json.loads(text)
    gone = {(r["kind"], r["namespace"], r["name"]) for r in removed or []}
    resources = [
        r
        for r in resources
        if (r["kind"], r["metadata"].get("namespace", "default"), r["metadata"]["name"]) not in gone
    ]
    addresses = gateway_addresses(doc)
    workloads = doc["workloads"]
    slices: list[dict[str, Any]] = []
    for r in resources:
        meta = r["metadata"]
        ns = meta.get("namespace", "default")
        if r["kind"] == "Gateway":
            r["spec"]["addresses"] = [{"type": "IPAddress", "value": addresses[(ns, meta["name"])]}]
        elif r["kind"] == "Service" and r.get("spec", {}).get("selector"):
            selector = r["spec"]["selector"]
            for wl in workloads:
                if wl["namespace"] != ns:
                    continue
                if any(wl["pod_labels"].get(k) != v for k, v in selector.items()):
                    continue
                port = echo_ports[(ns, wl["backend"])]
                h2_port = (h2_ports or {}).get((ns, wl["backend"]), port)
                slices.append(
                    {
                        "apiVersion": "discovery.k8s.io/v1",
                        "kind": "EndpointSlice",
                        "metadata": {
                            "name": f"{meta['name']}-{wl['backend']}",
                            "namespace": ns,
                            "labels": {"kubernetes.io/service-name": meta["name"]},
                        },
                        "addressType": "IPv4",
                        "ports": [
                            {
                                "name": p.get("name", ""),
                                "port": h2_port if p.get("appProtocol") == H2C else port,
                                "protocol": "TCP",
                            }
                            for p in r["spec"].get("ports", [])
                        ],
                        "endpoints": [{"addresses": ["127.0.0.1"]}],
                    }
                )
    fixtures = doc.get("fixtures", {}).get("endpointslice_workloads", [])
    for fx in fixtures:
        for r in resources:
            meta = r["metadata"]
            if r["kind"] != "EndpointSlice" or meta["name"] != fx["endpointslice"]:
                continue
            if r["addressType"] != "IPv4":
                continue  # the echo servers listen on IPv4 loopback only
            port = echo_ports[(fx["namespace"], fx["workload"])]
            r["ports"] = [dict(p, port=port) for p in r.get("ports", [])]
            r["endpoints"] = [{"addresses": ["127.0.0.1"]}]
    return copy.deepcopy(resources + slices + _tls_secrets(doc))


def _tls_secrets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The self-signed Secrets the conformance suite creates at start-up (`fixtures`)."""
    out = []
    for fx in doc.get("fixtures", {}).get("tls_secrets", []):
        leaf = self_signed(*fx["dns_names"])
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": fx["name"], "namespace": fx["namespace"]},
                "type": "kubernetes.io/tls",
                "data": {
                    "tls.crt": base64.b64encode(leaf.cert_pem).decode(),
                    "tls.key": base64.b64encode(leaf.key_pem).decode(),
                },
            }
        )
    return out
