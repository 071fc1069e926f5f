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

import base64
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from sidecar.config import ingress_nginx as nginx
from sidecar.config import resources as r

CLASS = "weft"
CONTROLLER = "weft.dev/ingress-controller"
NAMESPACE, GATEWAY = "weft-system", "weft-ingress"
GATEWAY_API = "gateway.networking.k8s.io/v1"


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
    (a backend port that names nothing, a TLS Secret that is not there, an annotation not
    translated)."""
    classes = [x for x in resources if isinstance(x, r.IngressClass)]
    ours = {c.meta.name for c in classes if c.controller == CONTROLLER} | {CLASS}
    default = any(c.default and c.controller == CONTROLLER for c in classes)
    ingresses = [
        x for x in resources if isinstance(x, r.Ingress)
        and (x.class_name in ours if x.class_name else default or not classes)
    ]  # fmt: skip
    if not ingresses:
        return [], []
    t = _Translation(resources, listeners)
    ingresses.sort(key=lambda x: (x.meta.creation_timestamp, x.meta.namespace, x.meta.name))
    settings: dict[tuple[str, str], nginx.NginxSettings] = {}
    for ing in ingresses:
        where = f"Ingress {ing.meta.namespace}/{ing.meta.name}"
        settings[_key(ing)], notes = nginx.parse(dict(ing.meta.annotations), ing.meta.namespace,
                                                 where)  # fmt: skip
        t.warnings += notes
    for ing in ingresses:  # canaries first: they change the others' rules
        if settings[_key(ing)].canary is not None:
            t.canary(ing, settings[_key(ing)])
    for ing in ingresses:
        if settings[_key(ing)].canary is None:
            t.ingress(ing, settings[_key(ing)])
    t.unused_canaries()
    gateway = {
        "apiVersion": GATEWAY_API, "kind": "Gateway",
        "metadata": {"name": GATEWAY, "namespace": NAMESPACE},
        "spec": {"gatewayClassName": gateway_class,
                 "addresses": [{"type": "IPAddress", "value": listeners.address}],
                 "listeners": t.listeners},
    }  # fmt: skip
    return [gateway, *t.docs], t.warnings


Path = tuple[str | None, str, str]  # (host, path, pathType): where a canary joins


class _Translation:
    def __init__(self, resources: list[r.Resource], listeners: IngressListeners) -> None:
        self.services = {(x.meta.namespace, x.meta.name): x for x in resources
                         if isinstance(x, r.Service)}  # fmt: skip
        self.secrets = {(x.meta.namespace, x.meta.name): x for x in resources
                        if isinstance(x, r.Secret)}  # fmt: skip
        self.ports = listeners
        self.listeners: list[dict[str, Any]] = [
            {"name": "http", "port": listeners.http_port, "protocol": "HTTP",
             "allowedRoutes": {"namespaces": {"from": "All"}}},
        ]  # fmt: skip
        self.https: dict[str | None, str] = {}  # TLS host -> its listener (the first Ingress's)
        self.docs: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.granted: set[str] = set()
        self.canaries: dict[Path, tuple[str, dict[str, Any], nginx.Canary]] = {}
        # (namespace, Service) -> (the Ingress, seconds) of a proxy-connect-timeout made
        self.connect_timeouts: dict[tuple[str, str], tuple[str, int]] = {}
        self.service_policies = {(x.meta.namespace, x.target) for x in resources
                                 if isinstance(x, r.BackendTrafficPolicy) and x.target}  # fmt: skip
        # Services that have TLS: the user's BackendTLSPolicies, and those made here
        self.tls_services = {
            (x.meta.namespace, name)
            for x in resources
            if isinstance(x, r.BackendTLSPolicy)
            for name, _ in x.targets
        }
        self.joined: set[Path] = set()

    def canary(self, ing: r.Ingress, settings: nginx.NginxSettings) -> None:
        """Remember where a canary Ingress's backends join the other Ingress's rules."""
        assert settings.canary is not None
        where = f"Ingress {ing.meta.namespace}/{ing.meta.name}"
        for host, paths in _routes(ing):
            for p in paths:
                ref = self._backend(ing, p, settings)
                if ref is not None:
                    key = (host, p.path, p.path_type)
                    self.canaries[key] = (where, ref, settings.canary)

    def unused_canaries(self) -> None:
        for key, (where, _, _) in self.canaries.items():
            if key not in self.joined:
                self.warnings.append(f"{where}: a canary with no Ingress serving "
                                     f"{key[0] or '*'}{key[1]} to join; not served")  # fmt: skip

    def ingress(self, ing: r.Ingress, settings: nginx.NginxSettings) -> None:
        ns, name = ing.meta.namespace, ing.meta.name
        tls_hosts = self._tls(ing)
        names = []
        for i, (host, paths) in enumerate(_routes(ing)):
            rules = [rule for p in paths for rule in self._rules(ing, host, p, settings)]
            if not rules:
                continue
            route_name = _derived(f"ingress-{name}-{i}")
            names.append(route_name)
            parents = [{"name": GATEWAY, "namespace": NAMESPACE}]
            hostnames = {"hostnames": [host]} if host else {}
            secure = [self.https[h] for h in ([host] if host else tls_hosts) if h in self.https]
            if settings.ssl_redirect and secure:  # HTTP answers with a redirect to HTTPS
                redirect = [{**rule, "backendRefs": [], "filters": [{
                    "type": "RequestRedirect",
                    "requestRedirect": {"scheme": "https", "statusCode": 308}}]}
                    for rule in rules]  # fmt: skip
                self.docs.append(_route(_derived(f"{route_name}-redirect"), ns,
                                        [{**parents[0], "sectionName": "http"}], hostnames,
                                        redirect))  # fmt: skip
                parents = [{**parents[0], "sectionName": s} for s in dict.fromkeys(secure)]
            self.docs.append(_route(route_name, ns, parents, hostnames, rules))
        if names:
            self._policies(ing, settings, names)

    def _tls(self, ing: r.Ingress) -> list[str | None]:
        """HTTPS listeners for the Ingress's TLS hosts; the hosts."""
        ns, name = ing.meta.namespace, ing.meta.name
        hosts_out: list[str | None] = []
        for hosts, secret in ing.tls:
            if (ns, secret) not in self.secrets:
                self.warnings.append(f"Ingress {ns}/{name}: TLS Secret {secret!r} not found; "
                                     "HTTPS for its hosts is not served")  # fmt: skip
                continue
            for host in hosts or (None,):
                hosts_out.append(host)
                if host in self.https:
                    continue
                self.https[host] = listener_name = f"https-{len(self.listeners)}"
                listener: dict[str, Any] = {
                    "name": listener_name, "port": self.ports.https_port, "protocol": "HTTPS",
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                    "tls": {"mode": "Terminate", "certificateRefs": [
                        {"kind": "Secret", "name": secret, "namespace": ns}]},
                }  # fmt: skip
                if host is not None:
                    listener["hostname"] = host
                self.listeners.append(listener)
            if ns not in self.granted:
                self.granted.add(ns)
                self.docs.append(_grant(ns))
        return hosts_out

    def _backend(
        self, ing: r.Ingress, p: r.IngressPath, settings: nginx.NginxSettings
    ) -> dict[str, Any] | None:
        ns = ing.meta.namespace
        port = _port(self.services.get((ns, p.backend.service)), p.backend.port)
        if port is None:
            svc = p.backend.service
            self.warnings.append(f"Ingress {ns}/{ing.meta.name}: Service {svc!r} has no port "
                                 f"{p.backend.port!r}; {p.path} is not served")  # fmt: skip
            return None
        ref: dict[str, Any] = {"name": p.backend.service, "port": port}
        if settings.backend_protocol is not None:  # backend-protocol: GRPC speaks HTTP/2
            ref["protocol"] = settings.backend_protocol
        if settings.connect_timeout_s:
            self._connect_timeout(ing, p.backend.service, settings.connect_timeout_s)
        if settings.backend_tls:
            self._backend_tls(ing, p.backend.service)
        return ref

    def _connect_timeout(self, ing: r.Ingress, service: str, seconds: int) -> None:
        """proxy-connect-timeout: connections are per Service in Weft, so the timeout is a
        BackendTrafficPolicy on the Service (every route to it). A policy of the user's for
        the Service, or another Ingress's timeout for it, wins, and this one is a warning."""
        key = (ing.meta.namespace, service)
        where = f"Ingress {ing.meta.namespace}/{ing.meta.name}"
        owner = self.connect_timeouts.get(key)
        if owner == (where, seconds):
            return
        if owner is not None or key in self.service_policies:
            by = owner[0] if owner is not None else "a BackendTrafficPolicy for it"
            self.warnings.append(f"{where}: annotation {nginx.PREFIX}proxy-connect-timeout: "
                                 f"Service {service} has its connect timeout from {by} "
                                 "(ignored)")  # fmt: skip
            return
        self.connect_timeouts[key] = (where, seconds)
        self.docs.append({
            "apiVersion": "weft.dev/v1alpha1", "kind": "BackendTrafficPolicy",
            "metadata": {"name": _derived(f"weft-ingress-{ing.meta.name}-{service}"),
                         "namespace": ing.meta.namespace},
            "spec": {"targetRef": {"kind": "Service", "name": service},
                     "timeout": {"connect": _duration(seconds)}},
        })  # fmt: skip

    def _backend_tls(self, ing: r.Ingress, service: str) -> None:
        """backend-protocol HTTPS or GRPCS: TLS to the Service, unverified as ingress-nginx
        does by default (a weft.dev BackendTLSPolicy with insecureSkipVerify), unless a
        BackendTLSPolicy of the user's covers the Service (then that one, verified)."""
        key = (ing.meta.namespace, service)
        if key in self.tls_services:
            return
        self.tls_services.add(key)
        self.docs.append({
            "apiVersion": "weft.dev/v1alpha1", "kind": "BackendTLSPolicy",
            "metadata": {"name": _derived(f"weft-ingress-{service}-tls"),
                         "namespace": ing.meta.namespace},
            "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": service}],
                     "validation": {"hostname": service, "insecureSkipVerify": True}},
        })  # fmt: skip

    def _rules(
        self, ing: r.Ingress, host: str | None, p: r.IngressPath, settings: nginx.NginxSettings
    ) -> list[dict[str, Any]]:
        """The route rules of one Ingress path: a canary's header rules first."""
        ref = self._backend(ing, p, settings)
        if ref is None:
            return []
        match: dict[str, Any] = {"path": _path(p)}
        extra: dict[str, Any] = {}
        if settings.use_regex:  # as ingress-nginx: a case-insensitive regex, from the start
            match = {"path": {"type": "RegularExpression", "value": f"(?i){p.path}.*"}}
        if settings.rewrite_target:  # the whole path replaced; $N: the path regex's groups
            regex = {"pattern": f"(?i)^(?:{p.path}).*", "substitution": settings.rewrite_target}
            extra["filters"] = [{"type": "URLRewrite", "urlRewrite": {"path": {
                "type": "ReplaceRegexMatch", "replaceRegexMatch": regex}}}]  # fmt: skip
        if settings.read_timeout_s:
            extra["timeouts"] = {"backendRequest": _duration(settings.read_timeout_s)}
        if settings.max_body:
            extra.setdefault("filters", []).append({"type": "ExtensionRef", "extensionRef": {
                "group": "weft.dev", "kind": "RequestValidation",
                "name": _derived(f"weft-ingress-{ing.meta.name}")}})  # fmt: skip
        key = (host, p.path, p.path_type)
        joined = self.canaries.get(key)
        if joined is None:
            return [{"matches": [match], "backendRefs": [ref], **extra}]
        self.joined.add(key)
        _, canary_ref, c = joined
        rules = []
        if c.header:
            value = c.header_value or "always"
            rules.append({"matches": [{**match, "headers": [{"name": c.header, "value": value}]}],
                          "backendRefs": [canary_ref], **extra})  # fmt: skip
            if not c.header_value:
                never = {**match, "headers": [{"name": c.header, "value": "never"}]}
                rules.append({"matches": [never], "backendRefs": [ref], **extra})
        refs = [{**ref, "weight": c.total - c.weight}]
        if c.weight:
            refs.append({**canary_ref, "weight": c.weight})
        rules.append({"matches": [match], "backendRefs": refs, **extra})
        return rules

    def _policies(self, ing: r.Ingress, settings: nginx.NginxSettings, routes: list[str]) -> None:
        """One SecurityPolicy (its sections apply whole), a BackendTrafficPolicy and a
        RequestValidation for what the annotations asked, on the Ingress's routes."""
        ns, name = ing.meta.namespace, ing.meta.name
        meta = {"name": _derived(f"weft-ingress-{name}"), "namespace": ns}
        targets = [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": n}
                   for n in routes]  # fmt: skip
        if settings.max_body:
            limit = {"maxBodyBytes": settings.max_body}
            self.docs.append({"apiVersion": "weft.dev/v1alpha1", "kind": "RequestValidation",
                              "metadata": meta, "spec": limit})  # fmt: skip
        if settings.limit_rps:
            self.docs.append({
                "apiVersion": "weft.dev/v1alpha1", "kind": "BackendTrafficPolicy", "metadata": meta,
                "spec": {"targetRefs": targets, "rateLimit": {"type": "Local", "local": {"rules": [{
                    "clientSelectors": [{"sourceCIDR": {"type": "Distinct", "value": "0.0.0.0/0"}}],
                    "limit": {"requests": settings.limit_rps, "unit": "Second"}}]}}},
            })  # fmt: skip
        if not settings.security:
            return
        spec: dict[str, Any] = {"targetRefs": targets}
        if settings.cors is not None:
            c = settings.cors
            spec["cors"] = {"allowOrigins": c.origins, "allowMethods": c.methods,
                            "allowHeaders": c.headers, "allowCredentials": c.credentials,
                            "maxAge": _duration(c.max_age_s),
                            **({"exposeHeaders": c.expose} if c.expose else {})}  # fmt: skip
        if settings.allow_cidrs:
            spec["authorization"] = {"defaultAction": "Deny", "rules": [
                {"name": "whitelist-source-range", "action": "Allow",
                 "principal": {"clientCIDRs": settings.allow_cidrs}}]}  # fmt: skip
        if settings.basic_auth_secret is not None:
            users = self._htpasswd(ing, settings.basic_auth_secret)
            if users is not None:
                spec["basicAuth"] = {"users": {"name": users}}
        self.docs.append({"apiVersion": "weft.dev/v1alpha1", "kind": "SecurityPolicy",
                          "metadata": meta, "spec": spec})  # fmt: skip

    def _htpasswd(self, ing: r.Ingress, ref: tuple[str, str]) -> str | None:
        """ingress-nginx keeps htpasswd lines under the Secret's `auth`; Weft reads
        `.htpasswd`: a copy under that key, in the Ingress's namespace."""
        secret = self.secrets.get(ref)
        data = dict(secret.data) if secret is not None else {}
        if "auth" not in data:
            self.warnings.append(f"Ingress {ing.meta.namespace}/{ing.meta.name}: auth-secret "
                                 f"{ref[0]}/{ref[1]} with key `auth` not found; nobody is let "
                                 "in")  # fmt: skip
        name = _derived(f"weft-ingress-{ing.meta.name}-auth")
        self.docs.append({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": ing.meta.namespace},
            "data": {".htpasswd": base64.b64encode(data.get("auth", b"")).decode()},
        })  # fmt: skip
        return name


def _derived(name: str) -> str:
    """A name made from an Ingress's, kept within Kubernetes' 253 characters (a long one
    is cut and told apart by a digest of the whole)."""
    if len(name) <= 253:
        return name
    return f"{name[:236]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _duration(seconds: int) -> str:
    """Seconds as a Gateway API duration ("480h", "1h1m1s"; each part at most 5 digits)."""
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v]
    return "".join(parts) or "0s"


def _key(ing: r.Ingress) -> tuple[str, str]:
    return ing.meta.namespace, ing.meta.name


def _routes(ing: r.Ingress) -> list[tuple[str | None, tuple[r.IngressPath, ...]]]:
    """(host, paths) of each rule, the default backend last (any host, every path)."""
    routes = [(rule.host, rule.paths) for rule in ing.rules if rule.paths]
    if ing.default_backend is not None:
        routes.append((None, (r.IngressPath(path="/", path_type="Prefix",
                                            backend=ing.default_backend),)))  # fmt: skip
    return routes


def _route(
    name: str, ns: str, parents: list[dict[str, Any]], hostnames: dict[str, Any],
    rules: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    return {"apiVersion": GATEWAY_API, "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": parents, **hostnames, "rules": rules}}  # fmt: skip


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
