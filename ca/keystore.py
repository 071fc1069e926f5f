"""CA material on disk, under `<data-dir>/ca/`: keys 0600, refused when others can read them.

Layout. `root-<n>.pem` / `root-<n>-key.pem` per root generation, `intermediate.pem` /
`intermediate-key.pem` for the current signer, `root.pem` the trust bundle (every root still
trusted: what sidecars bootstrap from) and `state.json` (trust domain, generations, when
retired roots leave the bundle).

Rotation. `rotate` makes a new root and intermediate and signs with them at once; the old
root stays in the bundle until the last leaf its intermediate could have signed has expired
(`LEAF_TTL` plus clock skew), so peers holding either generation keep verifying each other
while they re-issue. After that moment `load` drops it from the bundle.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.authority import CLOCK_SKEW, LEAF_TTL, Issuer, make_intermediate, make_root
from ca.spiffe import SpiffeId


class KeystoreError(Exception):
    """The CA files are missing, unsafe or inconsistent; the message says what to do."""


@dataclass(frozen=True, slots=True)
class RootInfo:
    generation: int
    cert: x509.Certificate
    retire_after: datetime.datetime | None  # None: current


@dataclass(frozen=True, slots=True)
class CA:
    trust_domain: str
    generation: int
    signer: Issuer  # the current intermediate, its chain up to the current root
    roots: tuple[RootInfo, ...]  # still trusted, current first

    @property
    def bundle_pem(self) -> bytes:
        return b"".join(r.cert.public_bytes(serialization.Encoding.PEM) for r in self.roots)


def serial() -> int:
    """A random positive 128-bit serial number."""
    return secrets.randbits(128) | 1


def fingerprint(cert: x509.Certificate) -> str:
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def ca_dir(data_dir: Path) -> Path:
    return data_dir / "ca"


def init(data_dir: Path, trust_domain: str, now: datetime.datetime) -> CA:
    """Create a root and an intermediate; refuses to overwrite an existing CA."""
    SpiffeId(trust_domain, "default", "x")  # validates the trust domain
    d = ca_dir(data_dir)
    if (d / "state.json").exists():
        raise KeystoreError(f"a CA already exists in {d}; use `meshctl ca rotate` to renew it")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    state = {"trust_domain": trust_domain, "generation": 0, "roots": []}
    _new_generation(d, state, now)
    token_key(data_dir)  # now, so a copy of the directory is complete (control plane replicas)
    return load(data_dir, now)


def rotate(data_dir: Path, now: datetime.datetime) -> CA:
    d = ca_dir(data_dir)
    state = _state(d)
    retire = (now + LEAF_TTL + CLOCK_SKEW).isoformat()
    for root in state["roots"]:
        if root["retire_after"] is None:
            root["retire_after"] = retire
    _new_generation(d, state, now)
    return load(data_dir, now)


def load(data_dir: Path, now: datetime.datetime) -> CA:
    d = ca_dir(data_dir)
    state = _state(d)
    gen = int(state["generation"])
    roots: list[RootInfo] = []
    for entry in state["roots"]:
        retire = entry["retire_after"]
        until = datetime.datetime.fromisoformat(retire) if retire else None
        if until is not None and until <= now:
            continue  # every leaf it could vouch for has expired
        cert = _read_cert(d / f"root-{entry['generation']}.pem")
        roots.append(RootInfo(int(entry["generation"]), cert, until))
    roots.sort(key=lambda r: r.retire_after is not None)
    current = roots[0]
    inter = _read_cert(d / "intermediate.pem")
    key = _read_key(d / "intermediate-key.pem")
    if inter.public_key() != key.public_key():
        raise KeystoreError(f"{d / 'intermediate-key.pem'} is not the key of intermediate.pem")
    return CA(
        trust_domain=str(state["trust_domain"]),
        generation=gen,
        signer=Issuer(inter, key, (current.cert,)),
        roots=tuple(roots),
    )


def token_key(data_dir: Path) -> bytes:
    """The key join tokens are signed with (made on first use, 0600 like the CA keys)."""
    d = ca_dir(data_dir)
    _state(d)  # tokens belong to an initialized CA
    path = d / "token-key"
    if not path.exists():
        _write(path, secrets.token_bytes(32), 0o600)
    _check_private(path)
    return path.read_bytes()


# -- files -----------------------------------------------------------------------------------
def _new_generation(d: Path, state: dict[str, Any], now: datetime.datetime) -> None:
    gen = int(state["generation"]) + 1
    td = str(state["trust_domain"])
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = Issuer(make_root(root_key, td, now=now, serial=serial(), generation=gen), root_key)
    key = ec.generate_private_key(ec.SECP256R1())
    inter = make_intermediate(root, key, td, now=now, serial=serial(), generation=gen)
    _write_key(d / f"root-{gen}-key.pem", root_key)
    _write(d / f"root-{gen}.pem", root.cert.public_bytes(serialization.Encoding.PEM))
    _write_key(d / "intermediate-key.pem", key)
    _write(d / "intermediate.pem", inter.public_bytes(serialization.Encoding.PEM))
    state["roots"].append({"generation": gen, "retire_after": None})
    state["generation"] = gen
    _write(d / "state.json", json.dumps(state, indent=2).encode())
    bundle = load(d.parent, now).bundle_pem
    _write(d / "root.pem", bundle)


def _state(d: Path) -> dict[str, Any]:
    path = d / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"no CA in {d}; create one with `meshctl ca init`") from None
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or "roots" not in data:
        raise KeystoreError(f"{path}: not a Weft CA state file")
    return data


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, 0o600)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise KeystoreError(f"{path}: {exc.strerror}") from None
    except ValueError:
        raise KeystoreError(f"{path}: not a PEM certificate") from None


def _check_private(path: Path) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise KeystoreError(f"{path}: {exc.strerror}") from None
    if mode & 0o077:
        raise KeystoreError(
            f"{path} can be read by group or others (mode {mode:04o}); "
            f"a CA key must be private: chmod 600 {path}"
        )


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    _check_private(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise KeystoreError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeystoreError(f"{path}: the CA uses ECDSA keys")
    return key
