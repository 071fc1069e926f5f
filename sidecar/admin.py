"""The admin endpoint (127.0.0.1:15000): /live, /ready, /metrics, /config_dump, /drain,
and /cache/purge (POST `?url=http://host/path`, or `?prefix=http://host/path/`)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from sidecar.errors import ProtocolError
from sidecar.observe.metrics import Metrics
from sidecar.protocol.http1 import End, RequestHead, RequestParser
from sidecar.protocol.wire import simple_response
from sidecar.transport.io import Conn, ConnectionLost

_JSON = [(b"content-type", b"application/json")]
_PROM = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


@dataclass(slots=True, kw_only=True)
class AdminState:
    dump: Callable[[], dict[str, Any]]  # /config_dump
    metrics: Metrics
    drain: Callable[[], None]
    ready: Callable[[], bool]
    problem: Callable[[], str] = str  # why not ready, when something was refused ("" else)
    # answers /metrics and /config_dump instead (an edge's supervisor asks its workers)
    remote: Callable[[str], Awaitable[str]] | None = None
    purge: Callable[[str, bool], int] | None = None  # (url, as a prefix) -> URLs dropped


_REMOTE = {"/metrics": _PROM, "/config_dump": _JSON}


async def serve_admin(state: AdminState, conn: Conn) -> None:
    parser = RequestParser(max_header_bytes=16384, max_headers=50)
    try:
        with trio.move_on_after(30):
            while True:
                while not parser.events:
                    data = await conn.recv()
                    if not data:
                        return
                    parser.feed(data)
                head = parser.events.popleft()
                if not isinstance(head, RequestHead):
                    return
                while not any(isinstance(e, End) for e in parser.events):
                    data = await conn.recv()
                    if not data:
                        return
                    parser.feed(data)
                while not isinstance(parser.events.popleft(), End):
                    pass
                path = head.target.partition("?")[0]
                if state.remote is not None and path in _REMOTE and head.method in ("GET", "HEAD"):
                    body = (await state.remote(path)).encode()
                    reply = simple_response(
                        200, body, headers=_REMOTE[path], head_only=head.method == "HEAD"
                    )
                elif state.remote is not None and path == "/cache/purge" and head.method == "POST":
                    body = (await state.remote(head.target)).encode()  # every worker's caches
                    reply = simple_response(200, body, headers=_JSON)
                else:
                    reply = _respond(state, head)
                await conn.send_all(reply)
                if not head.keep_alive:
                    return
    except ProtocolError as exc:
        await conn.send_all(simple_response(exc.status, f"{exc}\n".encode(), close=True))
    except ConnectionLost:
        pass
    finally:
        conn.close()


def _respond(state: AdminState, head: RequestHead) -> bytearray:
    path = head.target.partition("?")[0]
    method = head.method
    if path == "/drain":
        if method != "POST":
            return simple_response(405, b"use POST\n", headers=[(b"allow", b"POST")])
        state.drain()
        return simple_response(200, b"draining\n")
    if path == "/cache/purge" and state.purge is not None:
        return _purge(state.purge, head)
    if method not in ("GET", "HEAD"):
        return simple_response(405, b"use GET\n", headers=[(b"allow", b"GET, HEAD")])
    head_only = method == "HEAD"
    if path == "/live":
        return simple_response(200, b"live\n", head_only=head_only)
    if path == "/ready":
        if state.ready():
            return simple_response(200, b"ready\n", head_only=head_only)
        problem = state.problem()
        reason = f"not ready: {problem}\n" if problem else "not ready\n"
        return simple_response(503, reason.encode(), head_only=head_only)
    if path == "/metrics":
        body = state.metrics.render().encode()
        return simple_response(200, body, headers=_PROM, head_only=head_only)
    if path == "/config_dump":
        body = json.dumps(state.dump(), indent=2, sort_keys=True).encode() + b"\n"
        return simple_response(200, body, headers=_JSON, head_only=head_only)
    return simple_response(404, b"unknown admin path\n", head_only=head_only)


def _purge(purge: Callable[[str, bool], int], head: RequestHead) -> bytearray:
    from urllib.parse import parse_qs

    if head.method not in ("POST", "DELETE"):
        return simple_response(405, b"use POST\n", headers=[(b"allow", b"POST, DELETE")])
    query = parse_qs(head.target.partition("?")[2])
    urls, prefixes = query.get("url", []), query.get("prefix", [])
    if len(urls) + len(prefixes) != 1:
        return simple_response(400, b"give one url=... or prefix=...\n")
    dropped = purge(urls[0], False) if urls else purge(prefixes[0], True)
    return simple_response(200, json.dumps({"purged": dropped}).encode() + b"\n", headers=_JSON)
