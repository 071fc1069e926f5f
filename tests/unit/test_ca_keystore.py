"""CA files: private keys, refusal of readable keys, rotation and the trust bundle."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from ca import keystore
from ca.authority import LEAF_TTL

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


def _roots_in_bundle(data_dir: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((data_dir / "ca" / "root.pem").read_bytes())


def test_init_writes_private_keys_and_refuses_to_overwrite(tmp_path: Path) -> None:
    ca = keystore.init(tmp_path, "shop.local", NOW)
    assert ca.trust_domain == "shop.local" and ca.generation == 1
    d = tmp_path / "ca"
    assert oct(d.stat().st_mode & 0o777) == "0o700"
    for key in ("root-1-key.pem", "intermediate-key.pem"):
        assert oct((d / key).stat().st_mode & 0o777) == "0o600"
    assert _roots_in_bundle(tmp_path) == [ca.roots[0].cert]
    with pytest.raises(keystore.KeystoreError, match=r"already exists.*meshctl ca rotate"):
        keystore.init(tmp_path, "shop.local", NOW)


def test_a_key_others_can_read_is_refused_with_the_fix(tmp_path: Path) -> None:
    keystore.init(tmp_path, "weft.local", NOW)
    key = tmp_path / "ca" / "intermediate-key.pem"
    os.chmod(key, 0o644)
    with pytest.raises(keystore.KeystoreError) as err:
        keystore.load(tmp_path, NOW)
    assert str(key) in str(err.value) and "mode 0644" in str(err.value)
    assert f"chmod 600 {key}" in str(err.value)


def test_rotation_keeps_the_old_root_until_its_leaves_have_expired(tmp_path: Path) -> None:
    first = keystore.init(tmp_path, "weft.local", NOW)
    rotated = keystore.rotate(tmp_path, NOW + datetime.timedelta(days=30))
    assert rotated.generation == 2
    assert rotated.signer.cert != first.signer.cert
    assert [r.generation for r in rotated.roots] == [2, 1]  # current first
    assert len(_roots_in_bundle(tmp_path)) == 2
    retire = rotated.roots[1].retire_after
    assert retire is not None and retire > NOW + datetime.timedelta(days=30) + LEAF_TTL
    later = keystore.load(tmp_path, retire + datetime.timedelta(seconds=1))
    assert [r.generation for r in later.roots] == [2]


def test_missing_ca_and_swapped_keys_are_explained(tmp_path: Path) -> None:
    with pytest.raises(keystore.KeystoreError, match=r"no CA in .*meshctl ca init"):
        keystore.load(tmp_path, NOW)
    keystore.init(tmp_path, "weft.local", NOW)
    d = tmp_path / "ca"
    (d / "intermediate-key.pem").write_bytes((d / "root-1-key.pem").read_bytes())
    with pytest.raises(keystore.KeystoreError, match=r"is not the key of intermediate\.pem"):
        keystore.load(tmp_path, NOW)


def test_meshctl_ca_init_show_rotate(tmp_path: Path) -> None:
    def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mesh_ctl", "ca", *args, "--data-dir", str(tmp_path)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    init = meshctl("init", "--trust-domain", "demo.local")
    assert init.returncode == 0, init.stderr
    assert "trust bundle (for --ca-file)" in init.stdout
    again = meshctl("init")
    assert again.returncode == 1 and "already exists" in again.stderr
    assert meshctl("rotate").returncode == 0
    shown = json.loads(meshctl("show", "-o", "json").stdout)
    assert shown["trust_domain"] == "demo.local"
    kinds = [c["kind"] for c in shown["certificates"]]
    assert kinds == ["root", "root (retiring)", "intermediate"]
    assert all(c["fingerprint"].startswith("sha256:") for c in shown["certificates"])
