"""An echo backend that speaks h2c (and HTTP/1.1): an ASGI app served by hypercorn on trio.

It answers like `echo.EchoServer` (JSON naming the backend and what arrived) and reports
the HTTP version it was reached with, so tests can tell HTTP/2 upstreams from HTTP/1.1.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


class H2Echo:
    def __init__(self, name: str, namespace: str = "default") -> None:
        self.name = name
        self.namespace = namespace
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        digest, length = hashlib.sha256(), 0
        while True:
            message = await receive()
            body = message.get("body", b"")
            digest.update(body)
            length += len(body)
            if not message.get("more_body"):
                break
        headers: dict[str, list[str]] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode().lower(), []).append(v.decode("latin-1"))
        query = scope["query_string"].decode()
        info = {
            "path": scope["raw_path"].decode() + (f"?{query}" if query else ""),
            "host": (headers.get("host") or [""])[0],
            "method": scope["method"],
            "headers": headers,
            "namespace": self.namespace,
            "pod": self.name,
            "http_version": scope["http_version"],
            "body_length": length,
            "body_sha256": digest.hexdigest(),
        }
        self.received.append(info)
        payload = json.dumps(info).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve on an ephemeral loopback port; `nursery.start` returns the port."""
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None

        async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
            await serve(self, config, task_status=task_status)  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            binds = await nursery.start(functools.partial(run))
            task_status.started(int(binds[0].rsplit(":", 1)[1]))
