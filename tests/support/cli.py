"""`meshctl` run in the test process (its `main`), with standard input given and its output
captured: (exit code, stdout, stderr)."""

from __future__ import annotations

import io
import sys

import pytest

from mesh_ctl.cli import main


def meshctl(
    capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = ""
) -> tuple[int, str, str]:
    capsys.readouterr()
    if stdin:
        sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    return code, out, err
