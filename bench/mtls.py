"""The mesh hop: client → proxy → mutual TLS → proxy → backend, for Weft, nginx and Envoy.

Each pair runs on the proxy core (Weft: two sidecar processes; nginx and Envoy: one process
holding both ends). All three use certificates from the same Weft CA: the Weft sidecars get
theirs from a running control plane (`meshctl server`, on the load core, idle during the
measurement); nginx and Envoy get files minted from the same intermediate, with a DNS name
besides the SPIFFE ID because nginx verifies upstreams by host name (Envoy checks the URI).
wrk drives HTTP/1.1 keep-alive into the first proxy; upstream connections are kept alive.
"""

from __future__ import annotations

import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.run import (
    LOAD_CORE,
    PORTS,
    PROXY_CORE,
    _proc_stat,
    _taskset,
    _wait_port,
    _wrk,
)
from ca import keystore

FIXED_RATE = 2000  # requests per second for the latency rows
P = {"weft": 18320, "weft_in": 18321, "weft+trace": 18324, "weft+trace_in": 18325,
     "nginx": 18330, "nginx_in": 18331, "envoy": 18340, "envoy_in": 18341, "cp": 18350}  # fmt: skip
# Weft pairs' other ports: web's inbound, the two admin ports, orders' outbound.
WEFT_PORTS = {"weft": (18323, 18352, 18353, 18354), "weft+trace": (18326, 18355, 18356, 18357)}
PEM = serialization.Encoding.PEM


def _leaf(ca: keystore.CA, service: str, dns: str) -> tuple[bytes, bytes]:
    """(cert + intermediate PEM, key PEM) for a pair's end, with URI and DNS names."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, dns)]))
        .issuer_name(ca.signer.cert.subject)
        .public_key(key.public_key())
        .serial_number(keystore.serial())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(
                        f"spiffe://{ca.trust_domain}/ns/default/svc/{service}"
                    ),
                    x509.DNSName(dns),
                ]
            ),
            critical=False,
        )
        .sign(ca.signer.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(PEM) + ca.signer.cert.public_bytes(PEM), key_pem


def _files(tmp: Path, ca: keystore.CA) -> dict[str, Path]:
    out = {"bundle": tmp / "mesh-bundle.pem"}
    out["bundle"].write_bytes(ca.bundle_pem)
    for service in ("web", "orders"):
        chain, key = _leaf(ca, service, f"{service}.mesh")
        out[f"{service}_cert"] = tmp / f"mesh-{service}.pem"
        out[f"{service}_key"] = tmp / f"mesh-{service}-key.pem"
        out[f"{service}_cert"].write_bytes(chain)
        out[f"{service}_key"].write_bytes(key)
        out[f"{service}_key"].chmod(0o600)
    return out


def _nginx(tmp: Path, f: dict[str, Path]) -> list[str]:
    backend = PORTS["backend"]
    (tmp / "nginx-mtls.conf").write_text(f"""
worker_processes 1; daemon off; pid {tmp}/nm.pid; error_log {tmp}/nm.err;
events {{ worker_connections 4096; }}
http {{ access_log {tmp}/nginx-mtls-access.log; keepalive_requests 1000000;
  upstream peer {{ server 127.0.0.1:{P["nginx_in"]}; keepalive 64; }}
  upstream app {{ server 127.0.0.1:{backend}; keepalive 64; }}
  server {{ listen 127.0.0.1:{P["nginx"]};
    location / {{ proxy_pass https://peer; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate {f["web_cert"]}; proxy_ssl_certificate_key {f["web_key"]};
      proxy_ssl_trusted_certificate {f["bundle"]}; proxy_ssl_verify on; proxy_ssl_verify_depth 3;
      proxy_ssl_name orders.mesh; proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; }} }}
  server {{ listen 127.0.0.1:{P["nginx_in"]} ssl;
    ssl_certificate {f["orders_cert"]}; ssl_certificate_key {f["orders_key"]};
    ssl_client_certificate {f["bundle"]}; ssl_verify_client on; ssl_verify_depth 3;
    ssl_protocols TLSv1.3;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    return ["nginx", "-c", str(tmp / "nginx-mtls.conf")]


def _envoy(
    tmp: Path, f: dict[str, Path], envoy: str, *, ports: tuple[int, int, int] | None = None,
    h2: bool = False, name: str = "envoy-mtls", base_id: int = 7,
) -> list[str]:  # fmt: skip
    """Envoy holding both ends of the pair: its outbound and inbound listeners and the
    backend at `ports` (default: this module's); `h2`: HTTP/2 on every hop (ALPN h2)."""
    out_port, in_port, backend = ports or (P["envoy"], P["envoy_in"], PORTS["backend"])
    h2_options = (
        "typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: "
        "{'@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, "
        "explicit_http_config: {http2_protocol_options: {}}}}"
        if h2 else ""
    )  # fmt: skip
    alpn = "alpn_protocols: [h2]" if h2 else ""
    hcm = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    router = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
    log = (f"access_log: [{{name: envoy.access_loggers.file, typed_config: {{'@type': "
           f"type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: {tmp}/{name}-access.log}}}}]")  # fmt: skip

    def listener(port: int, cluster: str, tls: str) -> str:
        return f"""
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - {tls}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm}
          stat_prefix: l{port}
          {log}
          route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}}}}}]}}]}}
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": {router}}}}}]"""

    downstream_tls = f"""transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
            {alpn}
            tls_certificates: [{{certificate_chain: {{filename: {f["orders_cert"]}}}, private_key: {{filename: {f["orders_key"]}}}}}]
            validation_context: {{trusted_ca: {{filename: {f["bundle"]}}}}}
      """
    (tmp / f"{name}.yaml").write_text(f"""
static_resources:
  listeners:{listener(out_port, "peer", "")}{listener(in_port, "app", downstream_tls)}
  clusters:
  - name: peer
    type: STATIC
    {h2_options}
    load_assignment: {{cluster_name: peer, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {in_port}}}}}}}}}]}}]}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {{tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}}
          {alpn}
          tls_certificates: [{{certificate_chain: {{filename: {f["web_cert"]}}}, private_key: {{filename: {f["web_key"]}}}}}]
          validation_context:
            trusted_ca: {{filename: {f["bundle"]}}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "spiffe://weft.local/ns/default/svc/orders"}}}}]
  - name: app
    type: STATIC
    {h2_options}
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {backend}}}}}}}}}]}}]}}
""")
    return [envoy, "-c", str(tmp / f"{name}.yaml"), "--concurrency", "1", "-l", "error",
            "--base-id", str(base_id)]  # fmt: skip


def _meshctl(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mesh_ctl", *args], capture_output=True, text=True, check=True
    ).stdout


def _weft(tmp: Path, name: str, *extra_args: str) -> list[list[str]]:
    """The sidecar commands of a Weft pair (orders first)."""
    data = tmp / "weft-data"
    outbound = tmp / f"{name}-outbound.yaml"
    outbound.write_text(f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: outbound}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: out, port: {P[name]}, protocol: HTTP}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: orders}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{{address: 127.0.0.1, port: {P[f"{name}_in"]}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: orders}}
spec:
  parentRefs: [{{name: outbound}}]
  rules: [{{backendRefs: [{{name: orders, port: 80}}]}}]
""")
    common = ["--control-plane", f"127.0.0.1:{P['cp']}", "--ca-file", str(data / "ca" / "root.pem"),
              "--inbound-address", "127.0.0.1", "--log-level", "warning", *extra_args]  # fmt: skip
    web_in, orders_admin, web_admin, orders_out = WEFT_PORTS[name]
    sidecars = []
    for service, inbound, admin, extra in (
        (
            "orders",
            P[f"{name}_in"],
            orders_admin,
            ["--app-port", str(PORTS["backend"]), "--outbound-port", str(orders_out)],
        ),
        ("web", web_in, web_admin, ["--app-port", "1", "-f", str(outbound)]),
    ):
        token = (
            _meshctl("token", "create", service, "--data-dir", str(data)).strip().splitlines()[-1]
        )
        sidecars.append([sys.executable, "-m", "mesh_ctl", "sidecar", "--service", service,
                         "--token", token, "--inbound-port", str(inbound),
                         "--admin-port", str(admin), *extra, *common])  # fmt: skip
    return sidecars


def control_plane(tmp: Path) -> list[str]:
    return [sys.executable, "-m", "mesh_ctl", "server", "--data-dir", str(tmp / "weft-data"),
            "--listen", f"127.0.0.1:{P['cp']}", "--http-listen", "off"]  # fmt: skip


def run(
    tmp: Path, rounds: int, seconds: float, connections: int, envoy: str | None, otlp: str = ""
) -> str:
    """The pairs' table; with `otlp` (a receiver's host:port) also a Weft pair tracing 100%."""
    data = tmp / "weft-data"
    _meshctl("ca", "init", "--data-dir", str(data))
    ca = keystore.load(data, datetime.datetime.now(datetime.UTC))
    files = _files(tmp, ca)
    server = control_plane(tmp)
    pairs: dict[str, list[list[str]]] = {"nginx": [_nginx(tmp, files)], "weft": _weft(tmp, "weft")}
    if otlp:
        pairs["weft+trace"] = _weft(tmp, "weft+trace", "--otlp-endpoint", otlp)
    if envoy:
        pairs["envoy"] = [_envoy(tmp, files, envoy)]
    procs: dict[str, list[subprocess.Popen[bytes]]] = {}
    cp = subprocess.Popen(_taskset(LOAD_CORE, server), stderr=subprocess.DEVNULL)
    rss: dict[str, list[float]] = {}
    try:
        _wait_port(P["cp"])
        for name, cmds in pairs.items():
            procs[name] = []
            for cmd in cmds:
                procs[name].append(subprocess.Popen(_taskset(PROXY_CORE, cmd),
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
                if name.startswith("weft"):  # the web sidecar needs orders' inbound first
                    first = len(procs[name]) == 1
                    _wait_port(P[f"{name}_in"] if first else P[name], timeout=60)
            _wait_port(P[name], timeout=60)
            # warm-up (pools, TLS sessions); its errors, if any, are the start-up's
            subprocess.run(_taskset(LOAD_CORE, ["wrk", "-t1", f"-c{connections}", "-d2s",
                           f"http://127.0.0.1:{P[name]}/"]), capture_output=True, check=False)  # fmt: skip
            rss[name] = [_proc_stat(p.pid)[1] for p in procs[name]]
        samples: dict[str, list[tuple[float, float, float, float]]] = {n: [] for n in pairs}
        latency: dict[str, list[tuple[float, float]]] = {"direct": [], **{n: [] for n in pairs}}
        for _ in range(rounds):
            for name in pairs:
                before = sum(_proc_stat(p.pid)[0] for p in procs[name])
                rps, p50, p99, total = _wrk(P[name], seconds, connections, path="/")
                cpu = sum(_proc_stat(p.pid)[0] for p in procs[name]) - before
                samples[name].append((rps, p50, p99, cpu / total * 1e6))
            for name, rows in latency.items():
                rows.append(_fixed_rate(PORTS["backend"] if name == "direct" else P[name], seconds))
    finally:
        for plist in procs.values():
            for p in plist:
                p.terminate()
                p.wait(10)
        cp.terminate()
        cp.wait(10)
    return _table(samples, rss, rounds) + "\n\n" + _latency_table(latency)


def _fixed_rate(port: int, seconds: float) -> tuple[float, float]:
    """(p50, p99) ms at FIXED_RATE requests per second (bench/fixed_rate.py)."""
    out = subprocess.run(
        _taskset(LOAD_CORE, [sys.executable, "-m", "bench.fixed_rate", str(port), "--rate",
                             str(FIXED_RATE), "--seconds", f"{seconds:g}"]),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    result = json.loads(out)
    return result["p50"], result["p99"]


def _latency_table(latency: dict[str, list[tuple[float, float]]]) -> str:
    """What each pair adds to a request at a fixed rate (medians of the rounds)."""
    med = {n: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
           for n, v in latency.items()}  # fmt: skip
    base = med["direct"]
    lines = [
        f"Latency at a fixed {FIXED_RATE:,} requests/s (bench/fixed_rate.py, 32 connections):",
        "",
        "| target | p50 ms | p99 ms | p50 added | p99 added |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, (p50, p99) in med.items():
        added = ("—", "—") if name == "direct" else (f"{p50 - base[0]:.3f}", f"{p99 - base[1]:.3f}")
        lines.append(f"| {name} | {p50:.3f} | {p99:.3f} | {added[0]} | {added[1]} |")
    return "\n".join(lines)


def _table(samples: dict[str, list[tuple[float, float, float, float]]],
           rss: dict[str, list[float]], rounds: int) -> str:  # fmt: skip
    def ratio(name: str, ref: str) -> str:
        if ref not in samples or name == ref:
            return "—"
        rs = [a[0] / b[0] for a, b in zip(samples[name], samples[ref], strict=True)]
        return f"{statistics.median(rs):.2f}×"

    lines = [
        f"| pair | RPS (median of {rounds}) | p50 ms | p99 ms | CPU µs/req (both ends) | idle RSS MB per process | vs Envoy pair | vs nginx pair |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in samples.items():
        med = [statistics.median(x[i] for x in s) for i in range(4)]
        mem = " + ".join(f"{m:.0f}" for m in rss[name])
        lines.append(f"| {name} | {med[0]:,.0f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.1f} | {mem} "
                     f"| {ratio(name, 'envoy')} | {ratio(name, 'nginx')} |")  # fmt: skip
    return "\n".join(lines)
