"""Kubernetes Ingress on the edge, past what the conformance corpus covers: which
Ingresses are Weft's (class, legacy annotation, default IngressClass), backends by port
name, TLS from the Ingress's Secret, Ingresses beside a Gateway in the same files, and
what is refused or warned about."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml

from sidecar.config.ingress import IngressListeners
from sidecar.config.loader import load_snapshot
from sidecar.errors import ConfigError
from sidecar.modes.edge import EdgeServer
from tests.support.echo import EchoServer
from tests.support.pki import self_signed

ADDRESS = "127.0.0.9"
LISTENERS = IngressListeners(ADDRESS, 80, 443)


def _service(name: str, port: int, app_port: int, port_name: str = "http") -> list[dict[str, Any]]:
    """A Kubernetes Service and the EndpointSlice a cluster would have made for it."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
         "spec": {"selector": {"app": name}, "ports": [{"name": port_name, "port": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-1", "namespace": "shop",
                      "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4", "ports": [{"name": port_name, "port": app_port}],
         "endpoints": [{"addresses": ["127.0.0.1"]}]},
    ]  # fmt: skip


def _ingress(name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "shop", **meta}, "spec": spec}  # fmt: skip


def _rule(host: str | None, path: str, service: str, port: int | str) -> dict[str, Any]:
    ref = {"number": port} if isinstance(port, int) else {"name": port}
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": path,
                    "pathType": "Prefix",
                    "backend": {"service": {"name": service, "port": ref}},
                }
            ]
        }
    }
    return {**rule, "host": host} if host else rule


async def _get(
    server: EdgeServer, host: str, path: str = "/", https: bool = False
) -> httpx.Response:
    port = server.bound_port(ADDRESS, 443 if https else 80)
    scheme = "https" if https else "http"
    async with httpx.AsyncClient(timeout=10, verify=False) as http:
        return await http.get(f"{scheme}://{ADDRESS}:{port}{path}", headers={"Host": host},
                              extensions={"sni_hostname": host} if https else None)  # fmt: skip


async def test_class_port_names_tls_and_a_gateway_beside(tmp_path: Path) -> None:
    leaf = self_signed("secure.example")
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "secure-tls", "namespace": "shop"},
              "data": {"tls.crt": base64.b64encode(leaf.cert_pem).decode(),
                       "tls.key": base64.b64encode(leaf.key_pem).decode()}}  # fmt: skip
    with EchoServer("shop") as shop, EchoServer("blog") as blog, EchoServer("admin") as admin:
        docs = [
            *_service("shop", 80, shop.port), *_service("blog", 8080, blog.port, "web"),
            *_service("admin", 80, admin.port), secret,
            # class by name; a backend port by its name; TLS from the Ingress's Secret
            _ingress("main", {"ingressClassName": "weft",
                              "tls": [{"hosts": ["secure.example"], "secretName": "secure-tls"}],
                              "rules": [_rule("secure.example", "/", "shop", 80),
                                        _rule("blog.example", "/", "blog", "web")]}),
            # the legacy annotation
            _ingress("legacy", {"rules": [_rule("old.example", "/", "shop", 80)]},
                     annotations={"kubernetes.io/ingress.class": "weft"}),
            # another controller's: not served
            _ingress("theirs", {"ingressClassName": "nginx",
                                "rules": [_rule("admin.example", "/", "admin", 80)]}),
            # a Gateway and its route in the same files, on another port
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": "api", "namespace": "shop"},
             "spec": {"addresses": [{"type": "IPAddress", "value": "127.0.0.10"}],
                      "listeners": [{"name": "h", "port": 8000, "protocol": "HTTP"}]}},
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "api", "namespace": "shop"},
             "spec": {"parentRefs": [{"name": "api"}],
                      "rules": [{"backendRefs": [{"name": "admin", "port": 80}]}]}},
        ]  # fmt: skip
        server = _edge(tmp_path, docs)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            assert (await _get(server, "blog.example")).json()["pod"] == "blog"
            assert (await _get(server, "old.example")).json()["pod"] == "shop"
            assert (await _get(server, "admin.example")).status_code == 404  # nginx's
            secure = await _get(server, "secure.example", "/cart", https=True)
            assert secure.status_code == 200 and secure.json()["pod"] == "shop"
            port = server.bound_port("127.0.0.10", 8000)
            async with httpx.AsyncClient(timeout=10) as http:
                beside = await http.get(f"http://127.0.0.10:{port}/")
            assert beside.json()["pod"] == "admin"
            nursery.cancel_scope.cancel()


def _edge(tmp_path: Path, docs: list[dict[str, Any]]) -> EdgeServer:
    """An edge serving `docs` from a file, Ingresses on LISTENERS, every port chosen by the OS."""
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return EdgeServer([str(path)], admin_port=0, bind=lambda key: (key.address, 0),
                      watch_interval_s=0, ingress=LISTENERS)  # fmt: skip


def _snapshot(tmp_path: Path, docs: list[dict[str, Any]]) -> Any:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return load_snapshot([str(path)], version=1, gateway_class="weft", ingress=LISTENERS)


def test_a_default_ingress_class_takes_ingresses_without_a_class(tmp_path: Path) -> None:
    klass = {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
             "metadata": {"name": "edge", "annotations": {
                 "ingressclass.kubernetes.io/is-default-class": "true"}},
             "spec": {"controller": "weft.dev/ingress-controller"}}  # fmt: skip
    plain = _ingress("plain", {"rules": [_rule("a.example", "/", "shop", 80)]})
    named = _ingress("named", {"ingressClassName": "edge",
                               "rules": [_rule("b.example", "/", "shop", 80)]})  # fmt: skip
    snap = _snapshot(tmp_path, [*_service("shop", 80, 9), klass, plain, named])
    hosts = {h for routes in snap.routers.values() for lst in routes.listeners()
             for h in lst.hosts.exact}  # fmt: skip
    assert hosts == {"a.example", "b.example"}
    other = {**klass, "metadata": {"name": "edge"}}  # not the default any more
    snap = _snapshot(tmp_path, [*_service("shop", 80, 9), other, plain, named])
    hosts = {h for routes in snap.routers.values() for lst in routes.listeners()
             for h in lst.hosts.exact}  # fmt: skip
    assert hosts == {"b.example"}


def test_what_cannot_be_served_is_warned_about_or_refused(tmp_path: Path) -> None:
    missing = _ingress("m", {"ingressClassName": "weft",
                             "tls": [{"hosts": ["x.example"], "secretName": "nope"}],
                             "rules": [_rule("x.example", "/", "shop", "grpc")]},
                       annotations={"nginx.ingress.kubernetes.io/server-snippet": "x"})  # fmt: skip
    snap = _snapshot(tmp_path, [*_service("shop", 80, 9), missing])
    assert any("TLS Secret 'nope' not found" in w for w in snap.warnings)
    assert any("Service 'shop' has no port 'grpc'" in w for w in snap.warnings)
    assert "Ingress shop/m: annotation nginx.ingress.kubernetes.io/server-snippet is not " \
        "supported (ignored)" in snap.warnings  # fmt: skip
    resource = _ingress("r", {"defaultBackend": {"resource": {"kind": "Bucket", "name": "b"}}})
    with pytest.raises(ConfigError, match="resource backends are not served"):
        _snapshot(tmp_path, [resource])
    with pytest.raises(ConfigError, match="needs rules or a defaultBackend"):
        _snapshot(tmp_path, [_ingress("e", {})])
    relative = _ingress("p", {"rules": [{"http": {"paths": [{"path": "foo", "pathType": "Exact",
        "backend": {"service": {"name": "shop", "port": {"number": 80}}}}]}}]})  # fmt: skip
    with pytest.raises(ConfigError, match="'foo' must start with /"):
        _snapshot(tmp_path, [relative])


async def test_meshctl_edge_serves_ingresses_on_the_ports_it_is_given(tmp_path: Path) -> None:
    from tests.support.net import free_port

    port, admin = free_port(), free_port()
    with EchoServer("shop") as shop:
        path = tmp_path / "ingress.yaml"
        path.write_text(yaml.safe_dump_all([
            *_service("shop", 80, shop.port),
            _ingress("main", {"ingressClassName": "weft",
                              "rules": [_rule("shop.example", "/", "shop", 80)]}),
        ]))  # fmt: skip
        cmd = [sys.executable, "-m", "mesh_ctl", "edge", "-f", str(path), "--admin-port",
               str(admin), "--ingress-address", "127.0.0.1", "--ingress-http-port", str(port),
               "--ingress-https-port", str(free_port())]  # fmt: skip
        async with trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                lambda task_status: trio.run_process(cmd, stderr=subprocess.PIPE, check=False,
                                                     task_status=task_status))  # fmt: skip
            assert proc.stderr is not None
            log = b""
            with trio.fail_after(20):
                while b"listening on 127.0.0.1:%d" % port not in log:
                    chunk = await proc.stderr.receive_some(4096)
                    assert chunk, log.decode()
                    log += chunk
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.get(f"http://127.0.0.1:{port}/", headers={"Host": "shop.example"})
            proc.terminate()
            nursery.cancel_scope.cancel()
    assert r.json()["pod"] == "shop"


NGINX = "nginx.ingress.kubernetes.io/"


async def test_ingress_nginx_annotations_as_users_rely_on_them(tmp_path: Path) -> None:
    import hashlib

    leaf = self_signed("secure.example")
    sha = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "secure-tls", "namespace": "shop"},
         "data": {"tls.crt": base64.b64encode(leaf.cert_pem).decode(),
                  "tls.key": base64.b64encode(leaf.key_pem).decode()}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",  # as ingress-nginx wants it
         "metadata": {"name": "users", "namespace": "shop"},
         "data": {"auth": base64.b64encode(f"carol:{{SHA}}{sha}\n".encode()).decode()}},
    ]  # fmt: skip

    def ing(
        name: str, host: str, service: str = "main", path: str = "/", **annotations: str
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"ingressClassName": "weft",
                                "rules": [_rule(host, path, service, 80)]}  # fmt: skip
        if host == "secure.example":
            spec["tls"] = [{"hosts": [host], "secretName": "secure-tls"}]
        return _ingress(name, spec, annotations={NGINX + k: v for k, v in annotations.items()})

    with EchoServer("main") as main, EchoServer("canary") as canary:
        docs += [*_service("main", 80, main.port), *_service("canary", 80, canary.port)]
        docs += [
            ing("redirect", "secure.example", **{"ssl-redirect": "true"}),
            ing("body", "body.example", **{"proxy-body-size": "1k"}),
            ing("slow", "slow.example", **{"proxy-read-timeout": "1"}),
            ing("office", "office.example", **{"whitelist-source-range": "10.0.0.0/8"}),
            ing("local", "local.example", **{"whitelist-source-range": "127.0.0.0/8"}),
            ing("rps", "rps.example", **{"limit-rps": "2"}),
            ing("cors", "cors.example", **{"enable-cors": "true",
                                           "cors-allow-origin": "https://app.example"}),
            ing("basic", "basic.example", **{"auth-type": "basic", "auth-secret": "users"}),
            ing("rewrite", "rw.example", path="/something(/|$)(.*)",
                **{"rewrite-target": "/$2"}),
            ing("split", "split.example"),
            ing("split-canary", "split.example", "canary", **{
                "canary": "true", "canary-weight": "100", "canary-by-header": "x-canary"}),
        ]  # fmt: skip
        server = _edge(tmp_path, docs)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            port = server.bound_port(ADDRESS, 80)
            url = f"http://{ADDRESS}:{port}"
            async with httpx.AsyncClient(timeout=10) as http:

                async def get(host: str, path: str = "/", **kw: Any) -> httpx.Response:
                    headers = {"Host": host, **kw.pop("headers", {})}
                    return await http.request(kw.pop("method", "GET"), url + path,
                                              headers=headers, **kw)  # fmt: skip

                r = await get("secure.example", "/cart?x=1")
                assert r.status_code == 308
                assert r.headers["location"] == "https://secure.example/cart?x=1"
                secure = await _get(server, "secure.example", "/cart", https=True)
                assert secure.json()["pod"] == "main"
                assert (
                    await get("body.example", method="POST", content=b"x" * 500)
                ).status_code == 200
                assert (
                    await get("body.example", method="POST", content=b"x" * 2000)
                ).status_code == 413
                assert (await get("slow.example", "/delay/3000")).status_code == 504
                assert (await get("office.example")).status_code == 403
                assert (await get("local.example")).status_code == 200
                # rewrite-target: the path regex's groups make the new path (case-insensitive)
                assert (await get("rw.example", "/something/new/path?q=1")).json()["path"] == \
                    "/new/path?q=1"  # fmt: skip
                assert (await get("rw.example", "/SOMETHING")).json()["path"] == "/"
                assert (await get("rw.example", "/other")).status_code == 404
                codes = [(await get("rps.example")).status_code for _ in range(4)]
                assert codes[:2] == [200, 200] and 429 in codes[2:]
                pre = await get(
                    "cors.example",
                    method="OPTIONS",
                    headers={
                        "Origin": "https://app.example",
                        "Access-Control-Request-Method": "GET",
                    },
                )
                assert pre.status_code == 204
                assert pre.headers["access-control-allow-origin"] == "https://app.example"
                assert (await get("basic.example")).status_code == 401
                ok = await get("basic.example", auth=("carol", "s3cret"))
                assert ok.status_code == 200 and ok.json()["pod"] == "main"
                # canary: by header first ("always", "never"), then its weight (100 here)
                assert (await get("split.example", headers={"x-canary": "never"})).json()[
                    "pod"
                ] == "main"
                assert (await get("split.example", headers={"x-canary": "always"})).json()[
                    "pod"
                ] == "canary"
                assert (await get("split.example")).json()["pod"] == "canary"
            nursery.cancel_scope.cancel()
    assert server.snapshot is not None
    assert not [w for w in server.snapshot.warnings if "annotation" in w], server.snapshot.warnings


def test_annotations_not_translated_or_not_understood_are_named(tmp_path: Path) -> None:
    odd = _ingress("odd", {"ingressClassName": "weft", "rules": [_rule("o.example", "/", "shop", 80)]},
                   annotations={NGINX + "proxy-body-size": "big", NGINX + "limit-rps": "many",
                                NGINX + "configuration-snippet": "more_set_headers x",
                                NGINX + "whitelist-source-range": "10.0.0.0/8,nope",
                                NGINX + "auth-type": "digest"})  # fmt: skip
    snap = _snapshot(tmp_path, [*_service("shop", 80, 9), odd])
    said = "\n".join(snap.warnings)
    for text in ("configuration-snippet is not supported (ignored)",
                 "proxy-body-size: 'big' is not a size like 8m",
                 "limit-rps: 'many' is not a whole number",
                 "whitelist-source-range: 'nope' is not a CIDR",
                 "auth-type: 'digest': only basic is translated"):  # fmt: skip
        assert f"Ingress shop/odd: annotation {NGINX}" in said and text in said, text


def test_an_ingress_with_the_longest_name_is_served(tmp_path: Path) -> None:
    """Names made from an Ingress's (its routes, its policies) stay within 253 characters."""
    name = "a" * 253
    long = _ingress(name, {"ingressClassName": "weft",
                           "rules": [_rule("long.example", "/", "shop", 80)]},
                    annotations={NGINX + "limit-rps": "5"})  # fmt: skip
    snap = _snapshot(tmp_path, [*_service("shop", 80, 9), long])
    hosts = {h for routes in snap.routers.values() for lst in routes.listeners()
             for h in lst.hosts.exact}  # fmt: skip
    assert hosts == {"long.example"}
    assert not snap.warnings, snap.warnings


async def test_backend_protocol_grpc_and_proxy_connect_timeout(tmp_path: Path) -> None:
    """backend-protocol: GRPC makes the edge speak HTTP/2 to a Service whose port says
    nothing of it (a grpcio client through the Ingress calls the shop's catalog);
    proxy-connect-timeout becomes the Service's connect timeout, unless the user's own
    policy for the Service sets it."""
    import grpc

    from tests.integration.test_grpc_json import catalog_server

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "shop" / "apps"))
    try:
        import catalog_pb2
        import catalog_pb2_grpc
    finally:
        sys.path.pop(0)
    rule = _rule("grpc.example", "/", "catalog", 80)
    with catalog_server() as app_port:
        docs = [
            *_service("catalog", 80, app_port), *_service("other", 80, 9),
            _ingress("catalog", {"ingressClassName": "weft", "rules": [rule]}, annotations={
                NGINX + "backend-protocol": "GRPC", NGINX + "proxy-connect-timeout": "3"}),
            _ingress("other", {"ingressClassName": "weft",
                               "rules": [_rule("o.example", "/", "other", 80)]},
                     annotations={NGINX + "proxy-connect-timeout": "7",
                                  NGINX + "backend-protocol": "FCGI"}),
            {"apiVersion": "weft.dev/v1alpha1", "kind": "BackendTrafficPolicy",
             "metadata": {"name": "mine", "namespace": "shop"},
             "spec": {"targetRef": {"kind": "Service", "name": "other"},
                      "timeout": {"connect": "2s"}}},
        ]  # fmt: skip
        server = _edge(tmp_path, docs)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            port = server.bound_port(ADDRESS, 80)

            def call() -> list[str]:
                with grpc.insecure_channel(f"{ADDRESS}:{port}", options=[
                        ("grpc.default_authority", "grpc.example")]) as channel:  # fmt: skip
                    stub = catalog_pb2_grpc.CatalogStub(channel)
                    reply = stub.List(catalog_pb2.ListRequest(), timeout=10)
                    return [i.sku for i in reply.items]

            assert await trio.to_thread.run_sync(call) == ["tea", "mug", "teapot"]
            nursery.cancel_scope.cancel()
    snap = server.snapshot
    assert snap is not None
    clusters = {name: spec for name, spec in snap.clusters.items() if "shop/" in name}
    assert clusters["shop/catalog:80+grpc"].protocol == "GRPC"
    assert clusters["shop/catalog:80+grpc"].connect_timeout_s == 3
    assert clusters["shop/other:80"].connect_timeout_s == 2  # the user's policy wins
    said = "\n".join(snap.warnings)
    assert "proxy-connect-timeout: Service other has its connect timeout from a " \
        "BackendTrafficPolicy for it (ignored)" in said  # fmt: skip
    assert "backend-protocol: 'FCGI': HTTP, HTTPS, GRPC and GRPCS are translated" in said
