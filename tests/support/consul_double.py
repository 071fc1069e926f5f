"""A TEST DOUBLE of Consul's HTTP API (one dev agent + server), for tests only.

No Consul binary can be installed where these tests run, so this serves the part of Consul's
documented HTTP API that Weft calls, over real HTTP on 127.0.0.1, in the documented shapes
(see tests/fixtures/consul/ for recorded answers it mirrors):

- `PUT /v1/agent/service/register`, `PUT /v1/agent/service/deregister/:id`,
  `GET /v1/agent/service/:id`; the registered HTTP checks really run (GET at their interval:
  2xx passing, 429 warning, else critical; `Status` sets the initial state;
  `DeregisterCriticalServiceAfter` is honoured);
- `GET /v1/catalog/services`, `GET /v1/health/service/:name[?passing]`;
- `GET|PUT|DELETE /v1/kv/:key` (`recurse`, `cas`), `PUT /v1/txn` (set, cas, delete,
  delete-cas, get; at most 64 operations; 409 with `Errors` when a check fails);
- blocking queries: `X-Consul-Index` per table (kvs, services), `index` + `wait` hold the
  request until the table changes or the wait ends;
- ACLs when made with a token: every call needs `X-Consul-Token` (403 otherwise);
  `read_only` makes it a token without `key:write` (KV writes answer 403 as Consul does).

It is strict where Consul is (unknown fields in a registration are refused; JSON bodies
must be JSON) so client code cannot come to rely on leniency. Tests can also make it fail
(`fail_with`), move an index backwards (`rewind`), and see every request (`requests`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NODE = {
    "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
    "Node": "weft-test-node",
    "Address": "127.0.0.1",
    "Datacenter": "dc1",
    "TaggedAddresses": {"lan": "127.0.0.1", "wan": "127.0.0.1"},
    "Meta": {"consul-network-segment": ""},
    "CreateIndex": 5,
    "ModifyIndex": 5,
}
REGISTER_FIELDS = {
    "ID", "Name", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "Kind", "Proxy",
    "Connect", "Check", "Checks", "EnableTagOverride", "Weights", "Namespace", "Partition",
    "SocketPath",
}  # fmt: skip
CHECK_FIELDS = {
    "CheckID", "Name", "Notes", "Status", "HTTP", "Method", "Header", "Body", "Interval",
    "Timeout", "DeregisterCriticalServiceAfter", "TLSSkipVerify", "TLSServerName",
    "SuccessBeforePassing", "FailuresBeforeCritical", "TCP", "TTL", "OutputMaxSize",
}  # fmt: skip
MAX_WAIT_S = 600.0


def parse_duration(text: str) -> float:
    """Go duration strings as Consul takes them ("55s", "5m", "100ms", "1m30s")."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(a) * units[b] for a, b in parts)


@dataclass
class _Check:
    check_id: str
    name: str
    http: str
    interval_s: float
    timeout_s: float
    status: str
    deregister_after_s: float | None
    next_run: float = 0.0
    critical_since: float | None = None
    output: str = ""


@dataclass
class _Service:
    definition: dict[str, Any]
    check: _Check | None
    create_index: int
    modify_index: int


@dataclass
class _Kv:
    value: bytes
    flags: int
    create_index: int
    modify_index: int


ANONYMOUS = "00000000-0000-0000-0000-000000000002"  # Consul's anonymous token's AccessorID


@dataclass
class ConsulDouble:
    token: str = ""
    read_only: bool = False  # the token lacks key:write
    index: int = 10  # the raft index: grows with every write
    tables: dict[str, int] = field(default_factory=lambda: {"kvs": 10, "services": 10})
    services: dict[str, _Service] = field(default_factory=dict)
    kv: dict[str, _Kv] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query)
    failing: int = 0  # answer every request with this status while set (0: serve)
    instant: bool = False  # answer blocking queries at once (a proxy that drops `index`)
    lock: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0
    tls: ssl.SSLContext | None = None  # serve HTTPS (Consul's `ports.https`)
    _server: ThreadingHTTPServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"consul{'+https' if self.tls else ''}://127.0.0.1:{self.port}"

    # -- test controls ---------------------------------------------------------------------
    def fail_with(self, status: int) -> None:
        with self.lock:
            self.failing = status
            self.lock.notify_all()

    def rewind(self, table: str, to: int) -> None:
        """Move the indexes backwards (as restoring a snapshot does)."""
        with self.lock:
            self.index = self.tables[table] = to
            self.lock.notify_all()

    def touch(self, table: str) -> None:
        """Bump a table's index without changing what a query returns (Consul does this)."""
        with self.lock:
            self._bump(table)

    def put(self, key: str, value: bytes) -> None:
        """Write a KV entry as an operator would (`consul kv put`)."""
        with self.lock:
            idx = self._bump("kvs")
            old = self.kv.get(key)
            self.kv[key] = _Kv(value, 0, old.create_index if old else idx, idx)

    def count(self, prefix: str) -> int:
        with self.lock:
            return sum(1 for _, p in self.requests if p.startswith(prefix))

    def wait_for(self, predicate: Any, timeout_s: float = 10.0) -> None:
        """Block until `predicate(self)` holds (evaluated under the lock on each change)."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the Consul double never reached the expected state")
                self.lock.wait(left)

    def passing(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return self._health(name, passing=True)

    # -- state (lock held) -----------------------------------------------------------------
    def _bump(self, table: str) -> int:
        self.index += 1
        self.tables[table] = self.index
        self.lock.notify_all()
        return self.index

    def _health(self, name: str, *, passing: bool) -> list[dict[str, Any]]:
        out = []
        for sid, svc in sorted(self.services.items()):
            d = svc.definition
            if d["Service"] != name:
                continue
            status = svc.check.status if svc.check else "passing"
            if passing and status != "passing":
                continue
            checks = [{
                "Node": NODE["Node"], "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
                "Namespace": "default", "CreateIndex": 5, "ModifyIndex": 5,
            }]  # fmt: skip
            if svc.check is not None:
                checks.append({
                    "Node": NODE["Node"], "CheckID": svc.check.check_id, "Name": svc.check.name,
                    "Status": svc.check.status, "Notes": "", "Output": svc.check.output,
                    "ServiceID": sid, "ServiceName": name, "ServiceTags": d["Tags"],
                    "Type": "http", "Namespace": "default",
                    "CreateIndex": svc.create_index, "ModifyIndex": svc.modify_index,
                })  # fmt: skip
            out.append({"Node": NODE, "Service": d, "Checks": checks})
        return out

    def _catalog(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"consul": []}
        for svc in self.services.values():
            tags = out.setdefault(svc.definition["Service"], [])
            tags.extend(t for t in svc.definition["Tags"] if t not in tags)
        return out

    def _register(self, body: Any) -> tuple[int, str]:
        if not isinstance(body, dict):
            return 400, "Request decode failed: expected an object"
        unknown = set(body) - REGISTER_FIELDS
        if unknown:
            return 400, f"Request decode failed: json: unknown field {sorted(unknown)[0]!r}"
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            return 400, "Missing service name"
        sid = body.get("ID") or name
        check = None
        cdef = body.get("Check")
        if cdef:
            if set(cdef) - CHECK_FIELDS:
                return (
                    400,
                    f"Request decode failed: unknown check field {sorted(set(cdef) - CHECK_FIELDS)[0]!r}",
                )
            if not cdef.get("HTTP") or not cdef.get("Interval"):
                return 400, "Invalid check: only HTTP checks with an Interval in this double"
            try:
                check = _Check(
                    check_id=cdef.get("CheckID") or f"service:{sid}",
                    name=cdef.get("Name") or f"Service '{name}' check",
                    http=cdef["HTTP"],
                    interval_s=parse_duration(cdef["Interval"]),
                    timeout_s=parse_duration(cdef.get("Timeout", "10s")),
                    status=cdef.get("Status") or "critical",
                    deregister_after_s=parse_duration(cdef["DeregisterCriticalServiceAfter"])
                    if cdef.get("DeregisterCriticalServiceAfter") else None,
                )  # fmt: skip
            except ValueError as exc:
                return 400, f"Invalid check: {exc}"
            if check.status not in ("passing", "warning", "critical"):
                return 400, f"Invalid check status {check.status!r}"
            check.next_run = time.monotonic() + check.interval_s
        old = self.services.get(sid)
        idx = self._bump("services")
        definition = {
            "ID": sid, "Service": name, "Tags": list(body.get("Tags") or []),
            "Address": body.get("Address", ""), "Meta": dict(body.get("Meta") or {}),
            "Port": int(body.get("Port", 0)),
            "Weights": dict(body.get("Weights") or {"Passing": 1, "Warning": 1}),
            "EnableTagOverride": False, "Proxy": {"Expose": {}, "Mode": ""},
            "Connect": {}, "PeerName": "", "Namespace": "default",
            "TaggedAddresses": body.get("TaggedAddresses") or {},
            "CreateIndex": old.create_index if old else idx, "ModifyIndex": idx,
        }  # fmt: skip
        self.services[sid] = _Service(definition, check, old.create_index if old else idx, idx)
        return 200, ""

    def _txn(self, ops: Any) -> tuple[int, Any]:
        if not isinstance(ops, list):
            return 400, "Failed to parse body: expected an array"
        if len(ops) > 64:
            return 413, f"Transaction contains too many operations ({len(ops)} > 64)"
        errors = []
        for n, op in enumerate(ops):
            kv = op.get("KV") if isinstance(op, dict) else None
            if not isinstance(kv, dict) or "Verb" not in kv or "Key" not in kv:
                return 400, f"Failed to parse operation {n}"
            cur = self.kv.get(kv["Key"])
            verb = kv["Verb"]
            if verb in ("cas", "delete-cas"):
                want = int(kv.get("Index", 0))
                have = cur.modify_index if cur else 0
                if want != have:
                    errors.append(
                        {"OpIndex": n, "What": f'failed to set key "{kv["Key"]}", index is stale'}
                    )
            elif verb not in ("set", "delete", "get"):
                return 400, f"Unknown KV verb {verb!r}"
            elif verb == "get" and cur is None:
                errors.append({"OpIndex": n, "What": f'key "{kv["Key"]}" doesn\'t exist'})
        if errors:
            return 409, {"Results": None, "Errors": errors}
        results = []
        idx = self._bump("kvs")
        for op in ops:
            kv = op["KV"]
            key, verb = kv["Key"], kv["Verb"]
            if verb in ("set", "cas"):
                value = base64.b64decode(kv.get("Value") or "")
                old = self.kv.get(key)
                self.kv[key] = _Kv(
                    value, int(kv.get("Flags", 0)), old.create_index if old else idx, idx
                )
                results.append({"KV": self._entry(key, with_value=False)})
            elif verb in ("delete", "delete-cas"):
                self.kv.pop(key, None)
            else:
                results.append({"KV": self._entry(key, with_value=True)})
        return 200, {"Results": results, "Errors": None}

    def _entry(self, key: str, *, with_value: bool = True) -> dict[str, Any]:
        e = self.kv[key]
        value = base64.b64encode(e.value).decode() if with_value and e.value else None
        return {
            "LockIndex": 0, "Key": key, "Flags": e.flags, "Value": value,
            "CreateIndex": e.create_index, "ModifyIndex": e.modify_index,
        }  # fmt: skip

    # -- health checks ---------------------------------------------------------------------
    def _run_checks(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            with self.lock:
                due = [(sid, s.check) for sid, s in self.services.items()
                       if s.check is not None and s.check.next_run <= now]  # fmt: skip
            for sid, check in due:
                status, output = _probe(check)
                with self.lock:
                    svc = self.services.get(sid)
                    if svc is None or svc.check is not check:
                        continue
                    check.next_run = time.monotonic() + check.interval_s
                    check.output = output
                    if status == "critical":
                        check.critical_since = check.critical_since or now
                    else:
                        check.critical_since = None
                    if status != check.status:
                        check.status = status
                        self._bump("services")
                    after = check.deregister_after_s
                    if after is not None and check.critical_since is not None \
                            and now - check.critical_since >= after:  # fmt: skip
                        del self.services[sid]
                        self._bump("services")

    # -- serving ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self) -> Iterator[ConsulDouble]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                double._handle(self, "GET")

            def do_PUT(self) -> None:
                double._handle(self, "PUT")

            def do_DELETE(self) -> None:
                double._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._run_checks, daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self._stop.set()
            with self.lock:
                self.lock.notify_all()
            self._server.shutdown()
            self._server.server_close()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        q = {k: v[-1] for k, v in query.items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, h.path))
            self.lock.notify_all()
            failing = self.failing
        if failing:
            return _send(h, failing, "rpc error: No cluster leader", {})
        if self.token and h.headers.get("X-Consul-Token") != self.token:
            return _send(h, 403, "ACL not found", {})
        path = url.path
        if (
            self.read_only
            and method in ("PUT", "DELETE")
            and path.startswith(("/v1/kv/", "/v1/txn"))
        ):
            where = f' on "{path.removeprefix("/v1/kv/")}"' if path.startswith("/v1/kv/") else ""
            return _send(h, 403, "Permission denied: token with AccessorID "
                         f"'{ANONYMOUS}' lacks permission 'key:write'{where}", {})  # fmt: skip
        try:
            status, body, headers = self._route(method, path, q, raw)
        except (ValueError, KeyError) as exc:
            status, body, headers = 400, f"Bad request: {exc}", {}
        _send(h, status, body, headers)

    def _route(
        self, method: str, path: str, q: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        def body() -> Any:
            return json.loads(raw) if raw else None

        if method == "PUT" and path == "/v1/agent/service/register":
            with self.lock:
                status, text = self._register(body())
            return status, text, {}
        if method == "PUT" and path.startswith("/v1/agent/service/deregister/"):
            sid = urllib.parse.unquote(path.rsplit("/", 1)[1])
            with self.lock:
                if sid not in self.services:
                    return (
                        404,
                        f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.',
                        {},
                    )
                del self.services[sid]
                self._bump("services")
            return 200, "", {}
        if method == "GET" and path.startswith("/v1/agent/service/"):
            sid = urllib.parse.unquote(path.rsplit("/", 1)[1])
            with self.lock:
                svc = self.services.get(sid)
                if svc is None:
                    return 404, f"unknown service ID: {sid}", {}
                return 200, svc.definition, {}
        if method == "GET" and path == "/v1/catalog/services":
            return self._blocking(q, "services", self._catalog)
        if method == "GET" and path.startswith("/v1/health/service/"):
            name = urllib.parse.unquote(path.rsplit("/", 1)[1])
            passing = "passing" in q and q["passing"] not in ("false", "0")
            tag = q.get("tag")
            return self._blocking(
                q, "services",
                lambda: [e for e in self._health(name, passing=passing)
                         if tag is None or tag in e["Service"]["Tags"]],
            )  # fmt: skip
        if path.startswith("/v1/kv/"):
            return self._kv(method, urllib.parse.unquote(path[len("/v1/kv/") :]), q, raw)
        if method == "PUT" and path == "/v1/txn":
            with self.lock:
                status, result = self._txn(body())
                return status, result, {"X-Consul-Index": str(self.tables["kvs"])}
        return 405 if path.startswith("/v1/") else 404, f"unsupported {method} {path}", {}

    def _blocking(
        self, q: dict[str, str], table: str, read: Any
    ) -> tuple[int, Any, dict[str, str]]:
        want = int(q.get("index", "0") or 0)
        wait_s = min(parse_duration(q["wait"]), MAX_WAIT_S) if "wait" in q else 300.0
        deadline = time.monotonic() + wait_s
        with self.lock:
            while want and self.tables[table] <= want and not self._stop.is_set() \
                    and not self.instant:  # fmt: skip
                left = deadline - time.monotonic()
                if left <= 0 or self.failing:
                    break
                self.lock.wait(left)
            if self.failing:
                return self.failing, "rpc error: No cluster leader", {}
            result = read()
            index = self.tables[table]
        if result is None:
            return 404, "", {"X-Consul-Index": str(index)}
        return 200, result, {"X-Consul-Index": str(index)}

    def _kv(
        self, method: str, key: str, q: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if method == "GET":

            def read() -> Any:
                if "recurse" in q:
                    keys = sorted(k for k in self.kv if k.startswith(key))
                else:
                    keys = [key] if key in self.kv else []
                return [self._entry(k) for k in keys] or None

            return self._blocking(q, "kvs", read)
        with self.lock:
            cur = self.kv.get(key)
            if "cas" in q and int(q["cas"]) != (cur.modify_index if cur else 0):
                return 200, False, {}
            if method == "PUT":
                idx = self._bump("kvs")
                self.kv[key] = _Kv(
                    raw, int(q.get("flags", 0)), cur.create_index if cur else idx, idx
                )
                return 200, True, {}
            if method == "DELETE":
                doomed = [k for k in self.kv if k.startswith(key)] if "recurse" in q else [key]
                for k in doomed:
                    self.kv.pop(k, None)
                self._bump("kvs")
                return 200, True, {}
        return 405, "method not allowed", {}


def _probe(check: _Check) -> tuple[str, str]:
    try:
        with urllib.request.urlopen(check.http, timeout=check.timeout_s) as resp:
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except OSError as exc:
        return "critical", f"Get {check.http!r}: {exc}"
    status = "passing" if 200 <= code < 300 else "warning" if code == 429 else "critical"
    return status, f"HTTP GET {check.http}: {code}"


def _send(h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]) -> None:
    if isinstance(body, str):
        data, ctype = body.encode(), "text/plain; charset=utf-8"
    else:
        data, ctype = json.dumps(body).encode(), "application/json"
    try:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("X-Consul-Default-Acl-Policy", "allow")
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
