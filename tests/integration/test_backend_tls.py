"""TLS from the edge to its backends (Gateway API BackendTLSPolicy) against nginx serving
HTTPS: verified against a CA from a ConfigMap and the policy's hostname, refused when the
name or the root is wrong; and an Ingress's backend-protocol HTTPS, unverified as
ingress-nginx does by default. nginx's log says which requests arrived over TLS."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio
import yaml

from tests.support.edge import config, start_edge
from tests.support.net import free_port
from tests.support.nginx import NGINX, nginx
from tests.support.pki import TestCA

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test does)")

POLICY = """---
apiVersion: gateway.networking.k8s.io/v1alpha3
kind: BackendTLSPolicy
metadata: {{name: {name}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: {service}}}]
  validation:
    hostname: {hostname}
    caCertificateRefs: [{{group: "", kind: ConfigMap, name: {ca}}}]
"""


def _https_backend(tmp: Path, ca: TestCA, port: int) -> str:
    cert, key = ca.issue("secure.backend").write(tmp, "backend")
    return f"""
  log_format tls '$request_uri $https';
  access_log {tmp}/backend.log tls;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ return 200 "secret"; }}
  }}"""


async def test_tls_to_backends_verified_and_refused(tmp_path: Path) -> None:
    ca = TestCA("Backend CA")
    port = free_port()
    config_map = yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                 "metadata": {"name": "backend-ca"},
                                 "data": {"ca.crt": ca.pem.decode()}})  # fmt: skip
    services = {"good": port, "wrongname": port, "noroot": port, "badroot": port, "plain": port}
    text = config(services, [(n, f"/{n}", n) for n in services])
    text += POLICY.format(name="good", service="good", hostname="secure.backend", ca="backend-ca")
    text += POLICY.format(name="wrongname", service="wrongname", hostname="other.backend",
                          ca="backend-ca")  # fmt: skip
    text += POLICY.format(name="noroot", service="noroot", hostname="secure.backend",
                          ca="missing")  # fmt: skip
    text += POLICY.format(name="badroot", service="badroot", hostname="secure.backend",
                          ca="not-pem")  # fmt: skip
    text += "---\n" + config_map
    text += "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: not-pem}\n"
    text += "data: {ca.crt: 'not a certificate'}\n"
    async with nginx(tmp_path, _https_backend(tmp_path, ca, port)), trio.open_nursery() as n:
        edge, eport = await start_edge(n, tmp_path / "c.yaml", text)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{eport}", timeout=10) as http:
            good = await http.get("/good")
            wrong = await http.get("/wrongname")
            noroot = await http.get("/noroot")
            badroot = await http.get("/badroot")
            plain = await http.get("/plain")  # no policy: plain HTTP to a TLS port
        n.cancel_scope.cancel()
    assert good.status_code == 200 and good.text == "secret"
    assert wrong.status_code == 503 and noroot.status_code == 503 == badroot.status_code
    assert plain.status_code == 400  # nginx: "plain HTTP request sent to HTTPS port"
    assert edge.snapshot is not None
    said = "\n".join(edge.snapshot.warnings)
    assert "ConfigMap default/missing with key ca.crt not found" in said
    assert "ConfigMap default/not-pem has no certificate in ca.crt" in said
    log = (tmp_path / "backend.log").read_text().split("\n")
    assert "/good on" in log  # over TLS
    assert not any(line.startswith(("/wrongname", "/noroot", "/badroot")) for line in log)


async def test_ingress_backend_protocol_https(tmp_path: Path) -> None:
    from tests.integration.test_ingress import ADDRESS, _edge, _ingress, _rule, _service
    from tests.integration.test_ingress import NGINX as ANNOTATION

    ca = TestCA("Self-signed somewhere")
    port = free_port()
    docs = [
        *_service("secure", 443, port),
        _ingress("secure", {"ingressClassName": "weft",
                            "rules": [_rule("s.example", "/", "secure", 443)]},
                 annotations={ANNOTATION + "backend-protocol": "HTTPS"}),
    ]  # fmt: skip
    async with nginx(tmp_path, _https_backend(tmp_path, ca, port)):
        server = _edge(tmp_path, docs)
        async with trio.open_nursery() as n:
            await n.start(server.run)
            eport = server.bound_port(ADDRESS, 80)
            async with httpx.AsyncClient(timeout=10) as http:
                got = await http.get(f"http://{ADDRESS}:{eport}/", headers={"Host": "s.example"})
            n.cancel_scope.cancel()
    assert got.status_code == 200 and got.text == "secret"
    assert server.snapshot is not None and not server.snapshot.warnings
