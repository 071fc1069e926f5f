"""A workload's X509-SVID with its key, and when to renew it."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field

from ca.spiffe import SpiffeId


@dataclass(frozen=True, slots=True)
class Svid:
    identity: SpiffeId
    key_pem: bytes = field(repr=False)
    cert_pem: bytes  # the leaf
    chain_pem: bytes  # intermediates
    bundle_pem: bytes  # roots peers are verified against
    not_before: datetime.datetime
    not_after: datetime.datetime

    def renew_at(self, received: datetime.datetime, jitter: float) -> datetime.datetime:
        """Two thirds into the life it had when `received` (not_before is back-dated for
        clock skew), moved by `jitter` (a fraction, e.g. ±0.05)."""
        life = self.not_after - received
        return received + life * (2 / 3 + jitter)
