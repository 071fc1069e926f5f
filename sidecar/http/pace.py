"""The pace a request body must keep: a deadline that grows with the bytes received.

A body that stalls, or trickles in a byte every few seconds, would hold the upstream
connection it is streamed to for as long as the client likes. So a body gets
`body_timeout_s` from the moment the proxy first waits for it, plus one second for every
`min_body_rate` bytes that arrive (Apache's mod_reqtimeout `body=…,MinRate=…`): any client
that keeps up that rate is never cut off, however large its upload; one that does not is
answered 408 and its upstream connection closed. Pure: the caller passes the clock.
"""

from __future__ import annotations

from sidecar.config.model import Limits
from sidecar.errors import ProtocolError

# The body of a request answered before it was read is read and dropped up to this size
# (HTTP/1: the connection stays usable; HTTP/2: the stream ends without a reset), within
# DISCARD_S; past either, the connection closes or the stream is reset instead.
DISCARD_LIMIT = 256 * 1024
DISCARD_S = 1.0


class BodyPace:
    __slots__ = ("deadline", "per_byte_s")

    def __init__(self, now: float, limits: Limits) -> None:
        self.deadline = now + limits.body_timeout_s
        self.per_byte_s = 1.0 / limits.min_body_rate if limits.min_body_rate else 0.0

    def took(self, n: int) -> None:
        self.deadline += n * self.per_byte_s


def too_slow() -> ProtocolError:
    return ProtocolError("request body too slow", status=408)
