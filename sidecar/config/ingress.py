"""Kubernetes Ingress served as Gateway API resources (pure): the Ingresses of Weft's class
become one Gateway (`weft-system/weft-ingress`, HTTP on port 80, HTTPS on 443 per TLS host
with the Ingress's Secret) and an HTTPRoute per rule, which compile like any others.

Ingress semantics kept on the way (networking.k8s.io/v1):
- `Exact` is an exact path; `Prefix` matches whole path elements and ignores a trailing
  slash (`/aaa/bbb/` matches `/aaa/bbb`); `ImplementationSpecific` is served as `Prefix`.
- Among the paths that match, the longest wins and `Exact` beats `Prefix` — the Gateway API
  precedence gives the same order.
- A wildcard host `*.foo.com` matches one leading label (`bar.foo.com`, not
  `baz.bar.foo.com`), where a Gateway API hostname would match several.
- `defaultBackend` takes what no rule matches, any host.
- A backend names a Service port by number or by name (resolved through the Service).

Which Ingresses are Weft's: `spec.ingressClassName` (or the legacy
`kubernetes.io/ingress.class` annotation) `weft`, or an IngressClass whose controller is
`weft.dev/ingress-controller`; one without a class when such an IngressClass is the
cluster's default, or when the files hold no IngressClass at all (a laptop's files).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sidecar.config import resources as r

CLASS = "weft"
CONTROLLER = "weft.dev/ingress-controller"
NAMESPACE, GATEWAY = "weft-system", "weft-ingress"
GATEWAY_API = "gateway.networking.k8s.io/v1"
NGINX = "nginx.ingress.kubernetes.io/"  # ingress-nginx's annotations: none served yet


@dataclass(frozen=True)
class IngressListeners:
    """Where the edge serves Ingresses (`meshctl edge --ingress-*`)."""

    address: str = "0.0.0.0"
    http_port: int = 80
    https_port: int = 443


def translate(
    resources: list[r.Resource], listeners: IngressListeners, gateway_class: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """The Gateway API documents that serve the Ingresses of Weft's class, and warnings
    (a backend port that names nothing, a TLS Secret that is not there)."""
    classes = [x for x in resources if isinstance(x, r.IngressClass)]
    ours = {c.meta.name for c in classes if c.controller == CONTROLLER} | {CLASS}
    default = any(c.default and c.controller == CONTROLLER for c in classes)
    ingresses = [
        x for x in resources if isinstance(x, r.Ingress)
        and (x.class_name in ours if x.class_name else default or not classes)
    ]  # fmt: skip
    if not ingresses:
        return [], []
    services = {(x.meta.namespace, x.meta.name): x for x in resources if isinstance(x, r.Service)}
    secrets = {(x.meta.namespace, x.meta.name) for x in resources if isinstance(x, r.Secret)}
    warnings: list[str] = []
    listeners_doc: list[dict[str, Any]] = [
        {"name": "http", "port": listeners.http_port, "protocol": "HTTP",
         "allowedRoutes": {"namespaces": {"from": "All"}}},
    ]  # fmt: skip
    docs: list[dict[str, Any]] = []
    granted: set[str] = set()
    served: set[str | None] = set()  # HTTPS hostnames with a listener (the first Ingress's)
    for ing in sorted(ingresses, key=lambda x: (x.meta.creation_timestamp, x.meta.namespace,
                                                 x.meta.name)):  # fmt: skip
        ns, name = ing.meta.namespace, ing.meta.name
        warnings += [f"Ingress {ns}/{name}: annotation {key} is not supported (ignored)"
                     for key in sorted(ing.meta.annotations) if key.startswith(NGINX)]  # fmt: skip
        for hosts, secret in ing.tls:
            if (ns, secret) not in secrets:
                warnings.append(f"Ingress {ns}/{name}: TLS Secret {secret!r} not found; "
                                "HTTPS for its hosts is not served")  # fmt: skip
                continue
            for host in [h for h in hosts or (None,) if h not in served]:
                served.add(host)
                listener: dict[str, Any] = {
                    "name": f"https-{len(listeners_doc)}", "port": listeners.https_port,
                    "protocol": "HTTPS", "allowedRoutes": {"namespaces": {"from": "All"}},
                    "tls": {"mode": "Terminate", "certificateRefs": [
                        {"kind": "Secret", "name": secret, "namespace": ns}]},
                }  # fmt: skip
                if host is not None:
                    listener["hostname"] = host
                listeners_doc.append(listener)
            if ns not in granted:
                granted.add(ns)
                docs.append(_grant(ns))
        routes = [(rule.host, rule.paths) for rule in ing.rules if rule.paths]
        if ing.default_backend is not None:
            routes.append((None, (r.IngressPath(path="/", path_type="Prefix",
                                                backend=ing.default_backend),)))  # fmt: skip
        for i, (host, paths) in enumerate(routes):
            rules = []
            for p in paths:
                port = _port(services.get((ns, p.backend.service)), p.backend.port)
                if port is None:
                    svc = p.backend.service
                    warnings.append(f"Ingress {ns}/{name}: Service {svc!r} has no port "
                                    f"{p.backend.port!r}; {p.path} is not served")  # fmt: skip
                    continue
                rules.append({
                    "matches": [{"path": _path(p)}],
                    "backendRefs": [{"name": p.backend.service, "port": port}],
                })  # fmt: skip
            if rules:
                docs.append({
                    "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
                    "metadata": {"name": f"ingress-{name}-{i}", "namespace": ns},
                    "spec": {"parentRefs": [{"name": GATEWAY, "namespace": NAMESPACE}],
                             **({"hostnames": [host]} if host else {}), "rules": rules},
                })  # fmt: skip
    docs.insert(0, {
        "apiVersion": GATEWAY_API, "kind": "Gateway",
        "metadata": {"name": GATEWAY, "namespace": NAMESPACE},
        "spec": {"gatewayClassName": gateway_class,
                 "addresses": [{"type": "IPAddress", "value": listeners.address}],
                 "listeners": listeners_doc},
    })  # fmt: skip
    return docs, warnings


def served(
    resources: list[r.Resource], listeners: IngressListeners, gateway_class: str
) -> tuple[list[r.Resource], list[str]]:
    """`translate`, parsed like any file's documents; an Ingress's routes match a wildcard
    host on one leading label."""
    from sidecar.config.parse import parse_resource

    docs, warnings = translate(resources, listeners, gateway_class)
    out: list[r.Resource] = []
    for doc in docs:
        res = parse_resource(doc, "the Ingress translation")
        if isinstance(res, r.HTTPRoute):
            res = dataclasses.replace(res, single_label_wildcards=True)
        out.append(res)
    return out, warnings


def _path(p: r.IngressPath) -> dict[str, str]:
    if p.path_type == "Exact":
        return {"type": "Exact", "value": p.path}
    value = p.path.rstrip("/") or "/"  # Prefix ignores a trailing slash
    return {"type": "PathPrefix", "value": value}


def _port(service: r.Service | None, port: int | str) -> int | None:
    """A Service port's number from an Ingress backend's number or name."""
    if isinstance(port, int):
        return port if service is None or any(p.port == port for p in service.ports) else None
    if service is None:
        return None
    return next((p.port for p in service.ports if p.name == port), None)


def _grant(namespace: str) -> dict[str, Any]:
    """Lets the ingress Gateway use the TLS Secrets of a namespace's Ingresses."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
        "metadata": {"name": "weft-ingress-tls", "namespace": namespace},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                           "namespace": NAMESPACE}],
                 "to": [{"group": "", "kind": "Secret"}]},
    }  # fmt: skip
