"""Join tokens: what they prove, and every way one is refused."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from ca import keystore, tokens
from ca.spiffe import SpiffeId

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
KEY = b"k" * 32
ORDERS = SpiffeId("weft.local", "default", "orders")


def test_a_token_proves_its_identity_until_it_expires() -> None:
    token = tokens.create(KEY, ORDERS, now=NOW, ttl=datetime.timedelta(hours=1))
    assert tokens.verify(KEY, token, now=NOW + datetime.timedelta(minutes=59)) == ORDERS
    with pytest.raises(tokens.TokenError, match="expired at 2026-11-22T13:00:00"):
        tokens.verify(KEY, token, now=NOW + datetime.timedelta(hours=1))


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: t.replace("weft1.", "weft2."), "malformed token"),
        (lambda t: t + ".x", "malformed token"),
        (lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), "does not match"),
        (lambda t: t.split(".")[0] + "." + "e30" + "." + t.split(".")[2], "does not match"),
    ],
)
def test_forged_and_malformed_tokens_are_refused(mangle: object, reason: str) -> None:
    token = tokens.create(KEY, ORDERS, now=NOW, ttl=datetime.timedelta(hours=1))
    with pytest.raises(tokens.TokenError, match=reason):
        tokens.verify(KEY, mangle(token), now=NOW)  # type: ignore[operator]


def test_a_token_from_another_control_plane_is_refused() -> None:
    token = tokens.create(b"other" * 8, ORDERS, now=NOW, ttl=datetime.timedelta(hours=1))
    with pytest.raises(tokens.TokenError, match="forged, or from another control plane"):
        tokens.verify(KEY, token, now=NOW)


def test_join_and_session_tokens_cannot_stand_in_for_each_other() -> None:
    hour = datetime.timedelta(hours=1)
    session = tokens.create(KEY, ORDERS, now=NOW, ttl=hour, use="session")
    assert tokens.verify(KEY, session, now=NOW, use="session") == ORDERS
    with pytest.raises(tokens.TokenError, match="a session token cannot be used as a join token"):
        tokens.verify(KEY, session, now=NOW)
    with pytest.raises(tokens.TokenError, match="a join token cannot be used as a session token"):
        tokens.verify(KEY, tokens.create(KEY, ORDERS, now=NOW, ttl=hour), now=NOW, use="session")


def test_meshctl_token_create_prints_the_token_last(tmp_path: Path) -> None:
    keystore.init(tmp_path, "weft.local", datetime.datetime.now(datetime.UTC))
    out = subprocess.run(
        [sys.executable, "-m", "mesh_ctl", "token", "create", "orders", "--namespace", "shop",
         "--ttl", "10m", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    token = out.strip().splitlines()[-1]
    key = keystore.token_key(tmp_path)
    got = tokens.verify(key, token, now=datetime.datetime.now(datetime.UTC))
    assert got == SpiffeId("weft.local", "shop", "orders")
    assert oct((tmp_path / "ca" / "token-key").stat().st_mode & 0o777) == "0o600"
