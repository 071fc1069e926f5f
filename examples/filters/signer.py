"""A header signer: the upstream learns, from a signature it can check, that a request came
through the gateway and was not altered on the way (the method, path and a timestamp,
signed with a key the two share).

    apiVersion: weft.dev/v1alpha1
    kind: PythonFilter
    metadata: {name: signer}
    spec:
      file: signer.py
      class: HeaderSigner
      config: {key: "change me", header: x-gateway-signature}
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any


class HeaderSigner:
    config_schema = {
        "type": "object",
        "properties": {
            "key": {"type": "string", "minLength": 8},
            "header": {"type": "string", "pattern": "^[a-z0-9-]+$"},
        },
        "required": ["key"],
        "additionalProperties": False,
    }

    def __init__(self, config: dict[str, Any]) -> None:
        self.key = config["key"].encode()
        self.header = config.get("header", "x-gateway-signature")

    def on_request(self, request: Any) -> None:
        stamp = str(int(time.time()))
        message = f"{request.method}\n{request.path}\n{stamp}".encode()
        signature = hmac.new(self.key, message, hashlib.sha256).hexdigest()
        request.set_header(self.header, f"t={stamp},v1={signature}")
