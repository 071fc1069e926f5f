"""Access log lines are valid JSON whatever the client put in the request."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.observe.accesslog import AccessLog


def test_lines_are_json_with_client_values_escaped(tmp_path: Path) -> None:
    sink = (tmp_path / "access.log").open("w")
    log = AccessLog(sink)
    log.record(
        (1763780400.25, 0.0123, "127.0.0.1", "GET", 'h"ost\\', '/a"b\n\x01é', "HTTP/1.1",
         200, 3, 100, "default/shop", "127.0.0.1:8080", "id-1", ""),
    )  # fmt: skip
    log.record(
        (1763780401.5, 0.5, "127.0.0.1", "POST", "x", "/", "HTTP/1.0", 503, 0, 20, "", "", "", "no_healthy_upstream"),
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
