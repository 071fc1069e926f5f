"""Getting an SVID from the control plane's `Identity.Sign` (grpcio and cryptography, blocking).

Sidecars run this in the identity helper process (`sidecar.identity.agent`), so that neither
library stays in the data plane's memory. The key is made there and goes only to the sidecar,
over a pipe; only a CSR goes out. Trust in the control
plane comes from a root bundle file or from a pinned root fingerprint, never from the
network alone: with a fingerprint, the server's certificate chain is fetched once without
verification, the root whose SHA-256 matches is taken, and everything after that is
verified against it.
"""

from __future__ import annotations

import hashlib
import socket
import ssl

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca.authority import svid_identity
from ca.spiffe import SpiffeId
from control.api import CONTROL_PLANE_HOST
from mesh_ctl.api import identity_pb2, identity_pb2_grpc
from sidecar.identity.svid import IdentityError, Svid

PEM = serialization.Encoding.PEM


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_for(key: ec.EllipticCurvePrivateKey, identity: SpiffeId) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Weft")]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(PEM)


def request_svid(
    target: str,
    identity: SpiffeId,
    *,
    trust_pem: bytes,
    token: str = "",
    current: Svid | None = None,
    timeout_s: float = 10.0,
) -> Svid:
    """A new SVID for `identity`, proved by `token` or by the `current` SVID (renewal)."""
    key = new_key()
    csr = csr_for(key, identity)
    request = identity_pb2.SignRequest(csr=csr, token=token)
    if current is not None:
        current_key = serialization.load_pem_private_key(current.key_pem, password=None)
        assert isinstance(current_key, ec.EllipticCurvePrivateKey)
        request.current_chain = current.cert_pem + current.chain_pem
        request.proof = current_key.sign(csr, ec.ECDSA(hashes.SHA256()))
    creds = grpc.ssl_channel_credentials(root_certificates=trust_pem)
    options = [("grpc.ssl_target_name_override", CONTROL_PLANE_HOST)]
    with grpc.secure_channel(target, creds, options=options) as channel:
        stub = identity_pb2_grpc.IdentityStub(channel)  # type: ignore[no-untyped-call]
        try:
            reply = stub.Sign(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise IdentityError(f"{exc.code().name}: {exc.details()}") from None
    leaf = x509.load_pem_x509_certificate(reply.certificate)
    if svid_identity(leaf) != identity:
        raise IdentityError(f"the control plane issued {svid_identity(leaf)}, not {identity}")
    return Svid(
        identity=identity,
        key_pem=key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert_pem=reply.certificate,
        chain_pem=reply.chain,
        bundle_pem=reply.trust_bundle,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        session=reply.session,
    )


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """DER certificates the peer sent (public from Python 3.13, in `_ssl` before)."""
    getter = getattr(tls, "get_unverified_chain", None)
    if getter is None:
        getter = tls._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in getter()]  # type: ignore[attr-defined]


def trust_from_fingerprint(target: str, fingerprint: str, timeout_s: float = 10.0) -> bytes:
    """The control plane's root, found in its TLS chain by its pinned SHA-256 fingerprint."""
    want = fingerprint.removeprefix("sha256:").replace(":", "").lower()
    host, _, port = target.rpartition(":")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only to read the chain; the pin decides what is trusted
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
            ctx.wrap_socket(raw, server_hostname=CONTROL_PLANE_HOST) as tls,
        ):
            ders = _unverified_chain(tls)
    except (OSError, ValueError) as exc:
        raise IdentityError(f"cannot reach the control plane at {target}: {exc}") from None
    for der in ders:
        if hashlib.sha256(der).hexdigest() == want:
            return x509.load_der_x509_certificate(der).public_bytes(PEM)
    raise IdentityError(f"no certificate the control plane presented has fingerprint {fingerprint}")


def trust_domain(bundle_pem: bytes) -> str:
    """The trust domain the CA serves (the OU of its root)."""
    try:
        root = x509.load_pem_x509_certificates(bundle_pem)[0]
    except ValueError:
        raise IdentityError("the CA bundle holds no PEM certificate") from None
    ou = root.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(ou[0].value) if ou else "weft.local"
