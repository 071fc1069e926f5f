"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _own_meshctl_context(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`meshctl server` and `up` save the current context; the tests' own must not touch the
    user's (~/.config/weft), and subprocesses inherit the variable."""
    os.environ["WEFT_CONTEXT"] = str(tmp_path_factory.mktemp("meshctl") / "context.json")
