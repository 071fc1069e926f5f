"""The CA's signing policy, every rejection path, and chains that OpenSSL accepts."""

from __future__ import annotations

import base64
import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.authority import (
    Issuer,
    SigningError,
    make_intermediate,
    make_root,
    sign_leaf,
    svid_identity,
)
from ca.spiffe import InvalidSpiffeId, SpiffeId

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
ORDERS = SpiffeId("weft.local", "default", "orders")


@pytest.fixture(scope="module")
def chain() -> tuple[Issuer, Issuer]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = Issuer(make_root(root_key, "weft.local", now=NOW, serial=1), root_key)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_intermediate(root, key, "weft.local", now=NOW, serial=2)
    return root, Issuer(cert, key, (root.cert,))


def _csr(
    key: object = None, *, sans: list[x509.GeneralName] | None = None, sign: bool = True
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orders")])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)  # type: ignore[arg-type]
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    if not sign:
        der[-3] ^= 0xFF  # corrupt the signature
    return (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + _b64(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )


def _b64(data: bytes) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + 64] + b"\n" for i in range(0, len(text), 64))


def test_a_leaf_has_exactly_the_proven_identity(chain: tuple[Issuer, Issuer]) -> None:
    _, inter = chain
    uri = x509.UniformResourceIdentifier(ORDERS.uri)
    for csr in (_csr(), _csr(sans=[uri])):
        leaf = sign_leaf(csr, inter, ORDERS, now=NOW, serial=12345)
        assert svid_identity(leaf) == ORDERS
        assert leaf.serial_number == 12345
        assert leaf.not_valid_after_utc - NOW == datetime.timedelta(hours=24)
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and not bc.value.ca
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert leaf.issuer == inter.cert.subject


@pytest.mark.parametrize(
    ("csr_args", "reason"),
    [
        ({"sans": [x509.DNSName("orders.example")]}, "DNSName names"),
        ({"sans": [x509.UniformResourceIdentifier("spiffe://weft.local/ns/default/svc/web")]},
         "asks for spiffe://weft.local/ns/default/svc/web but the caller proved"),
        ({"sans": [x509.UniformResourceIdentifier(ORDERS.uri),
                   x509.UniformResourceIdentifier(ORDERS.uri + "x")]}, "more than one URI"),
        ({"key": rsa.generate_private_key(65537, 1024)}, "RSA key of 1024 bits is too weak"),
        ({"key": ec.generate_private_key(ec.SECP521R1())}, "unsupported curve secp521r1"),
        ({"key": ed25519.Ed25519PrivateKey.generate()}, "unsupported key type"),
        ({"sign": False}, "signature does not verify"),
    ],
)  # fmt: skip
def test_csrs_are_refused_with_a_reason(
    chain: tuple[Issuer, Issuer], csr_args: dict[str, object], reason: str
) -> None:
    with pytest.raises(SigningError, match=reason):
        sign_leaf(_csr(**csr_args), chain[1], ORDERS, now=NOW, serial=1)  # type: ignore[arg-type]


def test_garbage_and_other_trust_domains_are_refused(chain: tuple[Issuer, Issuer]) -> None:
    with pytest.raises(SigningError, match="not a PEM certificate signing request"):
        sign_leaf(b"hello", chain[1], ORDERS, now=NOW, serial=1)
    other = SpiffeId("evil.example", "default", "orders")
    with pytest.raises(SigningError, match=r"outside the trust domain weft\.local"):
        sign_leaf(_csr(), chain[1], other, now=NOW, serial=1)


def test_leaf_lifetime_never_outlives_the_intermediate(chain: tuple[Issuer, Issuer]) -> None:
    _, inter = chain
    late = inter.cert.not_valid_after_utc - datetime.timedelta(hours=2)
    leaf = sign_leaf(_csr(), inter, ORDERS, now=late, serial=1)
    assert leaf.not_valid_after_utc == inter.cert.not_valid_after_utc
    with pytest.raises(SigningError, match="intermediate has expired"):
        sign_leaf(_csr(), inter, ORDERS, now=inter.cert.not_valid_after_utc, serial=1)


def test_intermediate_is_constrained_to_the_trust_domain(chain: tuple[Issuer, Issuer]) -> None:
    root, inter = chain
    nc = inter.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.UniformResourceIdentifier("weft.local")]
    assert inter.cert.not_valid_after_utc - NOW == datetime.timedelta(days=365)
    assert root.cert.not_valid_after_utc - NOW == datetime.timedelta(days=3650)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed")
def test_openssl_verifies_the_chain_for_clients_and_servers(
    chain: tuple[Issuer, Issuer], tmp_path: Path
) -> None:
    root, inter = chain
    now = datetime.datetime.now(datetime.UTC)
    # A chain made now, so OpenSSL's clock sees it valid.
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = Issuer(make_root(root_key, "weft.local", now=now, serial=3), root_key)
    key = ec.generate_private_key(ec.SECP256R1())
    inter = Issuer(make_intermediate(root, key, "weft.local", now=now, serial=4), key)
    leaf = sign_leaf(_csr(), inter, ORDERS, now=now, serial=5)
    pem = serialization.Encoding.PEM
    (tmp_path / "root.pem").write_bytes(root.cert.public_bytes(pem))
    (tmp_path / "inter.pem").write_bytes(inter.cert.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    for purpose in ("sslclient", "sslserver"):
        out = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"), "-untrusted",
             str(tmp_path / "inter.pem"), "-purpose", purpose, str(tmp_path / "leaf.pem")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert out.returncode == 0 and ": OK" in out.stdout, out.stderr


def test_spiffe_ids() -> None:
    assert SpiffeId.parse("spiffe://weft.local/ns/shop/svc/orders") == SpiffeId(
        "weft.local", "shop", "orders"
    )
    for bad in (
        "https://weft.local/ns/a/svc/b",
        "spiffe://weft.local/ns/a",
        "spiffe://weft.local/svc/b/ns/a",
        "spiffe://Weft.Local/ns/a/svc/b",
        "spiffe://weft.local/ns/A/svc/b",
        "spiffe://weft.local/ns/a/svc/b\n",  # `$` would match before a final newline
    ):
        with pytest.raises(InvalidSpiffeId):
            SpiffeId.parse(bad)
    with pytest.raises(InvalidSpiffeId):
        SpiffeId("weft.local", "default", "orders\n")


def test_verify_svid_follows_the_chain_to_a_trusted_root(chain: tuple[Issuer, Issuer]) -> None:
    from ca.authority import verify_svid

    root, inter = chain
    leaf = sign_leaf(_csr(), inter, ORDERS, now=NOW, serial=9)
    assert verify_svid([leaf, inter.cert], [root.cert], now=NOW) == ORDERS
    with pytest.raises(SigningError, match="not valid now"):
        verify_svid([leaf, inter.cert], [root.cert], now=NOW + datetime.timedelta(days=2))
    other_key = ec.generate_private_key(ec.SECP256R1())
    impostor = make_root(other_key, "weft.local", now=NOW, serial=7)  # same name, other key
    with pytest.raises(SigningError, match="does not verify"):
        verify_svid([leaf, inter.cert], [impostor], now=NOW)
    unrelated = make_root(other_key, "weft.local", now=NOW, serial=8, generation=2)
    with pytest.raises(SigningError, match="does not lead to a trusted root"):
        verify_svid([leaf, inter.cert], [unrelated], now=NOW)
