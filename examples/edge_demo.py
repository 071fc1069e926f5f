"""`make demo`: three small JSON services and an edge gateway in front of them.

Runs until interrupted; prints where to send requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "edge"
SERVICES = {"catalog": 18081, "orders-v1": 18082, "orders-v2": 18083}


def _service(name: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps(
                {"service": name, "path": self.path, "request_id": self.headers.get("x-request-id")}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    for name, port in SERVICES.items():
        try:
            _service(name, port)
        except OSError as exc:
            print(f"demo: cannot start {name} on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
            return 1
    print(
        "Weft edge demo\n"
        "  gateway   http://127.0.0.1:18080   (config: examples/edge/)\n"
        "  admin     http://127.0.0.1:15000/metrics  /config_dump  /ready\n"
        "Try:\n"
        "  curl -i localhost:18080/api/catalog/items\n"
        "  curl -s localhost:18080/api/orders          # v1 90% / v2 10%\n"
        "  curl -s -H 'x-canary: yes' localhost:18080/api/orders\n"
        "  curl -i localhost:18080/old                 # 301\n"
        "Access log lines follow; Ctrl-C stops.\n",
        flush=True,
    )
    cmd = [sys.executable, "-m", "sidecar", "edge", "-f", str(HERE)]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
