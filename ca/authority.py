"""The certificate authority's pure core: roots, intermediates and leaf SVIDs from CSRs.

Nothing here reads files, clocks or randomness: `now` and serial numbers come from the
caller, so every decision (what a CSR may ask for, lifetimes, extensions) is testable as is.

Policy for leaves (X509-SVIDs): exactly the identity the caller proved, as the only SAN (a
URI); ECDSA P-256/P-384 or RSA ≥ 2048 keys; a valid CSR signature; `CA:false`, key usage
digitalSignature, extended key usage serverAuth + clientAuth; lifetime `leaf_ttl_s` (24 h
by default) but never past the intermediate. Intermediates carry a URI name constraint for
the trust domain, so even a leaked intermediate cannot vouch for another domain.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.spiffe import SpiffeId

ROOT_TTL = datetime.timedelta(days=3650)
INTERMEDIATE_TTL = datetime.timedelta(days=365)
LEAF_TTL = datetime.timedelta(hours=24)
CLOCK_SKEW = datetime.timedelta(minutes=5)  # leaves are valid from a little before `now`

CAKey = ec.EllipticCurvePrivateKey


class SigningError(Exception):
    """A CSR the authority refuses; the message is the reason, fit to show the caller."""


@dataclass(frozen=True, slots=True)
class Issuer:
    """A signing certificate with its key, and the chain above it (up to the root)."""

    cert: x509.Certificate
    key: CAKey
    chain: tuple[x509.Certificate, ...] = ()


def _name(common_name: str, trust_domain: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Weft"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_root(
    key: CAKey, trust_domain: str, *, now: datetime.datetime, serial: int, generation: int = 1
) -> x509.Certificate:
    """A self-signed root for `trust_domain` (10 years)."""
    name = _name(f"Weft root CA {generation}", trust_domain)
    pub = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pub)
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_intermediate(
    root: Issuer,
    key: CAKey,
    trust_domain: str,
    *,
    now: datetime.datetime,
    serial: int,
    generation: int = 1,
) -> x509.Certificate:
    """An intermediate (1 year, within the root's life) limited to `trust_domain`."""
    pub = key.public_key()
    not_after = min(now + INTERMEDIATE_TTL, root.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"Weft intermediate CA {generation}", trust_domain))
        .issuer_name(root.cert.subject)
        .public_key(pub)
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(_authority_key_id(root.cert), critical=False)
        .sign(root.key, hashes.SHA256())
    )


def sign_leaf(
    csr_pem: bytes,
    issuer: Issuer,
    identity: SpiffeId,
    *,
    now: datetime.datetime,
    serial: int,
    ttl: datetime.timedelta = LEAF_TTL,
) -> x509.Certificate:
    """The X509-SVID for `identity` (which the caller proved) from its CSR."""
    csr = _load_csr(csr_pem)
    _check_key(csr.public_key())
    _check_sans(csr, identity)
    domains = _permitted_domains(issuer.cert)
    if domains is not None and identity.trust_domain not in domains:
        raise SigningError(f"{identity.uri} is outside the trust domain {', '.join(domains)}")
    not_after = min(now + ttl, issuer.cert.not_valid_after_utc)
    if not_after <= now:
        raise SigningError("the intermediate has expired; rotate the CA")
    pub = csr.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Weft")]))
        .issuer_name(issuer.cert.subject)
        .public_key(pub)
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False, key_encipherment=isinstance(pub, rsa.RSAPublicKey)),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(_authority_key_id(issuer.cert), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )


def svid_identity(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID an SVID names (its one URI SAN); ValueError if it has none or many."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate has no subjectAltName") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise ValueError(f"an SVID has exactly one URI SAN, this one has {len(uris)}")
    return SpiffeId.parse(uris[0])


def verify_svid(
    chain: list[x509.Certificate], roots: list[x509.Certificate], *, now: datetime.datetime
) -> SpiffeId:
    """The identity of an SVID chain (leaf first, then intermediates) that leads to one of
    `roots` and is valid at `now`; SigningError saying what fails otherwise."""
    if not chain:
        raise SigningError("no certificate")
    for cert in chain:
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise SigningError(f"certificate {cert.subject.rfc4514_string()} is not valid now")
    try:
        identity = svid_identity(chain[0])
    except ValueError as exc:
        raise SigningError(str(exc)) from None
    issuers = [*chain[1:], *roots]
    current = chain[0]
    for _ in range(len(issuers) + 1):
        if current in roots:
            return identity
        parent = next((c for c in issuers if c.subject == current.issuer and c != current), None)
        if parent is None:
            break
        try:
            current.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise SigningError("the chain does not verify") from None
        domains = _permitted_domains(parent)
        if domains is not None and identity.trust_domain not in domains:
            raise SigningError(f"{identity.uri} is outside its issuer's trust domain")
        current = parent
    raise SigningError("the chain does not lead to a trusted root")


# -- checks ------------------------------------------------------------------------------
def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise SigningError("not a PEM certificate signing request") from None
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError):
        valid = False
    if not valid:
        raise SigningError("the CSR's signature does not verify (not signed by its key)")
    return csr


def _check_key(key: object) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise SigningError(f"unsupported curve {key.curve.name}; use P-256 or P-384")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SigningError(f"RSA key of {key.key_size} bits is too weak; at least 2048")
        return
    raise SigningError(f"unsupported key type {type(key).__name__}; use ECDSA P-256")


def _check_sans(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
    """A CSR may ask for nothing (it gets its proven identity) or for exactly that identity."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    others = [n for n in san if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        kinds = ", ".join(sorted({type(n).__name__ for n in others}))
        raise SigningError(f"the CSR asks for {kinds} names; only the SPIFFE ID is issued")
    if len(uris) > 1:
        raise SigningError("the CSR asks for more than one URI; an SVID has exactly one")
    if uris and uris[0] != identity.uri:
        raise SigningError(f"the CSR asks for {uris[0]} but the caller proved {identity.uri}")


def _permitted_domains(cert: x509.Certificate) -> list[str] | None:
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None
    return [
        str(n.value)
        for n in nc.permitted_subtrees or ()
        if isinstance(n, x509.UniformResourceIdentifier)
    ]


def _key_usage(*, ca: bool, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
