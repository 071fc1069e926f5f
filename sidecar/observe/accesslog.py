"""The access log: one JSON object per request, written in batches off the request path."""

from __future__ import annotations

import contextlib
import os
import select
import stat
import time
from json.encoder import encode_basestring
from typing import TextIO

import trio

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 0.5


class AccessLog:
    """Buffers lines; `run` flushes them. With no sink, lines are dropped (logging off).

    Fields a client controls (authority, path, request id) are JSON-escaped; the others are
    tokens llhttp or the configuration already restricted (method, route, addresses), hex
    (trace id) or a SPIFFE ID the mesh's CA signed (peer identity).
    """

    def __init__(self, sink: TextIO | None) -> None:
        self._sink = sink
        self._fd = sink.fileno() if sink is not None else -1
        # Into a pipe or socket (stdout of a container), writes of whole lines of at most
        # PIPE_BUF bytes: another process writing there (an edge's other workers) cannot
        # cut into one. A file is opened for appending, where each write lands whole.
        self._chunk = 0
        if sink is not None and not stat.S_ISREG(os.fstat(self._fd).st_mode):
            self._chunk = select.PIPE_BUF
        self._buf: list[str] = []
        self._size = 0
        self.enabled = sink is not None
        self._second = -1
        self._stamp = ""

    def record(
        self,
        *,
        start: float,
        duration_s: float,
        downstream: str,
        method: str,
        authority: str,
        path: str,
        protocol: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        route: str,
        upstream: str,
        request_id: str,
        detail: str,
        retries: int = 0,
        trace_id: str = "",
        peer_identity: str = "",
    ) -> None:
        secs = int(start)
        if secs != self._second:  # strftime once a second, not once a request
            self._second = secs
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
        millis = int((start - secs) * 1000)
        micros = round(duration_s * 1e6)
        # No format specs: compiled, an f-string of plain fields is one concatenation, and
        # one with a spec a str.format call (3x the cost of the whole line).
        line = (
            f'{{"start":"{self._stamp}.{_pad3(millis)}Z",'
            f'"duration_ms":{micros // 1000}.{_pad3(micros % 1000)},'
            f'"downstream":"{downstream}","method":"{method}",'
            f'"authority":{encode_basestring(authority)},"path":{encode_basestring(path)},'
            f'"protocol":"{protocol}","status":{status},"bytes_in":{bytes_in},'
            f'"bytes_out":{bytes_out},"route":"{route}",'
            f'"upstream":"{upstream}","request_id":{encode_basestring(request_id)},'
            f'"retries":{retries},"detail":"{detail}","trace_id":"{trace_id}",'
            f'"peer_identity":"{peer_identity}"}}\n'
        )
        self._buf.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "replace")
        self._buf.clear()
        self._size = 0
        with contextlib.suppress(OSError):  # a closed sink loses lines, never requests
            while len(data) > self._chunk > 0:
                cut = data.rfind(b"\n", 0, self._chunk) + 1 or data.find(b"\n") + 1
                os.write(self._fd, data[:cut])
                data = data[cut:]
            os.write(self._fd, data)

    async def run(self) -> None:
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL_S)
                self.flush()
        finally:
            self.flush()


def _pad3(n: int) -> str:
    """0 ≤ n < 1000 as three digits."""
    return str(1000 + n)[1:]
