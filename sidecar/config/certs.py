"""TLS certificate material: PEM certificate/key pairs checked before anything serves them.

`cryptography` is imported only when a configuration has certificates, so a plain-HTTP
gateway does not pay its memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.errors import ConfigError

CertKey = tuple[str, str, str]  # (kind, namespace, name): ("Secret", "default", "shop-cert")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientValidation:
    """Client certificates on an HTTPS listener (ClientTrafficPolicy): the CAs they must
    chain to, whether one is required, and what X-Forwarded-Client-Cert says of it
    (`xfcc`: the details to add; None: the field is only removed)."""

    ca_pem: bytes
    optional: bool = False
    xfcc: tuple[str, ...] | None = ("Subject", "URI", "DNS")

    def check(self) -> str | None:
        """Why the CA bundle cannot be used, or None."""
        from cryptography import x509

        try:
            return None if x509.load_pem_x509_certificates(self.ca_pem) else "holds no certificate"
        except ValueError as exc:
            return f"is not a PEM certificate bundle ({exc})"


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificatePair:
    name: str  # "Secret default/shop-cert", for messages
    cert_pem: bytes = field(repr=False)  # the chain, leaf first
    key_pem: bytes = field(repr=False)
    dns_names: tuple[str, ...]  # lower-case; "*.example.com" wildcards as written
    not_after: float  # Unix seconds
    files: tuple[str, ...] = ()  # where it was read from (watched for changes)

    def covers(self, host: str) -> bool:
        """Whether the certificate names `host` (RFC 6125: a wildcard spans one label)."""
        for name in self.dns_names:
            if name in (host, "*"):
                return True
            if name.startswith("*.") and host.partition(".")[2] == name[2:]:
                return True
        return False


def check_pair(
    name: str, cert_pem: bytes, key_pem: bytes, *, files: tuple[str, ...] = ()
) -> CertificatePair:
    """Parse and cross-check a pair; ConfigError says what is wrong with it."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError("no valid PEM certificate found", source=name) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ConfigError("the private key is encrypted", source=name) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"no valid PEM private key found ({exc})", source=name) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigError(f"RSA key of {key.key_size} bits; at least 2048", source=name)
    elif not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError(f"unsupported key type {type(key).__name__}", source=name)
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ConfigError("the private key does not match the certificate", source=name)
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [d.lower().rstrip(".") for d in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns = []
    if not dns:  # legacy certificates name their host in the subject's CN only
        dns = [
            str(a.value).lower()
            for a in leaf.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        ]
    return CertificatePair(
        name=name,
        cert_pem=cert_pem,
        key_pem=key_pem,
        dns_names=tuple(dns),
        not_after=leaf.not_valid_after_utc.timestamp(),
        files=files,
    )
