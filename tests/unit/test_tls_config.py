"""HTTPS listeners in configuration: certificate material, references, grants and conflicts."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.config.certs import check_pair
from sidecar.config.loader import FileStamp, load_snapshot
from sidecar.errors import ConfigError
from tests.support.pki import TestCA

LISTENER = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: gw}}
spec:
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    tls: {{certificateRefs: [{ref}]}}
"""


def _secret(name: str, ns: str, cert: bytes, key: bytes) -> str:
    return f"""---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: {ns}}}
type: kubernetes.io/tls
data:
  tls.crt: {base64.b64encode(cert).decode()}
  tls.key: {base64.b64encode(key).decode()}
"""


def _load(tmp_path: Path, text: str) -> tuple[list[str], list[str]]:
    """(listener names served, warnings)."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    snap = load_snapshot([str(path)], version=1, gateway_class="weft")
    names = [lst.name for router in snap.routers.values() for lst in router.listeners()]
    return names, list(snap.warnings)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def test_secret_in_the_gateway_namespace_serves(tmp_path: Path, ca: TestCA) -> None:
    leaf = ca.issue("shop.example")
    text = LISTENER.format(ref="{name: cert}") + _secret("cert", "gw", leaf.cert_pem, leaf.key_pem)
    names, warnings = _load(tmp_path, text)
    assert names == ["gw/edge/https"] and not warnings


def test_cross_namespace_secret_needs_a_reference_grant(tmp_path: Path, ca: TestCA) -> None:
    leaf = ca.issue("shop.example")
    base = LISTENER.format(ref="{name: cert, namespace: certs}") + _secret(
        "cert", "certs", leaf.cert_pem, leaf.key_pem
    )
    names, warnings = _load(tmp_path, base)
    assert names == []
    assert "certificateRef Secret certs/cert is not permitted by a ReferenceGrant" in warnings[0]
    grant = """---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: gw}]
  to: [{group: "", kind: Secret}]
"""
    names, warnings = _load(tmp_path, base + grant)
    assert names == ["gw/edge/https"] and not warnings


@pytest.mark.parametrize(
    ("ref", "extra", "warning"),
    [
        ("{name: missing}", "", "Secret gw/missing not found"),
        ("{group: example.com, kind: Vault, name: x}", "", "kind example.com/Vault is not"),
        (
            "{name: opaque}",
            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: opaque, namespace: gw}\n"
            "data: {password: aGk=}\n",
            "Secret gw/opaque not found (or not of type kubernetes.io/tls)",
        ),
    ],
)
def test_unresolved_certificate_refs_leave_the_listener_unserved(
    tmp_path: Path, ref: str, extra: str, warning: str
) -> None:
    names, warnings = _load(tmp_path, LISTENER.format(ref=ref) + extra)
    assert names == []
    assert len(warnings) == 1 and warning in warnings[0], warnings


def test_http_and_https_on_one_port_conflict(tmp_path: Path, ca: TestCA) -> None:
    leaf = ca.issue("shop.example")
    text = LISTENER.format(ref="{name: cert}").replace(
        "  listeners:\n", "  listeners:\n  - {name: plain, port: 443, protocol: HTTP}\n"
    ) + _secret("cert", "gw", leaf.cert_pem, leaf.key_pem)
    names, warnings = _load(tmp_path, text)
    assert names == ["gw/edge/plain"]
    assert "protocol HTTPS conflicts with HTTP on port 443" in warnings[0]


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda c, k: (c, k.replace(b"PRIVATE KEY", b"PUBLIC KEY")), "no valid PEM private key"),
        (lambda c, k: (b"junk", k), "no valid PEM certificate"),
        (lambda c, k: (c, TestCA().issue("x").key_pem), "does not match the certificate"),
    ],
)
def test_bad_pairs_are_refused_with_a_reason(ca: TestCA, mangle: object, message: str) -> None:
    leaf = ca.issue("shop.example")
    cert, key = mangle(leaf.cert_pem, leaf.key_pem)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message):
        check_pair("Secret gw/cert", cert, key)


def test_weak_rsa_keys_are_refused(ca: TestCA) -> None:
    leaf = ca.issue("shop.example", key=rsa.generate_private_key(65537, 1024))
    with pytest.raises(ConfigError, match="RSA key of 1024 bits"):
        check_pair("Secret gw/cert", leaf.cert_pem, leaf.key_pem)


def test_bad_base64_names_the_field(tmp_path: Path) -> None:
    text = LISTENER.format(ref="{name: cert}") + (
        "---\napiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: gw}\n"
        "type: kubernetes.io/tls\ndata: {tls.crt: '!!', tls.key: 'a2V5'}\n"
    )
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"document 2 \(Secret gw/cert\): data.tls.crt: is not"):
        load_snapshot([str(tmp_path / "c.yaml")], version=1, gateway_class="weft")


def test_certificate_files_are_relative_to_the_yaml_and_watched(tmp_path: Path, ca: TestCA) -> None:
    (tmp_path / "certs").mkdir()
    ca.issue("shop.example").write(tmp_path / "certs", "shop")
    text = LISTENER.format(ref="{group: weft.dev, kind: TLSCertificate, name: shop}") + (
        "---\napiVersion: weft.dev/v1alpha1\nkind: TLSCertificate\n"
        "metadata: {name: shop, namespace: gw}\n"
        "spec: {certFile: certs/shop.pem, keyFile: certs/shop-key.pem}\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(text)
    snap = load_snapshot([str(path)], version=1, gateway_class="weft")
    assert str(tmp_path / "certs" / "shop.pem") in snap.sources
    before = FileStamp.of([str(path)], snap.sources)
    ca.issue("shop.example").write(tmp_path / "certs", "shop")
    assert FileStamp.of([str(path)], snap.sources) != before
    (tmp_path / "certs" / "shop-key.pem").unlink()
    with pytest.raises(ConfigError, match=r"TLSCertificate gw/shop: spec.keyFile: .*shop-key.pem"):
        load_snapshot([str(path)], version=2, gateway_class="weft")


def test_wildcard_coverage_spans_one_label(ca: TestCA) -> None:
    leaf = ca.issue("*.example.com", "example.org")
    pair = check_pair("p", leaf.cert_pem, leaf.key_pem)
    assert pair.covers("a.example.com") and pair.covers("example.org")
    assert not pair.covers("a.b.example.com") and not pair.covers("example.com")
