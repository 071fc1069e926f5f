"""SVIDs for tests, straight from a local CA (what Identity.Sign would return)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ca import keystore
from ca.authority import sign_leaf
from ca.spiffe import SpiffeId
from sidecar.identity.client import csr_for, new_key
from sidecar.identity.svid import Svid

PEM = serialization.Encoding.PEM


def mint(data_dir: Path, identity: SpiffeId) -> Svid:
    """An SVID straight from a local CA (what Identity.Sign would return)."""
    now = datetime.datetime.now(datetime.UTC)
    ca = keystore.load(data_dir, now)
    key = new_key()
    leaf = sign_leaf(csr_for(key, identity), ca.signer, identity, now=now, serial=keystore.serial())
    return Svid(
        identity=identity,
        key_pem=key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        cert_pem=leaf.public_bytes(PEM),
        chain_pem=ca.signer.cert.public_bytes(PEM),
        bundle_pem=ca.bundle_pem,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )
