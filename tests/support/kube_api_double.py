"""A double of the Kubernetes API server's list and watch, for the control plane's
`--registry k8s` (no API server can run here). It follows the documented semantics
(https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):

- LIST `/api/v1/<plural>` and `/apis/<group>/<version>/<plural>` answers a `<Kind>List`
  whose `metadata.resourceVersion` is the collection's current version;
- `?watch=1&resourceVersion=N` streams, one JSON object per line, the ADDED, MODIFIED and
  DELETED events after N (each object carrying its new `metadata.resourceVersion`), then
  waits for more until `timeoutSeconds` or until the test drops the watches;
- with `allowWatchBookmarks=true`, BOOKMARK events carry a newer resourceVersion and only
  metadata;
- a watch from a resourceVersion older than the kept history gets one ERROR event whose
  object is a Status with code 410 (Expired), and ends;
- a kind the server does not serve answers 404; a request without the bearer token 401.

Every request is recorded (`requests`) so tests can see how clients resumed."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "double-token"


@dataclass
class _Event:
    seq: int
    rv: int
    path: str
    type: str
    obj: dict[str, Any]


class KubeApiDouble:
    def __init__(self, served: list[str]) -> None:
        """`served`: the collection paths it serves (`/api/v1/services`, …)."""
        self.served = set(served)
        self.rv = 100
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in served}
        self.history: list[_Event] = []
        self.seq = 0
        self.compacted = 0  # watches from a resourceVersion below this get 410
        self.generation = 0  # bumped to end every open watch
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.delivered: list[tuple[str, str, int]] = []  # (path, event type, its rv) sent
        self.cond = threading.Condition()
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # the http.server API
                double._get(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> KubeApiDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_watches()
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self) -> str:
        return (
            "apiVersion: v1\nkind: Config\ncurrent-context: double\n"
            f"clusters: [{{name: double, cluster: {{server: 'http://127.0.0.1:{self.port}'}}}}]\n"
            f"users: [{{name: test, user: {{token: {TOKEN}}}}}]\n"
            "contexts: [{name: double, context: {cluster: double, user: test}}]\n"
        )

    # -- what tests do to the cluster -------------------------------------------------------
    def put(self, path: str, obj: dict[str, Any]) -> int:
        """Create or replace an object; its new resourceVersion."""
        with self.cond:
            self.rv += 1
            md = obj.setdefault("metadata", {})
            md["resourceVersion"] = str(self.rv)
            key = (md.get("namespace", "default"), md["name"])
            kind = "MODIFIED" if key in self.objects[path] else "ADDED"
            self.objects[path][key] = obj
            self._record(path, kind, obj)
            return self.rv

    def delete(self, path: str, namespace: str, name: str) -> None:
        with self.cond:
            self.rv += 1
            obj = self.objects[path].pop((namespace, name))
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record(path, "DELETED", obj)

    def bookmark(self) -> int:
        """A BOOKMARK to every watch that allows them, at a newer resourceVersion."""
        with self.cond:
            self.rv += 1
            for path in self.served:
                self._record(path, "BOOKMARK", {"metadata": {"resourceVersion": str(self.rv)}})
            return self.rv

    def compact(self) -> None:
        """Forget the history: watches resuming from before now get 410."""
        with self.cond:
            self.history.clear()
            self.compacted = self.rv

    async def wait(self, predicate: Any, timeout_s: float = 10.0) -> bool:
        """Until `predicate()` holds (checked whenever the double's state changes)."""
        import trio

        def block() -> bool:
            with self.cond:
                return self.cond.wait_for(predicate, timeout_s)

        return await trio.to_thread.run_sync(block)

    def drop_watches(self) -> None:
        """End every open watch (as the server does at its timeout)."""
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def _record(self, path: str, kind: str, obj: dict[str, Any]) -> None:
        self.seq += 1
        self.history.append(_Event(self.seq, self.rv, path, kind, json.loads(json.dumps(obj))))
        self.cond.notify_all()

    # -- the API ------------------------------------------------------------------------------
    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.cond:
            self.requests.append((url.path, params))
            self.cond.notify_all()
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._json(h, 401, {"kind": "Status", "code": 401, "reason": "Unauthorized"})
        if url.path not in self.served:
            return self._json(h, 404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        if params.get("watch") in ("1", "true"):
            return self._watch(h, url.path, params)
        with self.cond:
            items = list(self.objects[url.path].values())
            body = {"kind": "List", "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.rv)}, "items": items}  # fmt: skip
        self._json(h, 200, body)

    def _json(self, h: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _watch(self, h: BaseHTTPRequestHandler, path: str, params: dict[str, str]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def send(event: dict[str, Any]) -> None:
            line = json.dumps(event).encode() + b"\n"
            h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            h.wfile.flush()

        since = int(params.get("resourceVersion") or 0)
        bookmarks = params.get("allowWatchBookmarks") == "true"
        deadline = time.monotonic() + float(params.get("timeoutSeconds") or 300)
        try:
            with self.cond:
                generation = self.generation
                if since < self.compacted:
                    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "code": 410, "reason": "Expired",
                              "message": f"too old resource version: {since} ({self.compacted})"}  # fmt: skip
                    send({"type": "ERROR", "object": status})
                    return
                seq = max((e.seq for e in self.history if e.rv <= since), default=0)
            while True:
                with self.cond:
                    if generation != self.generation or time.monotonic() > deadline:
                        return  # dropped, or its time is up: the client resumes
                    ready = [e for e in self.history if e.seq > seq and e.path == path]
                    if not ready:
                        self.cond.wait(0.5)
                        continue
                seq = ready[-1].seq
                for e in ready:
                    if e.type == "BOOKMARK" and not bookmarks:
                        continue
                    send({"type": e.type, "object": e.obj})
                    with self.cond:
                        self.delivered.append((path, e.type, e.rv))
                        self.cond.notify_all()
        except OSError:  # the client went away
            return
        finally:
            try:
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
            except OSError:
                pass
            h.close_connection = True
