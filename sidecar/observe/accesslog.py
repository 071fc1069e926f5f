"""The access log: one JSON object per request, written in batches off the request path.

A request only appends a tuple of its values; lines are formatted and written together
when a batch is full or every half second, so the data path pays for an append and the
formatting runs in one tight loop.
"""

from __future__ import annotations

import contextlib
import os
import time
from json.encoder import encode_basestring
from typing import TextIO

import trio

FLUSH_ENTRIES = 512
FLUSH_INTERVAL_S = 0.5

# Fields a client controls (authority, path, request id) are JSON-escaped when formatted;
# the others are tokens llhttp or the configuration already restricted.
_LINE = (
    '{"start":"%s.%03dZ","duration_ms":%.3f,"downstream":"%s","method":"%s",'
    '"authority":%s,"path":%s,"protocol":"%s","status":%d,"bytes_in":%d,"bytes_out":%d,'
    '"route":"%s","upstream":"%s","request_id":%s,"detail":"%s"}\n'
)

# (start, duration_s, downstream, method, authority, path, protocol, status, bytes_in,
#  bytes_out, route, upstream, request_id, detail)
Entry = tuple[float, float, str, str, str, str, str, int, int, int, str, str, str, str]


class AccessLog:
    """Buffers entries; `run` flushes them. With no sink, nothing is kept (logging off)."""

    def __init__(self, sink: TextIO | None) -> None:
        self._fd = sink.fileno() if sink is not None else -1
        self._sink = sink  # kept open as long as we write to its descriptor
        self._entries: list[Entry] = []
        self.enabled = sink is not None

    def record(self, entry: Entry) -> None:
        self._entries.append(entry)
        if len(self._entries) >= FLUSH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        entries = self._entries
        if not entries:
            return
        self._entries = []
        stamps: dict[int, str] = {}
        lines = []
        esc = encode_basestring
        for e in entries:
            secs = int(e[0])
            stamp = stamps.get(secs)
            if stamp is None:
                stamp = stamps[secs] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
            millis = int((e[0] - secs) * 1000)
            fields = (stamp, millis, e[1] * 1000, e[2], e[3], esc(e[4]), esc(e[5]), *e[6:12])
            lines.append(_LINE % (*fields, esc(e[12]), e[13]))
        with contextlib.suppress(OSError):  # a closed sink loses lines, never requests
            os.write(self._fd, "".join(lines).encode("utf-8", "replace"))

    async def run(self) -> None:
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL_S)
                self.flush()
        finally:
            self.flush()
