"""The downstream side of one request, whatever its protocol: how its body arrives and how
its answer leaves. HTTP/1.x implements it per connection (http/http1.py), HTTP/2 per stream
(http/h2server.py); the handler, the tries and the exchanges see only this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sidecar.config.headerops import HeaderOps
from sidecar.http.outcome import Outcome
from sidecar.protocol.http1 import End, RequestHead
from sidecar.tcp.relay import Counts
from sidecar.transport.io import Conn

Headers = list[tuple[bytes, bytes]]
# Produces the next downstream request event (body bytes or End).
NextEvent = Callable[[], Awaitable[bytes | End]]
# Streams an HTTP/1.1 upstream's response to the downstream (its protocol's framing);
# returns whether the upstream connection may be reused.
Relay = Callable[[Conn, Any, RequestHead, "tuple[HeaderOps, ...]", Outcome], Awaitable[bool]]


class ResponseWriter(Protocol):
    """A response leaving towards the downstream, whatever its protocol."""

    async def start(self, status: int, headers: Headers, *, end: bool) -> None: ...

    async def data(self, data: bytes) -> None: ...

    async def end(self, trailers: Headers | None) -> None: ...


class Downstream(Protocol):
    """The protocol side of one request: how its body arrives and its answer leaves.

    HTTP/1.1 implements it per connection (`_Http1`), HTTP/2 per stream.
    """

    @property
    def relay(self) -> Relay: ...

    def protocol(self, head: RequestHead) -> str: ...

    async def next_event(self) -> bytes | End: ...

    def take_buffered_body(self, out: bytearray, chunked: bool) -> tuple[int, bool]: ...

    def limit_body(self, head: RequestHead, limit: int) -> None:
        """A route's body limit, enforced as the body streams (ProtocolError 413)."""
        ...

    def unread(self, events: list[bytes | End]) -> None:
        """Put body events back, to be forwarded as if not read yet."""
        ...

    async def send_continue(self) -> None: ...

    def response_writer(
        self, head: RequestHead, ops: tuple[HeaderOps, ...], outcome: Outcome
    ) -> ResponseWriter: ...

    async def tunnel(self, upstream: Conn, first: bytes) -> Counts: ...

    async def local_reply(
        self,
        head: RequestHead,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool = False,
    ) -> bool: ...
