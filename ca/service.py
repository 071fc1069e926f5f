"""The identity service of `meshctl server`: gRPC `Identity.Sign`, over TLS with the control
plane's own SVID.

A caller proves who it is with a join token (first issue) or with its current SVID
(renewal: the chain, verified against the trust bundle, and a signature over the new CSR by
the SVID's key; grpcio cannot ask for optional client certificates, so the proof travels in
the request). Either way the CA signs exactly that identity. Refusals carry a reason:
UNAUTHENTICATED for bad tokens and proofs, INVALID_ARGUMENT for CSRs the policy refuses.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca import keystore, tokens
from ca.authority import LEAF_TTL, SigningError, sign_leaf, verify_svid
from ca.spiffe import SpiffeId
from control.api import CONTROL_PLANE_HOST
from mesh_ctl.api import identity_pb2, identity_pb2_grpc

log = logging.getLogger("weft.identity")

CONTROL_PLANE_NAMESPACE = "weft-system"
CONTROL_PLANE_SERVICE = "control-plane"

PEM = serialization.Encoding.PEM
Clock = Callable[[], datetime.datetime]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class IdentityService(identity_pb2_grpc.IdentityServicer):
    data_dir: Path
    leaf_ttl: datetime.timedelta = LEAF_TTL
    clock: Clock = _utcnow

    def Sign(self, request: Any, context: Any) -> Any:
        now = self.clock()
        try:
            ca = keystore.load(self.data_dir, now)
            identity = self._prove(request, ca, now)
            leaf = sign_leaf(
                request.csr, ca.signer, identity, now=now, serial=keystore.serial(),
                ttl=self.leaf_ttl,
            )  # fmt: skip
        except (tokens.TokenError, _NoProof) as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except SigningError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("signed %s until %s", identity.uri, leaf.not_valid_after_utc.isoformat())
        return identity_pb2.SignResponse(
            certificate=leaf.public_bytes(PEM),
            chain=ca.signer.cert.public_bytes(PEM),
            trust_bundle=ca.bundle_pem,
            not_after=int(leaf.not_valid_after_utc.timestamp()),
            session=tokens.create(
                keystore.token_key(self.data_dir), identity, now=now,
                ttl=leaf.not_valid_after_utc - now, use="session",
            ),
        )  # fmt: skip

    def _prove(self, request: Any, ca: keystore.CA, now: datetime.datetime) -> SpiffeId:
        """The identity the caller proved: its token's, or its current SVID's."""
        if request.token:
            return tokens.verify(keystore.token_key(self.data_dir), request.token, now=now)
        if not request.current_chain:
            raise _NoProof(
                "no proof of identity: send a join token, or renew with the current SVID"
            )
        try:
            chain = x509.load_pem_x509_certificates(request.current_chain)
        except ValueError:
            raise _NoProof("current_chain is not PEM certificates") from None
        try:
            identity = verify_svid(chain, [r.cert for r in ca.roots], now=now)
        except SigningError as exc:
            raise _NoProof(f"the current SVID does not verify: {exc}") from None
        key = chain[0].public_key()
        try:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            key.verify(request.proof, request.csr, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise _NoProof("the renewal proof is not signed by the current SVID's key") from None
        return identity


class _NoProof(Exception):
    pass


def control_plane_credentials(
    data_dir: Path, now: datetime.datetime, ttl: datetime.timedelta = LEAF_TTL
) -> tuple[bytes, bytes]:
    """(key PEM, chain PEM) for the control plane's own SVID, minted from the local CA."""
    ca = keystore.load(data_dir, now)
    key = ec.generate_private_key(ec.SECP256R1())
    identity = SpiffeId(ca.trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, CONTROL_PLANE_HOST)])
        )
        .issuer_name(ca.signer.cert.subject)
        .public_key(key.public_key())
        .serial_number(keystore.serial())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + ttl, ca.signer.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(identity.uri), x509.DNSName(CONTROL_PLANE_HOST)]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca.signer.key, ca.signer.cert.signature_hash_algorithm)  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # The root goes along so that a sidecar pinning its fingerprint can find it (--ca-fingerprint).
    chain = (
        leaf.public_bytes(PEM)
        + ca.signer.cert.public_bytes(PEM)
        + ca.roots[0].cert.public_bytes(PEM)
    )
    return key_pem, chain
