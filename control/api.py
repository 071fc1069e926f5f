"""The control plane's gRPC API besides `Identity`: method paths and their JSON codec.

`weft.admin.v1.Admin` (what `meshctl apply/get/delete/…` call) and, later in the same
module, `weft.config.v1.Config` carry JSON messages in gRPC framing (gRPC is codec-agnostic;
the content-subtype is `json`). The documents they move are JSON already, sidecars decode
them without protobuf, and grpcio on the server and in the CLI takes any (de)serializer.
Admin calls carry the admin token as `authorization: Bearer <token>` metadata; the token is
`<data-dir>/admin.token` (0600), written by `meshctl server` on its first start.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

# The name clients verify the control plane's certificate against (a DNS SAN besides its
# SPIFFE ID; gRPC checks host names, not URIs).
CONTROL_PLANE_HOST = "weft-control-plane"
ADMIN_SERVICE = "weft.admin.v1.Admin"
CONFIG_SERVICE = "weft.config.v1.Config"
ADMIN_TOKEN_FILE = "admin.token"


def encode(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> Any:
    return json.loads(data)


def admin_token(data_dir: Path, *, create: bool = False) -> str:
    """The admin token of the control plane whose data dir this is (made if `create`)."""
    path = data_dir / ADMIN_TOKEN_FILE
    if create and not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()
