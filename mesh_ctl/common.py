"""What every meshctl command that talks to the control plane shares (kept free of grpcio,
so `meshctl sidecar` and `edge` do not load it)."""

from __future__ import annotations

import argparse
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
        "--server", default=None, metavar="HOST:PORT",
        help=f"the control plane (default: $WEFT_SERVER or {DEFAULT_SERVER})",
    )  # fmt: skip
    p.add_argument("--data-dir", help="default: $WEFT_DATA_DIR or ~/.weft")


def data_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "data_dir", None):
        return Path(args.data_dir)
    return Path(os.environ.get("WEFT_DATA_DIR") or Path.home() / ".weft")


def admin_client(args: argparse.Namespace) -> AdminClient:
    """A client for the control plane the arguments name (grpcio loads here, on use)."""
    from mesh_ctl.client import AdminClient

    return AdminClient.from_args(args)
