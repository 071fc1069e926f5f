"""The gateway's response features against nginx, side by side on this machine.

    .venv/bin/python -m bench.gateway [--rounds 3] [--seconds 3]

Same layout as bench.run: wrk and the backend (nginx) on core 0, the proxy alone on core 1.

- **cache**: a 100-byte answer the backend marks `max-age=3600`. Weft's edge answers it
  from its cache (a hit every time after the first). Compared with the same edge proxying
  it uncached, and with nginx proxying it (a miss every time: nginx has no cache here).
- **gzip**: a 100 KB JSON answer, requested with `Accept-Encoding: gzip`. Weft's
  compression (gzipLevel 1) against nginx `gzip on` at its default level (1); CPU per
  request is the proxy's. The same answer without `Accept-Encoding` is the baseline that
  separates compression's own cost from moving 100 KB through the proxy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.run import Target, _proc_stat, _start, _stop, _weft_cmd, _wrk, require

BACKEND, NGINX, WEFT, ADMIN = 18301, 18302, 18303, 18304
ACCEPT_GZIP = ("Accept-Encoding: gzip",)


def _files(tmp: Path) -> dict[str, list[str]]:
    tmp.chmod(0o755)  # nginx's worker (nobody) reads the file
    (tmp / "site").mkdir()
    doc = [{"id": i, "name": f"item {i}", "price": i * 3 % 97, "tags": ["a", "b"]}
           for i in range(1700)]  # fmt: skip
    (tmp / "site" / "big.json").write_text(json.dumps(doc)[:100_000])
    (tmp / "backend.conf").write_text(f"""
worker_processes 1; daemon off; pid {tmp}/b.pid; error_log {tmp}/b.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; types {{ application/json json; }}
  server {{ listen 127.0.0.1:{BACKEND}; root {tmp}/site;
    location /cached {{ add_header Cache-Control "max-age=3600"; return 200 "{"x" * 100}"; }}
    location /plain {{ return 200 "{"x" * 100}"; }} }} }}
""")
    proxy = """proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection "";"""
    (tmp / "nginx.conf").write_text(f"""
worker_processes 1; daemon off; pid {tmp}/n.pid; error_log {tmp}/n.err;
events {{ worker_connections 4096; }}
http {{ access_log {tmp}/nginx-access.log; keepalive_requests 1000000;
  upstream b {{ server 127.0.0.1:{BACKEND}; keepalive 64; }}
  server {{ listen 127.0.0.1:{NGINX};
    location / {{ {proxy} }}
    location /big.json {{ {proxy} gzip on; gzip_types application/json; }} }} }}
""")
    route = """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]
    backendRefs: [{{name: api, port: 80}}]
"""
    policy = """---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: {name}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {route}}}]
{body}"""
    (tmp / "weft.yaml").write_text(f"""apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: http, port: {WEFT}, protocol: HTTP}}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: api}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{{address: 127.0.0.1, port: {BACKEND}}}]
""" + route.format(name="plain") + route.format(name="cached") + route.format(name="big.json")
        + policy.format(name="cache", route="cached", body="  cache: {}\n")
        + policy.format(name="gzip", route="big.json", body=(
            "  compression: [{type: Gzip}]\n  compressionOptions: {gzipLevel: 1}\n")))  # fmt: skip
    return {
        "backend": ["nginx", "-c", str(tmp / "backend.conf")],
        "nginx": ["nginx", "-c", str(tmp / "nginx.conf")],
        "weft": _weft_cmd(tmp / "weft.yaml", tmp / "weft-access.log", ADMIN),
    }


# (row, target, path, wrk headers)
ROWS = [
    ("nginx proxying (a miss every time)", "nginx", "/cached", ()),
    ("weft proxying, no cache", "weft", "/plain", ()),
    ("weft, cache hit", "weft", "/cached", ()),
    ("nginx, 100 KB JSON, identity", "nginx", "/big.json", ()),
    ("weft, 100 KB JSON, identity", "weft", "/big.json", ()),
    ("nginx gzip on, 100 KB JSON", "nginx", "/big.json", ACCEPT_GZIP),
    ("weft gzip, 100 KB JSON", "weft", "/big.json", ACCEPT_GZIP),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    require("wrk", "nginx")
    results: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="weft-bench-gateway-") as d:
        tmp = Path(d)
        cmds = _files(tmp)
        backend = Target("backend", BACKEND, cmds["backend"])
        proxies = {name: Target(name, port, cmds[name])
                   for name, port in (("nginx", NGINX), ("weft", WEFT))}  # fmt: skip
        try:
            _start(backend, "0")
            for p in proxies.values():
                _start(p, "1")
            for r in range(args.rounds):
                for row, name, path, headers in ROWS:
                    p = proxies[name]
                    assert p.proc is not None
                    _wrk(p.port, 1, args.connections, path, headers=headers)  # warm-up
                    before = _proc_stat(p.proc.pid)[0]
                    rps, _, p99, total = _wrk(p.port, args.seconds, args.connections, path,
                                              headers=headers)  # fmt: skip
                    cpu = (_proc_stat(p.proc.pid)[0] - before) / total * 1e6
                    results.setdefault(row, []).append((rps, cpu, p99))
                print(f"round {r + 1}/{args.rounds} done", flush=True)
        finally:
            for p in (*proxies.values(), backend):
                _stop(p)
    med = {row: tuple(statistics.median(s[i] for s in runs) for i in range(3))
           for row, runs in results.items()}  # fmt: skip
    print(f"\n| row ({args.rounds} rounds x {args.seconds:g} s, {args.connections} connections) "
          "| RPS | proxy CPU µs/req | p99 ms |")  # fmt: skip
    print("| --- | ---: | ---: | ---: |")
    for row, (rps, cpu, p99) in med.items():
        print(f"| {row} | {rps:,.0f} | {cpu:.1f} | {p99:.2f} |")
    hit, miss = med["weft, cache hit"][0], med["nginx proxying (a miss every time)"][0]
    gz_w, gz_n = med["weft gzip, 100 KB JSON"][1], med["nginx gzip on, 100 KB JSON"][1]
    own_w = gz_w - med["weft, 100 KB JSON, identity"][1]
    own_n = gz_n - med["nginx, 100 KB JSON, identity"][1]
    print(f"\ncache hit vs nginx proxying a miss: {hit / miss:.2f}x the requests per second")
    print(f"cache hit vs Weft proxying: {hit / med['weft proxying, no cache'][0]:.2f}x")
    print(
        f"gzip CPU per request, Weft / nginx: {gz_w / gz_n:.2f} (compression's own share, "
        f"over identity: {own_w:.0f} vs {own_n:.0f} µs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
