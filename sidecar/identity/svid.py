"""A workload's X509-SVID with its key, and when to renew it."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from ca.spiffe import SpiffeId


class IdentityError(Exception):
    """The control plane refused, or could not be reached or trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class Svid:
    identity: SpiffeId
    key_pem: bytes = field(repr=False)
    cert_pem: bytes  # the leaf
    chain_pem: bytes  # intermediates
    bundle_pem: bytes  # roots peers are verified against
    not_before: datetime.datetime
    not_after: datetime.datetime
    session: str = field(default="", repr=False)  # opens the config watch (ca/tokens.py)

    def renew_at(self, received: datetime.datetime, jitter: float) -> datetime.datetime:
        """Two thirds into the life it had when `received` (not_before is back-dated for
        clock skew), moved by `jitter` (a fraction, e.g. ±0.05)."""
        life = self.not_after - received
        return received + life * (2 / 3 + jitter)

    def to_json(self) -> dict[str, str]:
        return {
            "identity": self.identity.uri,
            "key_pem": self.key_pem.decode(),
            "cert_pem": self.cert_pem.decode(),
            "chain_pem": self.chain_pem.decode(),
            "bundle_pem": self.bundle_pem.decode(),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "session": self.session,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Svid:
        """The inverse of `to_json`; KeyError/ValueError on anything else."""
        return cls(
            identity=SpiffeId.parse(data["identity"]),
            key_pem=data["key_pem"].encode(),
            cert_pem=data["cert_pem"].encode(),
            chain_pem=data["chain_pem"].encode(),
            bundle_pem=data["bundle_pem"].encode(),
            not_before=datetime.datetime.fromisoformat(data["not_before"]),
            not_after=datetime.datetime.fromisoformat(data["not_after"]),
            session=str(data.get("session", "")),
        )


def control_planes(spec: str) -> list[str]:
    """`HOST:PORT[,HOST:PORT…]`: the control plane replicas a sidecar may use."""
    return [t.strip() for t in spec.split(",") if t.strip()]


@dataclass(frozen=True, slots=True, kw_only=True)
class SvidRequest:
    """What the identity helper needs to get an SVID: where the control plane is, how to trust
    it (a root bundle or a pinned root fingerprint), and the proof (a token, or the current
    SVID when renewing)."""

    control_plane: str
    namespace: str
    service: str
    trust_pem: bytes | None = None
    ca_fingerprint: str | None = None
    token: str = ""
    current: Svid | None = None
    timeout_s: float = 10.0

    def to_json(self) -> dict[str, Any]:
        return {
            "control_plane": self.control_plane,
            "namespace": self.namespace,
            "service": self.service,
            "trust_pem": self.trust_pem.decode() if self.trust_pem is not None else None,
            "ca_fingerprint": self.ca_fingerprint,
            "token": self.token,
            "current": self.current.to_json() if self.current is not None else None,
            "timeout_s": self.timeout_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SvidRequest:
        trust, current = data.get("trust_pem"), data.get("current")
        return cls(
            control_plane=data["control_plane"],
            namespace=data["namespace"],
            service=data["service"],
            trust_pem=trust.encode() if trust is not None else None,
            ca_fingerprint=data.get("ca_fingerprint"),
            token=data.get("token", ""),
            current=Svid.from_json(current) if current is not None else None,
            timeout_s=float(data.get("timeout_s", 10.0)),
        )
