"""The CLI's connection to `meshctl server`: TLS (trusting the mesh's root), the admin
token, JSON over gRPC, and errors turned into one line for the user."""

from __future__ import annotations

import argparse
import os
import socket
import ssl
from typing import Any

import grpc

from control import api
from control.api import CONTROL_PLANE_HOST
from mesh_ctl.common import CliError, data_dir, server_address


class AdminClient:
    def __init__(self, target: str, trust_pem: bytes, token: str, trust_from: str = "") -> None:
        self.target = target
        self.trust_pem = trust_pem
        self.trust_from = trust_from or "the trust bundle given"
        creds = grpc.ssl_channel_credentials(root_certificates=trust_pem)
        options = [("grpc.ssl_target_name_override", CONTROL_PLANE_HOST)]
        self.channel = grpc.secure_channel(target, creds, options=options)
        self.metadata = (("authorization", f"Bearer {token}"),)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AdminClient:
        target = server_address(args)
        ddir = data_dir(args)
        root = ddir / "ca" / "root.pem"
        try:
            trust = root.read_bytes()
        except OSError:
            hint = (
                "" if getattr(args, "data_dir", None) else ": give --data-dir of the control plane"
            )
            raise CliError(f"no trust bundle at {root}{hint}") from None
        token = os.environ.get("WEFT_ADMIN_TOKEN", "")
        if not token:
            try:
                token = api.admin_token(ddir)
            except OSError:
                hint = "" if getattr(args, "data_dir", None) else " or give --data-dir"
                raise CliError(f"no admin token in {ddir}: set WEFT_ADMIN_TOKEN{hint}") from None
        return cls(target, trust, token, trust_from=str(root))

    def call(self, method: str, request: dict[str, Any], timeout_s: float = 15.0) -> Any:
        fn = self.channel.unary_unary(
            f"/{api.ADMIN_SERVICE}/{method}",
            request_serializer=api.encode,
            response_deserializer=api.decode,
        )
        try:
            return fn(request, metadata=self.metadata, timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CliError(self.why_unreachable(str(exc.details()))) from None
            raise CliError(str(exc.details())) from None

    def why_unreachable(self, details: str) -> str:
        """What stands between this CLI and the control plane, found by trying a TLS
        handshake the way the channel does (grpc's own message mixes every cause)."""
        host, _, port = self.target.rpartition(":")
        ctx = ssl.create_default_context(cadata=self.trust_pem.decode(errors="replace"))
        ctx.set_alpn_protocols(["h2"])
        try:
            with (
                socket.create_connection((host.strip("[]"), int(port)), timeout=5) as sock,
                ctx.wrap_socket(sock, server_hostname=CONTROL_PLANE_HOST),
            ):
                pass
        except ssl.SSLCertVerificationError:
            return (
                f"TLS handshake with {self.target} failed: the control plane's certificate "
                f"is not signed by the CA in {self.trust_from} (another mesh's CA?)"
            )
        except (ssl.SSLError, ConnectionResetError) as exc:
            return f"TLS handshake with {self.target} failed: {exc} (is it a control plane?)"
        except (OSError, ValueError):
            return f"cannot reach the control plane at {self.target}: is `meshctl server` running?"
        return f"the control plane at {self.target} is unavailable: {details}"

    def close(self) -> None:
        self.channel.close()
