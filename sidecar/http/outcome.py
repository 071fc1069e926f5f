"""What happened to one request: the record its metrics, access log and span are made from.

Theory of operation. The handler makes one `Outcome` per request and reads it when the
request ends; it, the tries (http/tries.py), the exchanges with the upstream
(http/forward.py, http/forward_h2.py) and the relays towards the downstream record into it
only through its methods, so each transition — a try begins, a response head arrives (and
may be taken by the retry gate), bytes move, a retry starts over, the proxy answers itself
— is written here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sidecar.errors import WeftError
from sidecar.transport.io import Conn
from sidecar.upstream.retry import Failure

Headers = list[tuple[bytes, bytes]]


class Head(Protocol):
    """A response head as either upstream protocol's client gives it; its fields may be
    parsed only when asked for (an HTTP/1.1 head's are), so they are read only when a
    decision needs them."""

    @property
    def headers(self) -> Headers: ...


# The retry gate: the failure a response head (status, head) is retried as, or None.
Gate = Callable[[int, Head], "Failure | None"]

# Set by the proxy on the errors it answers itself (`x-weft-error: <why>`), so a caller's
# sidecar can tell them from its peer app's own 5xx answers (outlier detection ejects
# instances that cannot serve, not apps that report errors). `connect_failure`: the
# sidecar could not reach its app, the request was not processed, and the caller's
# sidecar may retry it whatever its method. A sidecar removes the field from what its app
# answers, so an app cannot claim either.
PROXY_ERROR_HEADER = b"x-weft-error"
NOT_SENT_VALUE = b"connect_failure"


def not_sent_marker(headers: Headers) -> bool:
    return any(n.lower() == PROXY_ERROR_HEADER and v == NOT_SENT_VALUE for n, v in headers)


def proxy_error(headers: Headers) -> bool:
    """Did a proxy (a peer's sidecar) answer this error, rather than the app?"""
    return any(n.lower() == PROXY_ERROR_HEADER for n, _ in headers)


class RetryableStatus(WeftError):
    """A response the retry policy takes instead of forwarding it (raised by
    `Outcome.response` before anything reached the downstream; the budget has already
    paid for the retry)."""

    def __init__(self, status: int, failure: Failure) -> None:
        self.status = status
        self.failure = failure
        super().__init__(f"status {status}")


class Outcome:
    """What happened to one request (see the module docstring)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "downstream_keep_alive",
        "grpc_status",
        "hold",
        "proxy_error",
        "replay",
        "replay_limit",
        "request_complete",
        "response_started",
        "status",
        "tunnel",
        "upstream",
    )

    def __init__(self, downstream_keep_alive: bool = True) -> None:
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.downstream_keep_alive = downstream_keep_alive
        self.request_complete = False
        self.response_started = False
        self.upstream = ""
        self.proxy_error = False  # a 5xx answered by a peer's sidecar, not its app
        self.grpc_status = -1  # from a gRPC answer's trailers (-1: none), for its span
        # after a 101: the upstream connection and the bytes it sent past the head
        self.tunnel: tuple[Conn, bytes] | None = None
        # a response head for which this returns a failure is not forwarded: RetryableStatus
        self.hold: Gate | None = None
        # a copy of a streamed request for a retry, while it stays within `replay_limit`
        self.replay: bytearray | None = None
        self.replay_limit = 0

    # -- the tries ------------------------------------------------------------------------
    def keep_copy(self, request: bytes | bytearray, room: int) -> None:
        """Copy what streams of the request, for a retry, up to `room` more bytes."""
        self.replay = bytearray(request)
        self.replay_limit = len(request) + room

    def begin_try(self, upstream: str, hold: Gate | None) -> None:
        self.upstream = upstream
        self.hold = hold

    def retry(self) -> None:
        """The try failed before a response reached the downstream: start over."""
        self.status = 0
        self.proxy_error = False
        self.request_complete = False

    # -- the exchange ---------------------------------------------------------------------
    def sent(self, body: bytes | bytearray, wire: bytes | bytearray) -> None:
        """A piece of the request body went upstream (`wire`: as framed for it)."""
        self.bytes_in += len(body)
        replay = self.replay
        if replay is not None:
            if len(replay) + len(wire) > self.replay_limit:
                self.replay = None  # streamed past the buffer: never replayed
            else:
                replay += wire

    def request_sent(self) -> None:
        """The whole request went upstream."""
        self.request_complete = True

    def trailers_sent(self) -> None:
        """Request trailers went upstream: they are not kept, so no replay."""
        self.replay = None

    def response(self, status: int, head: Head) -> None:
        """The upstream's response head arrived; RetryableStatus when the retry gate takes
        it instead (nothing of it has reached the downstream then)."""
        if status >= 500:
            self.proxy_error = proxy_error(head.headers)
        hold = self.hold
        if hold is not None:
            failure = hold(status, head)
            if failure is not None:
                raise RetryableStatus(status, failure)
        self.status = status
        self.response_started = True

    def relayed(self, data: bytes) -> None:
        """A piece of the response body went downstream."""
        self.bytes_out += len(data)

    def ended(self, trailers: Headers | None) -> None:
        """The response ended (with these trailers: a gRPC answer's status is in them)."""
        if trailers:
            self.grpc_status = grpc_status(trailers)

    def upgraded(self, upstream: Conn, rest: bytes) -> None:
        """The upstream took the Upgrade (101): bytes flow both ways from here."""
        self.tunnel = (upstream, rest)
        self.downstream_keep_alive = False

    def answered(self, status: int, grpc_status: int = -1) -> None:
        """The proxy answered the request itself (a local reply: a denial, an error)."""
        self.status = status
        if grpc_status >= 0:
            self.grpc_status = grpc_status

    def tunnelled(self, up: int, down: int) -> None:
        """The bytes an upgraded connection carried each way."""
        self.bytes_in += up
        self.bytes_out += down

    def close_downstream(self) -> None:
        """The downstream connection ends with this request: it was lost, or the response's
        end is told by closing it (a body without a length to an HTTP/1.0 client)."""
        self.downstream_keep_alive = False


def grpc_status(headers: Headers) -> int:
    """The grpc-status field's code (-1: none, or not a number)."""
    for name, value in headers:
        if name == b"grpc-status":
            return int(value) if value.isdigit() else -1
    return -1
