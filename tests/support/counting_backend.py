"""A backend process for failure tests: counts what it receives, logs POST ids to a shared
file (which survives the process being killed), and can fail on purpose.

    python -m tests.support.counting_backend --name a [--fail-for 30] [--receipts FILE]
        [--health-fail-file FILE]

Prints its port on the first line of stdout. `GET /__count` answers the number of requests
received so far (itself not included); `/slow` answers after a second; `/healthz` answers
503 while the --health-fail-file exists. During the first --fail-for seconds every other
request is answered 503. Each response leaves in one write, so a kill never cuts one in
half.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--fail-for", type=float, default=0.0)
    ap.add_argument("--receipts", default="")
    ap.add_argument("--health-fail-file", default="")
    args = ap.parse_args()
    fail_until = time.monotonic() + args.fail_for
    fd = os.open(args.receipts, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if args.receipts else -1
    lock = threading.Lock()
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer(b"")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if fd >= 0:
                os.write(fd, f"{self.headers.get('x-id', '-')} {args.name}\n".encode())
            self._answer(body)

        def _answer(self, body: bytes) -> None:
            if self.path == "/__count":
                with lock:
                    self._send(200, {"count": count[0]})
                return
            if self.path == "/healthz":
                bad = args.health_fail_file and os.path.exists(args.health_fail_file)
                self._send(503 if bad else 200, {"name": args.name})
                return
            with lock:
                count[0] += 1
            if self.path == "/slow":
                time.sleep(1.0)
            status = 503 if time.monotonic() < fail_until else 200
            self._send(status, {"name": args.name, "bytes": len(body)})

        def _send(self, status: int, doc: dict[str, object]) -> None:
            payload = json.dumps(doc).encode()
            self.wfile.write(
                b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                % (status, len(payload), payload)
            )

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
