"""Client certificates at the edge (ClientTrafficPolicy.tls.clientValidation) with real
TLS clients (httpx over HTTP/1.1 and HTTP/2, curl): required and optional validation,
a certificate from another CA refused in the handshake, and the X-Forwarded-Client-Cert
the backend sees (the verified certificate's, never one a client wrote)."""

from __future__ import annotations

import hashlib
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sidecar.errors import ConfigError
from tests.support.echo import EchoServer
from tests.support.edge import start_edge
from tests.support.pki import TestCA

CONFIG = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - {{name: https, port: 443, protocol: HTTPS, tls: {{certificateRefs: [{{name: server}}]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: server}}
type: kubernetes.io/tls
stringData: {{tls.crt: {crt}, tls.key: {key}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: client-ca}}
data: {{ca.crt: {client_ca}}}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ClientTrafficPolicy
metadata: {{name: mtls}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge, sectionName: https}}]
  tls:
    clientValidation:
      caCertificateRefs: [{{kind: ConfigMap, name: client-ca}}]
      optional: {optional}
  headers:
    xForwardedClientCert: {{mode: SanitizeSet, certDetailsToAdd: [Subject, URI, DNS]}}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: echo}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{{address: 127.0.0.1, port: {echo}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
"""


class Pki:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server_ca, self.client_ca, self.rogue_ca = (
            TestCA("server CA"),
            TestCA("client CA"),
            TestCA("rogue"),
        )
        self.server_ca_file = self.server_ca.write(tmp / "server-ca.pem")
        self.server = self.server_ca.issue("localhost")
        self.alice = self.client_ca.issue("alice", client=True, uris=("spiffe://partners/alice",))
        self.alice_files = self.alice.write(tmp, "alice")
        self.mallory_files = self.rogue_ca.issue("mallory", client=True).write(tmp, "mallory")

    def config(self, echo: int, optional: bool) -> str:
        return CONFIG.format(crt=json.dumps(self.server.cert_pem.decode()),
                             key=json.dumps(self.server.key_pem.decode()),
                             client_ca=json.dumps(self.client_ca.pem.decode()), echo=echo,
                             optional=str(optional).lower())  # fmt: skip

    def context(self, files: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.server_ca_file))
        if files is not None:
            ctx.load_cert_chain(*map(str, files))
        return ctx


async def _get(port: int, ctx: ssl.SSLContext, *, http2: bool = False) -> httpx.Response:
    async with httpx.AsyncClient(verify=ctx, http2=http2, timeout=10) as http:
        return await http.get(f"https://localhost:{port}/",
                              headers={"x-forwarded-client-cert": "Hash=forged;URI=spiffe://admin"})  # fmt: skip


async def test_required_client_certificates(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    with EchoServer("echo") as echo:
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", pki.config(echo.port, False))
            alice = await _get(port, pki.context(pki.alice_files))
            alice_h2 = await _get(port, pki.context(pki.alice_files), http2=True)
            for files in (None, pki.mallory_files):  # no certificate; another CA's
                with pytest.raises(
                    (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
                ):
                    await _get(port, pki.context(files))
            nursery.cancel_scope.cancel()
    assert (
        alice.status_code == 200
        and alice_h2.status_code == 200
        and alice_h2.http_version == "HTTP/2"
    )
    der = x509.load_pem_x509_certificate(pki.alice.cert_pem).public_bytes(Encoding.DER)
    expected = (f'Hash={hashlib.sha256(der).hexdigest()};Subject="CN=alice";'
                "URI=spiffe://partners/alice;DNS=alice")  # fmt: skip
    assert [r["headers"]["x-forwarded-client-cert"] for r in echo.received] == [[expected]] * 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_optional_client_certificates_with_curl(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    with EchoServer("echo") as echo:
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", pki.config(echo.port, True))
            anonymous = await _get(port, pki.context(None))
            cert, key = pki.alice_files
            done = await trio.to_thread.run_sync(lambda: subprocess.run(
                ["curl", "-sS", "--cacert", str(pki.server_ca_file), "--cert", str(cert),
                 "--key", str(key), f"https://localhost:{port}/"],
                check=False, capture_output=True, timeout=30))  # fmt: skip
            assert done.returncode == 0, done.stderr
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                await _get(port, pki.context(pki.mallory_files))  # presented: must verify
            nursery.cancel_scope.cancel()
    assert anonymous.status_code == 200
    anonymous_seen, curl_seen = (r["headers"].get("x-forwarded-client-cert") for r in echo.received)
    assert anonymous_seen is None  # no certificate: the client's forged field removed, none set
    assert curl_seen is not None and "URI=spiffe://partners/alice" in curl_seen[0]


def test_listeners_of_one_port_must_agree_and_a_missing_ca_closes_the_listener(
    tmp_path: Path,
) -> None:
    from sidecar.config.loader import load_snapshot
    from sidecar.modes.edge import _terminations

    pki = Pki(tmp_path)
    text = pki.config(1, False)
    second = text.replace(
        "  - {name: https, port: 443,",
        "  - {name: other, port: 443, hostname: other.example, protocol: HTTPS, tls: {certificateRefs: [{name: server}]}}\n  - {name: https, port: 443,",
    )
    path = tmp_path / "c.yaml"
    path.write_text(second)
    with pytest.raises(ConfigError, match="differ in client certificate validation"):
        _terminations(load_snapshot([str(path)], version=1, gateway_class="weft"))
    path.write_text(text.replace("name: client-ca}\ndata", "name: other-ca}\ndata"))
    snap = load_snapshot([str(path)], version=1, gateway_class="weft")
    assert not snap.routers
    assert any("ConfigMap default/client-ca with ca.crt not found; listener not served" in w
               for w in snap.warnings)  # fmt: skip
