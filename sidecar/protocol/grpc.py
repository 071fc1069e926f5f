"""gRPC over HTTP/2 as a proxy sees it: deadlines and the statuses it answers itself."""

from __future__ import annotations

from sidecar.protocol.http1 import RequestHead

# grpc-timeout units (PROTOCOL-HTTP2.md): hours, minutes, seconds, milli, micro, nano
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}

# A trailers-only answer: HTTP 200, the gRPC status in the headers.
GRPC_DEADLINE_EXCEEDED = [
    (b"content-type", b"application/grpc"),
    (b"grpc-status", b"4"),
    (b"grpc-message", b"deadline exceeded at the proxy"),
]


def is_grpc(head: RequestHead) -> bool:
    """A gRPC call (content-type application/grpc, with or without a +format suffix)."""
    return any(n == b"content-type" and v.startswith(b"application/grpc") for n, v in head.headers)


def grpc_timeout(head: RequestHead) -> float | None:
    """The call's deadline in seconds from its `grpc-timeout`, for gRPC requests."""
    for name, value in head.headers:
        if name.lower() == b"grpc-timeout":
            unit = _UNITS.get(value[-1:])
            digits = value[:-1]
            if unit is None or not digits.isdigit() or len(digits) > 8:
                return None  # malformed: the upstream will complain, not us
            return int(digits) * unit
    return None
