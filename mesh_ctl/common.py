"""What every meshctl command that talks to the control plane shares (kept free of grpcio,
so `meshctl sidecar` and `edge` do not load it)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh_ctl.client import AdminClient

DEFAULT_SERVER = "127.0.0.1:15010"


class CliError(Exception):
    """What failed and what to do, in one line."""


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", "--control-plane", dest="server", default=None, metavar="HOST:PORT",
        help=f"the control plane (default: $WEFT_SERVER, the current context, {DEFAULT_SERVER})",
    )  # fmt: skip
    p.add_argument("--data-dir", help="default: $WEFT_DATA_DIR, the current context, ~/.weft")


def context_path() -> Path:
    """Where the current context is kept ($WEFT_CONTEXT, else ~/.config/weft/context.json)."""
    given = os.environ.get("WEFT_CONTEXT")
    if given:
        return Path(given)
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "weft" / "context.json"


def read_context() -> dict[str, str]:
    """The mesh the last `meshctl up` or `meshctl server` started: {server, data_dir}."""
    try:
        doc = json.loads(context_path().read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: str(v) for k, v in doc.items() if k in ("server", "data_dir")}
        if isinstance(doc, dict)
        else {}
    )


def write_context(server: str, data: Path) -> None:
    """Make this mesh the one admin verbs talk to (best effort: a read-only home is fine)."""
    path = context_path()
    doc = {"server": server, "data_dir": str(data.resolve())}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        tmp.replace(path)


def server_address(args: argparse.Namespace) -> str:
    return (
        getattr(args, "server", None) or os.environ.get("WEFT_SERVER")
        or read_context().get("server") or DEFAULT_SERVER
    )  # fmt: skip


def data_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "data_dir", None):
        return Path(args.data_dir)
    found = os.environ.get("WEFT_DATA_DIR") or read_context().get("data_dir")
    return Path(found) if found else Path.home() / ".weft"


def admin_client(args: argparse.Namespace) -> AdminClient:
    """A client for the control plane the arguments name (grpcio loads here, on use)."""
    from mesh_ctl.client import AdminClient

    return AdminClient.from_args(args)


def table(rows: list[list[str]]) -> str:
    """Rows as columns two spaces apart (the first row the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
