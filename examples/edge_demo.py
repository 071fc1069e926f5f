"""`make edge-demo`: three small JSON services and an edge gateway in front of them, with
an API for partners (API keys, a rate limit, CORS) and one for signed-in users (JWT).

Runs until interrupted; prints where to send requests, and a token for the JWT API.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
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


JWT_POLICY = """apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: account-jwt}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: account}}]
  jwt:
    providers:
    - name: demo-idp
      issuer: https://idp.demo.weft
      audiences: [shop-api]
      localJWKS: {{type: Inline, inline: {jwks}}}
      claimToHeaders: [{{header: x-user, claim: sub}}]
  authorization:
    defaultAction: Deny
    rules:
    - name: readers
      action: Allow
      principal: {{jwt: {{provider: demo-idp, scopes: ["orders:read"]}}}}
"""


def identity_provider(directory: Path) -> tuple[Path, dict[str, str]]:
    """A demo identity provider: a fresh key, its JWKS in a SecurityPolicy file for the
    gateway, and tokens signed with it (a reader and one without the scope)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public["kid"] = "demo-1"
    path = directory / "jwks.yaml"
    path.write_text(JWT_POLICY.format(jwks=json.dumps(json.dumps({"keys": [public]}))))
    now = int(time.time())

    def token(sub: str, scope: str) -> str:
        claims = {"iss": "https://idp.demo.weft", "aud": "shop-api", "sub": sub,
                  "scope": scope, "iat": now, "exp": now + 86400}  # fmt: skip
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": "demo-1"})

    return path, {"reader": token("ada", "orders:read"), "other": token("bob", "profile")}


def main() -> int:
    for name, port in SERVICES.items():
        try:
            _service(name, port)
        except OSError as exc:
            print(f"demo: cannot start {name} on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
            return 1
    directory = Path(tempfile.mkdtemp(prefix="weft-edge-demo-"))
    jwks, tokens = identity_provider(directory)
    print(
        "Weft edge demo\n"
        "  gateway   http://127.0.0.1:18080   (config: examples/edge/)\n"
        "  admin     http://127.0.0.1:15000/metrics  /config_dump  /ready\n"
        "Try:\n"
        "  curl -i localhost:18080/api/catalog/items\n"
        "  curl -s localhost:18080/api/orders          # v1 90% / v2 10%\n"
        "  curl -s -H 'x-canary: yes' localhost:18080/api/orders\n"
        "  curl -i localhost:18080/old                 # 301\n"
        "Partner API (API keys, 5 requests a minute per partner):\n"
        "  curl -i localhost:18080/api/partner/items                              # 401\n"
        "  curl -i -H 'x-api-key: acme-demo-key-4d1f' localhost:18080/api/partner/items\n"
        "  for i in $(seq 7); do curl -s -o /dev/null -w '%{http_code} ' "
        "-H 'x-api-key: globex-demo-key-9a2c' localhost:18080/api/partner/items; done\n"
        "Signed-in users (JWT; the scope orders:read is required):\n"
        f"  curl -i -H 'authorization: Bearer {tokens['reader']}' localhost:18080/api/me\n"
        f"  curl -i -H 'authorization: Bearer {tokens['other']}' localhost:18080/api/me   # 403\n"
        "Access log lines follow; Ctrl-C stops.\n",
        flush=True,
    )
    cmd = [sys.executable, "-m", "sidecar", "edge", "-f", str(HERE), "-f", str(jwks)]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
