"""A raw HTTP/2 client for attack tests: h2 with its outbound checks off, so a test can
send what a hostile client sends (spaces in `:method`, control bytes, bad names) and see
per stream what came back (status, body, reset) and whether the connection survived."""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import trio

Headers = list[tuple[bytes, bytes]]


@dataclass
class Answer:
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None
    ended: bool = False


class RawH2:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.answers: dict[int, Answer] = {}
        self.goaway: int | None = None  # the error code of a GOAWAY received

    @classmethod
    async def connect(cls, port: int) -> RawH2:
        client = cls(await trio.open_tcp_stream("127.0.0.1", port))
        client.h2.initiate_connection()
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def request(self, headers: Headers, body: bytes = b"") -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=not body)
        if body:
            self.h2.send_data(sid, body, end_stream=True)
        self.answers[sid] = Answer()
        await self.flush()
        return sid

    async def wait(self, *sids: int, timeout_s: float = 10) -> list[Answer]:
        """Until each stream ended or was reset (or the connection closed)."""
        with trio.fail_after(timeout_s):
            while self.goaway is None and not all(
                self.answers[s].ended or self.answers[s].reset is not None for s in sids
            ):
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self._events(self.h2.receive_data(data))
                await self.flush()
        return [self.answers[s] for s in sids]

    def _events(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                a = self.answers[ev.stream_id]
                a.headers = list(ev.headers)
                a.status = int(dict(a.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.answers[ev.stream_id].body += ev.data
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.answers[ev.stream_id].ended = True
            elif isinstance(ev, h2.events.StreamReset):
                self.answers[ev.stream_id].reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = ev.error_code

    async def aclose(self) -> None:
        await self.stream.aclose()


def get(path: bytes = b"/", authority: bytes = b"h", method: bytes = b"GET") -> Headers:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", authority),
            (b":path", path)]  # fmt: skip
