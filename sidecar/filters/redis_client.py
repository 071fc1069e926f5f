"""A small Redis client for trio: RESP parsed by hiredis, I/O on trio's sockets.

Only what the global rate limit needs: commands on a pool of connections (one command
in flight per connection, so no reply can be matched to the wrong request), AUTH and
SELECT from the URL, TLS for `rediss://`, and scripts run by EVALSHA with a fallback to
EVAL when the server does not know the script yet (after a restart or a failover).

Why not a published client: the `redis` package's asyncio client runs on asyncio, not
trio, and running its blocking client in threads would put a thread hop and a thread
per concurrent request on the hot path. hiredis is the parser Redis's own C client uses.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import trio

MAX_CONNECTIONS = 16
CONNECT_TIMEOUT_S = 2.0


class RedisError(Exception):
    """Redis could not be reached or refused a command (the message says which)."""


class ReplyError(RedisError):
    """The server answered a command with an error (the connection is still good)."""


@dataclass(frozen=True, slots=True)
class RedisTarget:
    host: str
    port: int
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """redis://[[user]:password@]host[:port][/db], or rediss:// for TLS (ValueError
        naming what is wrong)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(f"{_redact(url)}: expected redis://HOST[:PORT][/DB] or rediss://…")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{_redact(url)}: the path must be a database number")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"{_redact(url)}: bad port") from None
        return cls(
            host=parts.hostname, port=port, db=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=parts.scheme == "rediss",
        )  # fmt: skip

    def __str__(self) -> str:  # never the password
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


def encode(*args: bytes | str | int | float) -> bytes:
    """A command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(out)


class _Conn:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()

    async def command(self, *args: bytes | str | int | float) -> Any:
        await self.stream.send_all(encode(*args))
        while True:
            reply = self.reader.gets()
            if reply is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise ReplyError(str(reply))
                return reply
            data = await self.stream.receive_some(65536)
            if not data:
                raise RedisError("connection closed by the server")
            self.reader.feed(bytes(data))


class RedisClient:
    """Connections to one Redis server, opened as needed (MAX_CONNECTIONS at most) and
    kept; a connection that failed mid-command is dropped, never reused."""

    def __init__(self, target: RedisTarget, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self.tls = tls
        self.idle: list[_Conn] = []
        self.slots = trio.Semaphore(MAX_CONNECTIONS)

    async def command(self, *args: bytes | str | int | float) -> Any:
        async with self.slots:
            conn = self.idle.pop() if self.idle else await self._connect()
            try:
                reply = await conn.command(*args)
            except ReplyError:
                self.idle.append(conn)
                raise
            except (RedisError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await trio.aclose_forcefully(conn.stream)
                raise RedisError(f"{self.target}: {exc or type(exc).__name__}") from None
            except BaseException:  # cancelled mid-command: the reply would be out of step
                await trio.aclose_forcefully(conn.stream)
                raise
            self.idle.append(conn)
            return reply

    async def run_script(self, source: str, keys: list[str], args: list[int | str]) -> Any:
        """EVALSHA, falling back to EVAL when the server does not have the script."""
        sha = hashlib.sha1(source.encode()).hexdigest()  # Redis names scripts by SHA-1
        try:
            return await self.command("EVALSHA", sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.command("EVAL", source, len(keys), *keys, *args)

    async def _connect(self) -> _Conn:
        t = self.target
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                stream: trio.abc.Stream = await trio.open_tcp_stream(t.host, t.port)
                if t.tls:
                    ctx = self.tls or ssl.create_default_context()
                    stream = trio.SSLStream(stream, ctx, server_hostname=t.host)
                    await stream.do_handshake()
                conn = _Conn(stream)
                try:
                    if t.password is not None:
                        auth = (t.username, t.password) if t.username else (t.password,)
                        await conn.command("AUTH", *auth)
                    if t.db:
                        await conn.command("SELECT", t.db)
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        except trio.TooSlowError:
            raise RedisError(f"{t}: no connection within {CONNECT_TIMEOUT_S:g}s") from None
        except (RedisError, OSError, trio.BrokenResourceError, ssl.SSLError) as exc:
            raise RedisError(f"{t}: {exc or type(exc).__name__}") from None
        return conn

    async def aclose(self) -> None:
        while self.idle:
            await trio.aclose_forcefully(self.idle.pop().stream)
