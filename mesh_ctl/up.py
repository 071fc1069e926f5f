"""`meshctl up [DIR]`: a whole mesh on one machine — control plane, CA, every service's app
with a sidecar beside each instance, and the edge — then a live view until Ctrl-C.

DIR holds `mesh.yaml` (resources, applied as `meshctl apply` would) and `up.yaml` (which
apps to run: command, protocol, versions, upstreams). Every process gets its own free
ports, runs in its own session (so Ctrl-C reaches only `meshctl up`, which then stops them
in order: edge and sidecars drain first, then apps, then the control plane) and dies with
`meshctl up` if that is killed (PR_SET_PDEATHSIG). Logs go to `<state>/logs/`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mesh_ctl import transparent
from mesh_ctl.common import CliError, table, write_context
from mesh_ctl.mesh_cli import render_top
from mesh_ctl.ports import free_port, reserve
from mesh_ctl.transparent import Network

if TYPE_CHECKING:
    from mesh_ctl.client import AdminClient

PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "TCP")


@dataclass(frozen=True)
class App:
    name: str
    command: list[str]
    protocol: str = "HTTP"
    versions: tuple[str, ...] = ("",)
    upstreams: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    apps: tuple[App, ...]
    edge_service: str = "edge"
    edge_url: str = "http://127.0.0.1:8080/"


def load_plan(directory: Path) -> Plan:
    """up.yaml, checked; CliError naming the field."""
    import yaml  # this and urllib load when `up` runs, not with every meshctl command

    path = directory / "up.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"{path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("services"), list):
        raise CliError(f"{path}: expected a mapping with a list of services")
    apps = []
    for i, s in enumerate(raw["services"]):
        where = f"{path}: services[{i}]"
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise CliError(f"{where}.name: required")
        cmd = s.get("command")
        if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
            raise CliError(f"{where}.command: a non-empty list of strings")
        protocol = s.get("protocol", "HTTP")
        if protocol not in PROTOCOLS:
            raise CliError(f"{where}.protocol: one of {', '.join(PROTOCOLS)}")
        versions = tuple(str(v) for v in s.get("versions") or [""])
        apps.append(
            App(s["name"], cmd, protocol, versions, tuple(map(str, s.get("upstreams") or ())))
        )
    edge = raw.get("edge") or {}
    return Plan(
        tuple(apps),
        str(edge.get("service", "edge")),
        str(edge.get("url", "http://127.0.0.1:8080/")),
    )


def _die_with_parent() -> None:
    """In the child: SIGTERM when `meshctl up` dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    admin: int = 0  # sidecar/edge admin port, for /ready and /metrics
    service: str = ""
    version: str = ""
    host: str = "127.0.0.1"  # where the admin port listens

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin}/"


@dataclass
class Mesh:
    directory: Path
    plan: Plan
    state: Path
    edge_port: int | None = None
    procs: list[Proc] = field(default_factory=list)
    server_port: int = 0
    http_port: int = 0
    otlp_endpoint: str = ""  # where the proxies export spans ("" none)
    network: Network | None = None  # --transparent: a namespace per instance

    @property
    def host(self) -> str:
        """Where the control plane listens: the bridge when instances have namespaces."""
        return self.network.gateway if self.network is not None else "127.0.0.1"

    def __post_init__(self) -> None:
        # the edge binds its port late: no other child may be given it meanwhile
        edge = urlsplit(self.plan.edge_url).port
        reserve(*(p for p in (self.edge_port, edge) if p))

    def _spawn(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, **info: Any
    ) -> Proc:
        log = open(self.state / "logs" / f"{name}.log", "wb")  # noqa: SIM115 - the child's
        popen = subprocess.Popen(
            cmd, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only, before any exec
        )  # fmt: skip
        log.close()
        proc = Proc(name, popen, **info)
        self.procs.append(proc)
        return proc

    def meshctl(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "mesh_ctl", *args]

    def start(self, say: Any) -> None:
        from ca import keystore

        (self.state / "logs").mkdir(parents=True)
        data = self.state / "data"
        keystore.init(data, "weft.local", datetime.datetime.now(datetime.UTC))
        if self.network is not None:
            self._network(say)
        self.server_port = free_port()
        listen = f"{self.host}:{self.server_port}"
        self.http_port = free_port()
        http = f"{self.host}:{self.http_port}"
        otlp = f"{self.host}:{free_port()}"  # the control plane keeps traces for `meshctl traces`
        self.otlp_endpoint = self.otlp_endpoint or otlp
        cmd = self.meshctl("server", "--data-dir", str(data), "--listen", listen,
                           "--http-listen", http, "--otlp-listen", otlp)  # fmt: skip
        server = self._spawn("control-plane", cmd)
        _wait_listening(self, self.host, self.server_port, server)
        say(f"control plane on {listen} (metrics on {http}), CA in {data / 'ca'}")
        self._apply_mesh(data)
        for app in self.plan.apps:
            for version in app.versions:
                self._start_instance(data, app, version)
        admin = free_port()
        edge = self.plan.edge_service
        cmd = self.meshctl(
            "edge", "--service", edge, "--token", self._token(data, edge),
            "--admin-port", str(admin), *self._join(data),
        )  # fmt: skip
        self._spawn("edge", cmd, admin=admin, service=edge)

    def _network(self, say: Any) -> None:
        """Namespaces, addresses and hosts files for every instance (--transparent)."""
        net = self.network
        assert net is not None
        names: dict[str, list[str]] = {}
        for app in self.plan.apps:
            for version in app.versions:
                names.setdefault(app.name, []).append(net.add(_instance(app, version)))
        try:
            transparent.create(net, names)
        except RuntimeError as exc:
            raise CliError(f"cannot make the network: {exc}") from None
        say(f"network {net.subnet} on bridge {net.tag}: a namespace per instance, "
            "its TCP intercepted by its sidecar")  # fmt: skip

    def _apply_mesh(self, data: Path) -> None:
        """mesh.yaml, as `meshctl apply` sends it (with the edge's port moved if asked)."""
        from sidecar.config.loader import read_documents

        docs = [d for d in read_documents([self.directory / "mesh.yaml"]) if d.data is not None]
        for d in docs:
            if (
                self.edge_port is not None
                and isinstance(d.data, dict)
                and d.data.get("kind") == "Gateway"
            ):
                for listener in d.data["spec"]["listeners"]:
                    listener["port"] = self.edge_port
        client = self.admin()
        try:
            client.call(
                "Apply", {"documents": [{"source": d.source, "data": d.data} for d in docs]}
            )
        finally:
            client.close()

    def admin(self) -> AdminClient:
        from mesh_ctl.client import AdminClient

        data = self.state / "data"
        root = (data / "ca" / "root.pem").read_bytes()
        token = (data / "admin.token").read_text().strip()
        return AdminClient(f"{self.host}:{self.server_port}", root, token)

    def _start_instance(self, data: Path, app: App, version: str) -> None:
        name = _instance(app, version)
        if self.network is not None:
            self._start_intercepted(data, app, version, self.network)
            return
        port = {k: free_port() for k in ("app", "inbound", "outbound", "admin")}
        upstreams = {u: free_port() for u in app.upstreams}
        env = {"PORT": str(port["app"]), "VERSION": version, "SERVICE": app.name,
               "MESH_OUTBOUND": f"127.0.0.1:{port['outbound']}"}  # fmt: skip
        env.update({f"{u.upper()}_ADDR": f"127.0.0.1:{p}" for u, p in upstreams.items()})
        script = app.command[0].endswith(".py")
        self._spawn(name, [sys.executable, *app.command] if script else list(app.command), env)
        cmd = self.meshctl(
            "sidecar", "--service", app.name, "--version", version, "--protocol", app.protocol,
            "--app-port", str(port["app"]), "--inbound-address", "127.0.0.1",
            "--inbound-port", str(port["inbound"]), "--outbound-port", str(port["outbound"]),
            "--admin-port", str(port["admin"]), "--token", self._token(data, app.name),
            *self._join(data),
        )  # fmt: skip
        for u, p in upstreams.items():
            cmd += ["--upstream", f"{u}:{p}"]
        self._spawn(f"{name}-sidecar", cmd, admin=port["admin"], service=app.name, version=version)

    def _start_intercepted(self, data: Path, app: App, version: str, net: Network) -> None:
        """The instance in its own namespace: the app as it would run in a pod (calling
        `http://orders:8080`), the interception rules, the sidecar in the proxy group."""
        name = _instance(app, version)
        address = net.addresses[name]
        env = {"PORT": str(transparent.APP_PORT), "VERSION": version, "SERVICE": app.name,
               "MESH_OUTBOUND": "127.0.0.1:15001", **transparent.APP_ENV}  # fmt: skip
        env.update({f"{a.name.upper()}_ADDR": f"{a.name}:{transparent.APP_PORT}"
                    for a in self.plan.apps if a.name != app.name})  # fmt: skip
        script = app.command[0].endswith(".py")
        cmd = [sys.executable, *app.command] if script else list(app.command)
        self._spawn(name, net.run_in(name, cmd), env)
        init = net.run_in(name, self.meshctl("init", "--proxy-gid", str(transparent.PROXY_GID)))
        done = subprocess.run(init, capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise CliError(f"{name}: meshctl init: {done.stderr.strip()}")
        cmd = self.meshctl(
            "sidecar", "--service", app.name, "--version", version, "--protocol", app.protocol,
            "--app-port", str(transparent.APP_PORT), "--intercept", "--advertise", address,
            "--admin-address", address, "--token", self._token(data, app.name),
            *self._join(data),
        )  # fmt: skip
        self._spawn(f"{name}-sidecar", net.run_in(name, cmd, gid=transparent.PROXY_GID),
                    admin=15000, service=app.name, version=version, host=address)  # fmt: skip

    def _join(self, data: Path) -> list[str]:
        root = str(data / "ca" / "root.pem")
        join = ["--control-plane", f"{self.host}:{self.server_port}", "--ca-file", root]
        if self.otlp_endpoint:
            join += ["--otlp-endpoint", self.otlp_endpoint]
        return join

    @staticmethod
    def _token(data: Path, service: str) -> str:
        from ca import keystore, tokens
        from ca.spiffe import SpiffeId

        return tokens.create(
            keystore.token_key(data), SpiffeId("weft.local", "default", service),
            now=datetime.datetime.now(datetime.UTC), ttl=datetime.timedelta(hours=1),
        )  # fmt: skip

    def wait_ready(self, say: Any, timeout_s: float = 90.0) -> None:
        """Until every proxy is ready; CliError with the failing one's last log lines as
        soon as a process exits or a proxy says it refused its configuration."""
        proxies = [p for p in self.procs if p.admin]
        waiting = proxies
        deadline = time.monotonic() + timeout_s
        shown = ""
        while True:
            for p in self.procs:
                if p.popen.poll() is not None:
                    raise self.failed(p.name, f"exited ({p.popen.returncode})")
            still = []
            for p in waiting:
                ready, problem = _ready(p.host, p.admin)
                if problem:
                    raise self.failed(p.name, f"is not ready: {problem}")
                if not ready:
                    still.append(p)
            waiting = still
            line = f"starting: {len(proxies) - len(waiting)}/{len(proxies)} ready"
            if waiting:
                line += f" (waiting for {', '.join(p.name for p in waiting)})"
            if line != shown:
                say(line)
                shown = line
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in waiting)
                raise self.failed(waiting[0].name, f"not ready after {timeout_s:g}s ({names})")
            time.sleep(0.2)  # polling other processes' /ready endpoints

    def failed(self, name: str, what: str, lines: int = 12) -> CliError:
        """`name` failed: what, and the end of its log (where the cause usually is)."""
        log = self.state / "logs" / f"{name}.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        shown = "".join(f"\n  | {line}" for line in tail)
        return CliError(f"{name} {what}; the end of {log}:{shown}" if tail else f"{name} {what}")

    def stop(self) -> None:
        """Edge and sidecars drain first, then the apps, then the control plane."""
        order = [[p for p in self.procs if p.admin],
                 [p for p in self.procs if not p.admin and p.name != "control-plane"],
                 [p for p in self.procs if p.name == "control-plane"]]  # fmt: skip
        for group in order:
            for p in group:
                if p.popen.poll() is None:
                    p.popen.send_signal(signal.SIGTERM)
            for p in group:
                try:
                    p.popen.wait(20)
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    p.popen.wait()


def _instance(app: App, version: str) -> str:
    return f"{app.name}-{version}" if version else app.name


def _ready(host: str, port: int) -> tuple[bool, str]:
    """Whether the proxy with admin `port` is ready, and what it refused if it says."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=1) as r:
            return r.status == 200, ""
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        return False, body.removeprefix("not ready: ") if body.startswith("not ready: ") else ""
    except OSError:
        return False, ""


def _wait_listening(mesh: Mesh, host: str, port: int, proc: Proc, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise mesh.failed(proc.name, f"exited ({proc.popen.returncode})")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise mesh.failed(proc.name, f"is not listening on port {port} after {timeout_s:g}s")


TRAFFIC_RPS = 10.0
TRAFFIC_WORKERS = 4  # a request through the shop takes ~100 ms: one at a time is too few


def _traffic(url: str, stop: threading.Event, worker: int) -> None:
    """One of TRAFFIC_WORKERS senders of TRAFFIC_RPS requests a second to the edge, on a
    fixed schedule (a slow answer delays the next, not the rate after it)."""
    import urllib.request

    period = TRAFFIC_WORKERS / TRAFFIC_RPS
    due = time.monotonic() + worker * period / TRAFFIC_WORKERS
    while not stop.wait(max(0.0, due - time.monotonic())):
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=5).read()
        due = max(due + period, time.monotonic() - period)  # never a burst to catch up


def up(args: argparse.Namespace) -> int:
    if args.cleanup:
        return _cleanup()
    directory = Path(args.dir)
    if not directory.is_dir():
        raise CliError(f"{directory}: no such directory (it holds mesh.yaml and up.yaml)")
    for name in ("up.yaml", "mesh.yaml"):
        if not (directory / name).is_file():
            raise CliError(f"{directory / name}: not found")
    plan = load_plan(directory)
    url = plan.edge_url
    if args.edge_port is not None:
        url = re.sub(r":\d+/", f":{args.edge_port}/", url)
    network = None
    if args.transparent:
        why = transparent.unavailable()
        if why is None:
            subnet = transparent.pick_subnet(transparent.host_networks(), os.getpid())
            network = Network(os.getpid(), subnet)
        else:
            print(f"meshctl: {why}; running the explicit mode", file=sys.stderr)
    state = Path(tempfile.mkdtemp(prefix="weft-up-"))
    mesh = Mesh(directory, plan, state, edge_port=args.edge_port, otlp_endpoint=args.otlp_endpoint,
                network=network)  # fmt: skip
    stop = threading.Event()
    # SIGTERM stops the mesh as Ctrl-C does, at any point (start-up included).
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def say(text: str) -> None:
        print(text, flush=True)

    kept = False
    try:
        mesh.start(say)
        mesh.wait_ready(say)
        rows = [["SERVICE", "VERSION", "IDENTITY", "APP", "SIDECAR ADMIN"]]
        for p in mesh.procs:
            if p.admin:
                identity = f"spiffe://weft.local/ns/default/svc/{p.service}"
                app = p.name.removesuffix("-sidecar") if p.name != "edge" else "-"
                rows.append([p.service, p.version or "-", identity, app, p.admin_url])
        say(table(rows))
        server = f"{mesh.host}:{mesh.server_port}"
        write_context(server, state / "data")  # `meshctl top` etc. in another terminal
        traces = "meshctl traces" if not args.otlp_endpoint else args.otlp_endpoint
        reach = (
            f"control plane: {server}  data: {state / 'data'}  (the current context: "
            f"meshctl top, get, shift … find it)\ntraces: {traces}    logs: {state / 'logs'}"
            f"    try: curl {url}"
        )
        say(reach)
        if args.traffic:
            for worker in range(TRAFFIC_WORKERS):
                threading.Thread(target=_traffic, args=(url, stop, worker), daemon=True).start()
        _live(mesh, stop, say, args.interval, reach)
    except KeyboardInterrupt:
        pass
    except CliError:
        kept = True  # the logs say what went wrong: keep them
        raise
    finally:
        stop.set()
        say("stopping: draining sidecars and the edge, then apps, then the control plane")
        mesh.stop()
        if network is not None:
            transparent.remove(network.owner)
        shutil.rmtree(state / "data" if kept else state, ignore_errors=True)
        if kept:
            say(f"logs kept in {state / 'logs'}")
    return 0


def _cleanup() -> int:
    """`meshctl up --cleanup`: what transparent meshes whose `meshctl up` died left."""
    owners = transparent.leftovers()
    for owner in owners:
        for what in transparent.remove(owner):
            print(f"removed {what}")
    if not owners:
        print("nothing to clean up")
    return 0


def _live(mesh: Mesh, stop: threading.Event, say: Any, interval_s: float, reach: str) -> None:
    """`meshctl top`'s view of the mesh, every `interval_s`, until stopped; `reach` (how
    to reach this mesh) stays on screen under it."""
    client = mesh.admin()
    try:
        while not stop.wait(interval_s):
            try:
                table = render_top(client.call("Top", {"window_s": 10.0}))
            except CliError as exc:
                table = f"no live view: {exc}"
            stamp = time.strftime("%H:%M:%S")
            if sys.stdout.isatty():
                sys.stdout.write("\x1b[2J\x1b[H")
            say(f"{stamp}  (Ctrl-C stops the mesh; `meshctl top` shows the same)\n{table}\n{reach}")
    finally:
        client.close()


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="run a whole mesh on this machine (default: examples/shop)")
    p.add_argument("dir", nargs="?", default="examples/shop", help="holds mesh.yaml and up.yaml")
    p.add_argument("--traffic", action="store_true", help="send ~10 requests/s to the edge")
    p.add_argument(
        "--edge-port", type=int, default=None, help="serve the edge on this port instead"
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between live samples")
    p.add_argument(
        "--otlp-endpoint", default="", metavar="HOST:PORT",
        help="the edge and sidecars export spans there over OTLP/gRPC (Jaeger: :4317); "
        "default: the control plane, which keeps the recent ones for `meshctl traces`",
    )  # fmt: skip
    p.add_argument(
        "--transparent", action="store_true",
        help="each instance in its own network namespace, its traffic intercepted (root); "
        "apps call http://SERVICE:8080 as in a cluster",
    )  # fmt: skip
    p.add_argument(
        "--cleanup", action="store_true",
        help="remove what a transparent mesh whose `meshctl up` died left, and exit",
    )  # fmt: skip
    p.set_defaults(func=up)
