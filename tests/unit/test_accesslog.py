"""Access log lines are valid JSON whatever the client put in the request."""

from __future__ import annotations

import json
import os
import select
import socket
from pathlib import Path

from sidecar.observe.accesslog import AccessLog


def test_lines_are_json_with_client_values_escaped(tmp_path: Path) -> None:
    sink = (tmp_path / "access.log").open("w")
    log = AccessLog(sink)
    common = {"downstream": "127.0.0.1", "bytes_in": 3, "upstream": "127.0.0.1:8080"}
    log.record(
        start=1763780400.25, duration_s=0.0123, method="GET", authority='h"ost\\',
        path='/a"b\n\x01é', protocol="HTTP/1.1", status=200, bytes_out=100,
        route="default/shop", request_id="id-1", detail="", **common,
    )  # fmt: skip
    log.record(
        start=1763780401.5, duration_s=0.5, method="POST", authority="x", path="/",
        protocol="HTTP/1.0", status=503, bytes_out=20, route="", request_id="",
        detail="no_healthy_upstream", **common,
    )  # fmt: skip
    log.flush()
    sink.close()
    first, second = (
        json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()
    )
    assert first["path"] == '/a"b\n\x01é' and first["authority"] == 'h"ost\\'
    assert first["start"] == "2025-11-22T03:00:00.250Z" and first["duration_ms"] == 12.3
    assert first["status"] == 200 and first["bytes_out"] == 100 and first["route"] == "default/shop"
    assert second["status"] == 503 and second["detail"] == "no_healthy_upstream"


def test_times_keep_three_decimals(tmp_path: Path) -> None:
    sink = (tmp_path / "access.log").open("w")
    log = AccessLog(sink)
    for start, duration in (
        (1763780400.005, 0.000734),
        (1763780400.999, 12.0),
        (1763780401.0, 0.0),
    ):
        log.record(
            start=start, duration_s=duration, downstream="d", method="GET", authority="a",
            path="/", protocol="HTTP/1.1", status=200, bytes_in=0, bytes_out=0, route="",
            upstream="", request_id="", detail="",
        )  # fmt: skip
    log.flush()
    sink.close()
    text = (tmp_path / "access.log").read_text()
    assert '"start":"2025-11-22T03:00:00.005Z","duration_ms":0.734,' in text
    assert '"start":"2025-11-22T03:00:00.999Z","duration_ms":12000.000,' in text
    assert '"start":"2025-11-22T03:00:01.000Z","duration_ms":0.000,' in text


def test_into_a_pipe_each_write_is_whole_lines_of_at_most_pipe_buf() -> None:
    """An edge's workers share stdout: a write of at most PIPE_BUF bytes to a pipe is never
    interleaved with another process's. A SOCK_SEQPACKET pair shows each write as one
    message."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with os.fdopen(ours.detach(), "w") as sink, theirs:
        log = AccessLog(sink)
        for i in range(200):
            log.record(
                start=1763780400.0, duration_s=0.001, downstream="d", method="GET",
                authority="a", path=f"/{i}", protocol="HTTP/1.1", status=200, bytes_in=0,
                bytes_out=0, route="", upstream="", request_id="", detail="",
            )  # fmt: skip
        log.flush()
        writes: list[bytes] = []
        while sum(w.count(b"\n") for w in writes) < 200:
            writes.append(theirs.recv(65536))
    assert len(writes) > 1 and all(len(w) <= select.PIPE_BUF for w in writes)
    lines = b"".join(writes).splitlines()
    assert [json.loads(line)["path"] for line in lines] == [f"/{i}" for i in range(200)]
