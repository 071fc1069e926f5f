"""The sidecar's side of `Config.Watch`: gRPC over the sidecar's own HTTP/2 client and TLS.

No grpcio here: it would double the sidecar's memory for one stream. The call is plain gRPC
on the wire (HTTP/2 POST, `application/grpc+json`, 5-byte length-prefixed messages, status
in trailers), spoken by `upstream/h2client.py` over a TLS connection that verifies the
control plane against the mesh's root bundle.

`run` keeps the watch open for the sidecar's life: each snapshot (whole, or the last one
with a delta applied: control/delta.py) goes to `apply`, which
answers None (in force: ACK) or the reason it was refused (NACK); the sidecar's request
counters go out every `STATS_S` while they change (for `meshctl top`, control/top.py), a
heartbeat every `HEARTBEAT_S` otherwise. When the stream or connection ends, the last
snapshot stays in force (static stability) and the watch reconnects after a random wait
under a growing cap (full jitter), to the next control plane replica when it was given several
(`HOST:PORT,HOST:PORT`; each sidecar starts at a random one, so a fleet spreads over the
replicas).
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from control import api, delta
from control.top import STATS_S
from sidecar.errors import UpstreamError
from sidecar.identity.svid import control_planes
from sidecar.transport.io import ConnectionLost, connect_within
from sidecar.transport.tls import TlsConn, TlsHandshakeError
from sidecar.upstream.h2client import H2ClientConnection, Response, Trailers, UpstreamStream

log = logging.getLogger("weft.watch")

HEARTBEAT_S = 4.0  # a multiple of STATS_S, well under the registry's 15 s expiry
# Reconnects wait a random time up to the cap for the attempt ("full jitter"): a fleet
# that lost its control plane at once (a restart) comes back spread over the window, not
# in one thundering herd; a lone sidecar waits 0.5 s on average.
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 10.0)
MAX_MESSAGE = 16 * 1024 * 1024
Apply = Callable[[int, list[dict[str, Any]]], Awaitable[str | None]]


class WatchError(Exception):
    """The watch ended; the message says why (the control plane's status, or the network)."""


class WatchRefused(WatchError):
    """The control plane answered the watch with an error status instead of snapshots."""


_ENDINGS = (
    WatchError,
    UpstreamError,
    ConnectionLost,
    TlsHandshakeError,
    OSError,
    trio.TooSlowError,
)


def frame(message: object) -> bytes:
    body = api.encode(message)
    return b"\x00" + len(body).to_bytes(4, "big") + body


class Deframer:
    """gRPC length-prefixed messages out of a byte stream."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[Any]:
        self.buf += data
        out = []
        while len(self.buf) >= 5:
            if self.buf[0] != 0:
                raise WatchError("compressed messages are not expected")
            size = int.from_bytes(self.buf[1:5], "big")
            if size > MAX_MESSAGE:
                raise WatchError(f"message of {size} bytes is over the limit")
            if len(self.buf) < 5 + size:
                break
            out.append(api.decode(self.buf[5 : 5 + size]))
            self.buf = self.buf[5 + size :]
        return out


def _status(headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
    fields = dict(headers)
    if b"grpc-status" not in fields:
        return None
    message = urllib.parse.unquote(fields.get(b"grpc-message", b"").decode("latin-1"))
    return int(fields[b"grpc-status"]), message


class ConfigWatch:
    def __init__(
        self,
        target: str,
        trust_pem: Callable[[], bytes],
        hello: Callable[[], dict[str, Any]],
        apply: Apply,
        *,
        stats: Callable[[], dict[str, Any]] | None = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.targets = control_planes(target)
        self._next = random.randrange(len(self.targets)) if self.targets else 0
        self.target = ""  # the replica of the current (or last) session
        self.trust_pem = trust_pem
        self.hello = hello  # fresh each connect: the session token renews with the SVID
        self.apply = apply
        self.stats = stats  # this sidecar's counters for `meshctl top` (control/top.py)
        self.stats_interval_s = STATS_S
        self.connect_timeout_s = connect_timeout_s
        self.connected = False
        self.failures = 0  # in a row, since the last snapshot in force
        self.ends = 0  # watches that ended, all told
        self.refused = 0  # of those, the ones the control plane refused (an error status)
        self.last_error = ""
        self.ended = trio.Event()  # set (and replaced) each time a watch ends
        self._stream: UpstreamStream | None = None
        self._resources: dict[delta.Key, dict[str, Any]] = {}  # what the control plane sent

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except _ENDINGS as exc:
                self.last_error = str(exc) or type(exc).__name__
                self.refused += isinstance(exc, WatchRefused)
            self.connected = False
            self._stream = None
            delay = random.uniform(0, BACKOFF_S[min(self.failures, len(BACKOFF_S) - 1)])
            self.failures += 1
            self.ends += 1
            self.ended.set()
            self.ended = trio.Event()
            log.warning("config watch: %s; reconnecting in %.1fs", self.last_error, delay)
            await trio.sleep(delay)

    async def send(self, message: dict[str, Any]) -> None:
        """Send on the open stream, if there is one (drain notices, for instance). Best
        effort: a control plane going away as well learns it when the stream ends."""
        stream = self._stream
        if stream is not None:
            try:
                await stream.send_data(frame(message), end=False)
            except UpstreamError as exc:
                log.info("config watch: %s not sent (%s)", next(iter(message), "message"), exc)

    async def _session(self) -> None:
        tconn = await self._connect()
        client = H2ClientConnection(tconn)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            path = f"/{api.CONFIG_SERVICE}/Watch".encode()
            headers = [
                (b":method", b"POST"), (b":scheme", b"https"), (b":path", path),
                (b":authority", api.CONTROL_PLANE_HOST.encode()),
                (b"content-type", b"application/grpc+json"), (b"te", b"trailers"),
            ]  # fmt: skip
            stream = client.open(headers, end_stream=False)
            hello = self.hello()
            hello = {**hello, "hello": {**hello["hello"], "deltas": True}}
            await stream.send_data(frame(hello), end=False)
            self._resources = {}  # a new watch starts with a whole snapshot
            self._stream = stream
            nursery.start_soon(self._heartbeats, stream)
            ended: Exception | None = None
            try:
                await self._receive(stream)
            except _ENDINGS as exc:  # raised after the nursery, not inside its group
                ended = exc
            finally:
                nursery.cancel_scope.cancel()
                client.close()
        if ended is not None:
            raise ended

    async def _connect(self) -> TlsConn:
        if not self.targets:
            raise WatchError("no control plane address given")
        self.target = self.targets[self._next % len(self.targets)]
        self._next += 1  # when this session ends, the next tries another replica first
        host, _, port = self.target.rpartition(":")
        ctx = ssl.create_default_context(cadata=self.trust_pem().decode())
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["h2"])
        conn = await connect_within(host, int(port), self.connect_timeout_s)
        sock = ctx.wrap_socket(
            conn.sock, server_side=False, server_hostname=api.CONTROL_PLANE_HOST,
            do_handshake_on_connect=False,
        )  # fmt: skip
        tconn = TlsConn(sock, conn.peer)
        try:
            with trio.fail_after(self.connect_timeout_s):
                await tconn.handshake()
        except BaseException:
            tconn.close()
            raise
        if tconn.alpn != "h2":
            tconn.close()
            raise WatchError("the control plane did not agree to HTTP/2")
        return tconn

    async def _receive(self, stream: UpstreamStream) -> None:
        deframer = Deframer()
        while True:
            event = await stream.next_event()
            if isinstance(event, Response):
                if event.status != 200:
                    raise WatchError(f"the control plane answered HTTP {event.status}")
                status = _status(event.headers)  # a trailers-only answer: an error
                if status is not None and status[0] != 0:
                    raise WatchRefused(
                        f"control plane refused the watch: {status[1]} (grpc-status {status[0]})"
                    )
            elif isinstance(event, Trailers):
                status = _status(event.headers or [])
                raise WatchError(
                    f"control plane ended the watch: {status[1] if status else 'no status'}"
                )
            else:
                for message in deframer.feed(event):
                    await self._handle(stream, message)

    async def _handle(self, stream: UpstreamStream, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if "snapshot" in message:
            snapshot = message["snapshot"]
            self._resources = {delta.key(d): d for d in snapshot["resources"]}
        elif "delta" in message:
            snapshot = message["delta"]
            try:
                delta.apply(self._resources, snapshot)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise WatchError(f"a delta that does not apply ({exc}): starting over") from None
        else:
            return
        version = int(snapshot["version"])
        error = await self.apply(version, delta.ordered(self._resources))
        if error is None:
            self.connected = True
            self.failures = 0
            self.last_error = ""
            reply: dict[str, Any] = {"ack": {"version": version}}
        else:
            reply = {"nack": {"version": version, "error": error}}
        await stream.send_data(frame(reply), end=False)

    async def _heartbeats(self, stream: UpstreamStream) -> None:
        """Until the stream fails (the receiving side then sees why and reconnects): the
        counters every `stats_interval_s` while they change (the first right away, as the base the
        control plane measures from), else a heartbeat every HEARTBEAT_S."""
        last: dict[str, Any] | None = None
        silent_s = 0.0
        with contextlib.suppress(*_ENDINGS):
            while True:
                stats = self.stats() if self.stats is not None else None
                if stats is not None and stats != last:
                    await stream.send_data(frame({"stats": stats}), end=False)
                    last, silent_s = stats, 0.0
                elif silent_s >= HEARTBEAT_S:
                    await stream.send_data(frame({"heartbeat": {}}), end=False)
                    silent_s = 0.0
                await trio.sleep(self.stats_interval_s)
                silent_s += self.stats_interval_s
