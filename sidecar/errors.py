"""The data plane's error tree; third-party exceptions are mapped onto it at the boundary."""

from __future__ import annotations

from typing import ClassVar

import trio


class WeftError(Exception):
    """Base of every error the data plane raises on purpose."""


class ConfigError(WeftError):
    """A configuration document is invalid; the message names file, document and field."""

    def __init__(self, message: str, *, source: str = "", field: str = "") -> None:
        self.source = source
        self.field = field
        self.reason = message
        where = ": ".join(p for p in (source, field) if p)
        super().__init__(f"{where}: {message}" if where else message)


class ProtocolError(WeftError):
    """The peer broke HTTP framing; the connection cannot be trusted any more."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class StreamError(ProtocolError):
    """A malformed HTTP/2 request (RFC 9113 §8.1.1): its stream is reset with
    PROTOCOL_ERROR; the connection and its other streams go on."""


class UpstreamError(WeftError):
    """Forwarding to an upstream failed; `status` is what the downstream gets."""

    status: ClassVar[int] = 502
    retryable: ClassVar[bool] = False


class UpstreamConnectError(UpstreamError):
    """The upstream refused or could not be reached."""

    status: ClassVar[int] = 503
    retryable: ClassVar[bool] = True


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""

    status: ClassVar[int] = 504


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with broken HTTP."""

    status: ClassVar[int] = 502


class UpstreamClosed(UpstreamError):
    """The upstream closed the connection before a complete response."""

    status: ClassVar[int] = 502


class DownstreamClosed(WeftError):
    """The client went away (or reset its stream) in the middle of a request."""


class ResponseAborted(WeftError):
    """A response stage failed after the answer began (a user filter's body hook raised):
    the answer is cut and the connection (or HTTP/2 stream) closes, so the client sees an
    incomplete response, never a wrong one."""


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one exception a nursery raised (trio wraps even a single one in a group), so
    that `except UpstreamError` and friends still see it; a real group stays a group.

    A task cancelled beside one that failed (a client resets its stream: the body reader
    sees `DownstreamClosed`, the relay is cancelled) says less than the failure, which is
    kept alone: trio's cancellation is level-triggered, so the cancelled scope still
    stops the code at its next checkpoint."""
    excs = group.exceptions
    while True:
        failures = [e for e in excs if not isinstance(e, trio.Cancelled)]
        if len(excs) > 1 and len(failures) == 1:
            excs = tuple(failures)
        if len(excs) != 1 or not isinstance(excs[0], BaseExceptionGroup):
            break
        excs = excs[0].exceptions
    return excs[0] if len(excs) == 1 else group


def why(exc: BaseException) -> str:
    """The most telling message in an exception chain (httpx's own can be empty)."""
    chain: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 5:
        chain.append(f"{type(seen).__name__}: {seen}" if str(seen) else type(seen).__name__)
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(chain)
