"""Every invalid document is refused with a message naming file, document and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.loader import load_snapshot
from sidecar.errors import ConfigError

GOOD = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  listeners: [{name: http, port: 18080, protocol: HTTP}]
"""

ROUTE = (
    GOOD
    + """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: edge}]
"""
)

CASES = {
    "unknown kind": ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "unknown kind 'Pod'"),
    "unknown field": (
        GOOD.replace("protocol: HTTP}", "protocol: HTTP, colour: red}"),
        "spec.listeners[0].colour: unknown field",
    ),
    "bad port": (
        GOOD.replace("18080", "70000"),
        "spec.listeners[0].port: must be between 1 and 65535",
    ),
    "missing name": (GOOD.replace("{name: edge}", "{}"), "metadata.name: is required"),
    "bad path match": (
        ROUTE
        + """  rules: [{matches: [{path: {type: PathPrefix, value: "no-slash"}}]}]
""",
        "document 2 (HTTPRoute default/r): spec.rules[0].matches[0].path.value",
    ),
    "bad regex": (
        ROUTE
        + """  rules: [{matches: [{path: {type: RegularExpression, value: "(["}}]}]
""",
        "invalid regular expression",
    ),
    "empty ingress": (
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: g}\nspec: {}\n",
        "an Ingress needs rules or a defaultBackend",
    ),
    "duplicate key": ("apiVersion: v1\napiVersion: v1\n", "duplicate key 'apiVersion'"),
    "invalid yaml": ("kind: [unclosed\n", "invalid YAML at line"),
    "duplicate resource": (GOOD + "---\n" + GOOD, "duplicate Gateway default/edge"),
    "bad weight": (
        ROUTE
        + """  rules: [{backendRefs: [{name: s, port: 80, weight: -1}]}]
""",
        "spec.rules[0].backendRefs[0].weight: must be between 0 and 1000000",
    ),
    "redirect with backends": (
        ROUTE
        + """  rules:
  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 302}}]
    backendRefs: [{name: s, port: 80}]
""",
        "RequestRedirect cannot be combined with backendRefs",
    ),
    "unknown policy field": (
        """apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p}
spec:
  targetRef: {kind: Service, name: orders}
  from: [{ipBlocks: [10.0.0.0/8]}]
""",
        "spec.from[0].ipBlocks: unknown field",
    ),
}
BTP = """apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: p}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
"""
CASES |= {
    "route policy with nothing": (BTP, "a policy for routes needs one of rateLimit"),
    "unknown coding": (BTP + "  compression: [{type: Deflate}]\n", "spec.compression[0].type"),
    "coding twice": (BTP + "  compression: [{type: Gzip}, {type: Gzip}]\n", "Gzip is listed twice"),
    "options alone": (
        BTP + "  requestDecompression: {}\n  compressionOptions: {gzipLevel: 3}\n",
        "spec.compressionOptions: needs compression",
    ),
    "bad level": (
        BTP + "  compression: [{type: Gzip}]\n  compressionOptions: {gzipLevel: 12}\n",
        "spec.compressionOptions.gzipLevel: must be between 1 and 9",
    ),
    "bad content type": (
        BTP + "  compression: [{type: Gzip}]\n  compressionOptions: {contentTypes: [json]}\n",
        "spec.compressionOptions.contentTypes[0]",
    ),
    "inflate limit": (
        BTP + "  requestDecompression: {maxInflatedBytes: 0}\n",
        "spec.requestDecompression.maxInflatedBytes",
    ),
}


@pytest.mark.parametrize(("text", "message"), CASES.values(), ids=CASES.keys())
def test_invalid_config_names_file_document_and_field(
    tmp_path: Path, text: str, message: str
) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_snapshot([str(f)], version=1, gateway_class="weft")
    assert str(f) in str(err.value)
    assert message in str(err.value)


def test_the_issue_example_loads(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(
        GOOD
        + """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: api, port: 80}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  ports: [{port: 80, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1, port: 18081}]
"""
    )
    snap = load_snapshot([str(f)], version=1, gateway_class="weft")
    assert list(snap.clusters) == ["default/api:80"]
    assert snap.clusters["default/api:80"].endpoints[0].port == 18081


def test_other_gateway_classes_are_not_served(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(GOOD.replace("spec:\n", "spec:\n  gatewayClassName: nginx\n"))
    assert not load_snapshot([str(f)], version=1, gateway_class="weft").routers
    assert load_snapshot([str(f)], version=1, gateway_class="nginx").routers


def test_gateway_class_documents_are_accepted(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: weft}\n"
        "spec: {controllerName: weft.dev/gateway-controller}\n---\n" + GOOD
    )
    assert load_snapshot([str(f)], version=1, gateway_class="weft").routers


def test_grpc_method_matches_become_paths(tmp_path: Path) -> None:
    from sidecar.config.parse_routes import _grpc_path

    assert _grpc_path(True, "pkg.Svc", "Get").value == "/pkg.Svc/Get"
    assert (_grpc_path(True, "pkg.Svc", None).type, _grpc_path(True, "pkg.Svc", None).value) == (
        "PathPrefix",
        "/pkg.Svc",
    )
    assert _grpc_path(True, None, "Get").value == "/[^/]+/Get"
    assert _grpc_path(False, "pkg\\..*", None).value == "/(?:pkg\\..*)/[^/]+"


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("{service: 'bad service'}", "spec.rules[0].matches[0].method.service"),
        ("{type: Exact}", "needs a service, a method or both"),
        ("{type: RegularExpression, method: '('}", "invalid regular expression"),
    ],
)
def test_bad_grpc_matches(tmp_path: Path, method: str, message: str) -> None:
    text = (
        GOOD
        + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\n"
        + f"spec:\n  parentRefs: [{{name: edge}}]\n  rules: [{{matches: [{{method: {method}}}]}}]\n"
    )
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_snapshot([str(tmp_path / "c.yaml")], version=1, gateway_class="weft")


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection", "Upgrade"])
def test_a_header_modifier_cannot_write_framing_fields(tmp_path: Path, name: str) -> None:
    from tests.support.edge import config

    extra = (f"    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n"
             f"        add: [{{name: {name}, value: chunked}}]\n")  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(config({"a": 1}, [("a", "/", "a")], extra=extra))
    with pytest.raises(ConfigError) as info:
        load_snapshot([str(path)], version=1, gateway_class="weft")
    assert f"{name} frames the message or the connection" in str(info.value)
