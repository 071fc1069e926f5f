"""A recording backend for attack tests: what exactly reached the app.

A trio TCP server on 127.0.0.1 that keeps every byte each connection delivered and parses
it with llhttp (httptools, strict), answering each request it reads with 200 and the
request's target as the body (`X-Seq` numbers the answers). Tests assert on `requests`
(the backend's view) and `raw`; a request llhttp refuses is recorded in `errors` and the
connection closed, as a strict backend would do.
"""

from __future__ import annotations

import httptools
import trio

from tests.support.forward_oracle import Seen, StrictSink


class Recorder:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.raw: list[bytes] = []  # per connection, everything it delivered
        self.errors: list[str] = []
        self.port = 0
        self.connections = 0
        self.connected = trio.Event()  # set (and replaced) when a connection arrives
        self._seq = 0

    async def run(self, task_status: trio.TaskStatus[Recorder] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._serve, listeners)

    @property
    def targets(self) -> list[str]:
        return [r.target.decode("latin-1") for r in self.requests]

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.connected.set()
        self.connected = trio.Event()
        index = len(self.raw)
        self.raw.append(b"")
        sink = StrictSink()
        parser = sink.parser
        answered = 0
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    self.raw[index] += data
                    try:
                        parser.feed_data(data)
                    except httptools.HttpParserUpgrade:
                        return
                    except httptools.HttpParserError as exc:
                        self.errors.append(str(exc))
                        await stream.send_all(
                            b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"
                        )
                        return
                    out = b""
                    for seen in sink.seen[answered:]:
                        if not seen.complete:
                            break
                        self.requests.append(seen)
                        answered += 1
                        self._seq += 1
                        out += b"HTTP/1.1 200 OK\r\nX-Seq: %d\r\nContent-Length: %d\r\n\r\n%b" % (
                            self._seq,
                            len(seen.target),
                            seen.target,
                        )
                    if out:
                        await stream.send_all(out)
            except trio.BrokenResourceError:
                pass
