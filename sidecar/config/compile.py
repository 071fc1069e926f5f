"""Compile validated resources into one immutable Snapshot (Gateway API semantics).

Route attachment (parentRefs, sectionName, port, allowedRoutes, hostname intersection),
backend resolution (Services, EndpointSlices, ReferenceGrants) and rule precedence are
decided here, once per configuration; the data path only does compiled lookups.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sidecar.config import resources as r
from sidecar.config.attach_policies import PolicyFilters
from sidecar.config.certs import CertificatePair, CertKey, ClientValidation
from sidecar.config.client_tls import client_validation
from sidecar.config.headerops import HeaderOps
from sidecar.config.model import (
    Backend,
    ClusterSpec,
    Endpoint,
    Limits,
    ListenerKey,
    Mirror,
    RedirectAction,
    RetryPolicy,
    RewriteAction,
    RouteAction,
)
from sidecar.config.parse_backend_tls import upstream_tls
from sidecar.config.parse_policy import NON_IDEMPOTENT_ANNOTATION
from sidecar.config.snapshot import Snapshot
from sidecar.config.split import SmoothWeighted
from sidecar.filters.aggregate import AggregateFilter
from sidecar.filters.chain import Filter, FixedReply, LocalReply
from sidecar.filters.cors import CorsFilter
from sidecar.filters.transform import TransformFilter
from sidecar.filters.validate import ValidationFilter
from sidecar.http.router import CompiledMatch, Condition, HostTable, ListenerRoutes, PortRouter
from sidecar.proxy.egress import EgressPolicy, applying, compiled

DETECT = "weft.dev/Detect"  # HTTP(S) routes, TLS passthrough and a TCP fallback on one port
FORWARD_PROXY = "weft.dev/ForwardProxy"  # clients' own proxy: CONNECT and absolute-form
_HTTP_KINDS = ("HTTPRoute", "GRPCRoute")
# Which route kinds each listener protocol serves.
ROUTE_KINDS = {
    "HTTP": _HTTP_KINDS,
    "HTTPS": _HTTP_KINDS,
    "TCP": ("TCPRoute",),
    "TLS": ("TLSRoute",),
    DETECT: (*_HTTP_KINDS, "TCPRoute", "TLSRoute"),
    FORWARD_PROXY: (),  # no routes: an EgressPolicy says where its clients may go
}
# certificateRefs kinds: (group, kind) -> the kind's key in the certificate map
_CERT_KINDS = {("", "Secret"): "Secret", (r.WEFT_GROUP, "TLSCertificate"): "TLSCertificate"}
DEFAULT_GATEWAY_CLASS = "weft"


@dataclass(slots=True)
class _Index:
    namespaces: dict[str, r.Namespace] = field(default_factory=dict)
    gateways: list[r.Gateway] = field(default_factory=list)
    routes: list[r.HTTPRoute] = field(default_factory=list)
    streams: list[r.StreamRoute] = field(default_factory=list)
    policies: list[r.AuthorizationPolicy] = field(default_factory=list)
    security: list[r.SecurityPolicy] = field(default_factory=list)
    secrets: dict[tuple[str, str], r.Secret] = field(default_factory=dict)  # Opaque
    rate_limits: list[r.BackendTrafficPolicy] = field(default_factory=list)  # route-level
    traffic: dict[tuple[str, str], r.BackendTrafficPolicy] = field(default_factory=dict)
    grants: list[r.ReferenceGrant] = field(default_factory=list)
    validations: dict[tuple[str, str], r.RequestValidation] = field(default_factory=dict)
    transforms: dict[tuple[str, str], r.Transform] = field(default_factory=dict)
    aggregations: dict[tuple[str, str], r.Aggregation] = field(default_factory=dict)
    transcoders: dict[tuple[str, str], r.GrpcJsonTranscoder] = field(default_factory=dict)
    backend_tls: dict[tuple[str, str], list[r.BackendTLSPolicy]] = field(default_factory=dict)
    egress: list[r.EgressPolicy] = field(default_factory=list)
    # (namespace, route) -> the PythonFilters that target it, by name, in order
    python: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    client_policies: list[r.ClientTrafficPolicy] = field(default_factory=list)
    config_maps: dict[tuple[str, str], r.ConfigMap] = field(default_factory=dict)
    services: dict[tuple[str, str], r.Service] = field(default_factory=dict)
    slices: dict[tuple[str, str], list[r.EndpointSlice]] = field(default_factory=dict)


def compile_snapshot(
    resources: Iterable[r.Resource],
    *,
    version: int,
    gateway_class: str = DEFAULT_GATEWAY_CLASS,
    limits: Limits | None = None,
    certificates: Mapping[CertKey, CertificatePair] | None = None,
    extensions: Mapping[tuple[str, str], Filter] | None = None,
) -> Snapshot:
    """`certificates` holds the checked material of TLS Secrets and TLSCertificates;
    `extensions` the loaded PythonFilters, by (namespace, name)."""
    idx = _Index()
    for res in resources:
        if isinstance(res, r.Namespace):
            idx.namespaces[res.meta.name] = res
        elif isinstance(res, r.Gateway):
            idx.gateways.append(res)
        elif isinstance(res, r.HTTPRoute):
            idx.routes.append(res)
        elif isinstance(res, r.StreamRoute):
            idx.streams.append(res)
        elif isinstance(res, r.AuthorizationPolicy):
            idx.policies.append(res)
        elif isinstance(res, r.SecurityPolicy):
            idx.security.append(res)
        elif isinstance(res, r.EgressPolicy):
            idx.egress.append(res)
        elif isinstance(res, r.PythonFilter):
            for route_name in res.targets:
                idx.python.setdefault((res.meta.namespace, route_name), []).append(res.meta.name)
        elif isinstance(res, r.RequestValidation):
            idx.validations[(res.meta.namespace, res.meta.name)] = res
        elif isinstance(res, r.Transform):
            idx.transforms[(res.meta.namespace, res.meta.name)] = res
        elif isinstance(res, r.Aggregation):
            idx.aggregations[(res.meta.namespace, res.meta.name)] = res
        elif isinstance(res, r.GrpcJsonTranscoder):
            idx.transcoders[(res.meta.namespace, res.meta.name)] = res
        elif isinstance(res, r.BackendTLSPolicy):
            for service, _ in res.targets:
                idx.backend_tls.setdefault((res.meta.namespace, service), []).append(res)
        elif isinstance(res, r.ClientTrafficPolicy):
            idx.client_policies.append(res)
        elif isinstance(res, r.ConfigMap):
            idx.config_maps[(res.meta.namespace, res.meta.name)] = res
        elif isinstance(res, r.Secret) and res.secret_type == "Opaque":
            idx.secrets[(res.meta.namespace, res.meta.name)] = res
        elif isinstance(res, r.BackendTrafficPolicy) and res.targets:
            idx.rate_limits.append(res)
        elif isinstance(res, r.BackendTrafficPolicy):
            key = (res.meta.namespace, res.target)
            other = idx.traffic.get(key)
            if other is None or _route_age(res) < _route_age(other):  # the oldest wins
                idx.traffic[key] = res
        elif isinstance(res, r.ReferenceGrant):
            idx.grants.append(res)
        elif isinstance(res, r.Service):
            idx.services[(res.meta.namespace, res.meta.name)] = res
        elif isinstance(res, r.EndpointSlice):
            idx.slices.setdefault((res.meta.namespace, res.service_name), []).append(res)
    compiler = _Compiler(idx, gateway_class, certificates or {}, extensions or {})
    return compiler.build(version, limits or Limits())


@dataclass(slots=True, kw_only=True)
class _Attached:
    gateway: r.Gateway
    listener: r.Listener
    routes: HostTable
    certificates: tuple[CertificatePair, ...] = ()
    client: ClientValidation | None = None
    tcp: RouteAction | None = None  # the TCPRoute (oldest wins)
    sni: dict[str, RouteAction] = field(default_factory=dict)  # TLSRoute hostname -> action


class _Compiler:
    def __init__(
        self,
        idx: _Index,
        gateway_class: str,
        certificates: Mapping[CertKey, CertificatePair],
        extensions: Mapping[tuple[str, str], Filter],
    ) -> None:
        self.idx = idx
        self.gateway_class = gateway_class
        self.certificates = certificates
        self.extensions = extensions
        self.clusters: dict[str, ClusterSpec] = {}
        self.warnings: list[str] = []
        self.validators: dict[tuple[str, str], ValidationFilter] = {}  # one per resource
        self.policies = PolicyFilters(
            idx.security, idx.rate_limits, idx.secrets, self.warnings,
            lambda ref, ns: self._resolve(ref, ns, "SecurityPolicy"),
        )  # fmt: skip

    # -- top level ----------------------------------------------------------------------
    def build(self, version: int, limits: Limits) -> Snapshot:
        served = [g for g in self.idx.gateways if g.class_name in (None, self.gateway_class)]
        attached: dict[tuple[str, str, str], _Attached] = {}
        for gw in served:
            for lst in gw.listeners:
                if lst.protocol not in ROUTE_KINDS:
                    self.warnings.append(
                        f"Gateway {_nn(gw.meta)} listener {lst.name}: protocol {lst.protocol} "
                        "is not supported; listener not served"
                    )
                    continue
                if lst.protocol == "TLS" and lst.tls_mode != "Passthrough":
                    self.warnings.append(
                        f"Gateway {_nn(gw.meta)} listener {lst.name}: protocol TLS is served "
                        "with tls.mode Passthrough only; listener not served"
                    )
                    continue
                certs: tuple[CertificatePair, ...] = ()
                client = None
                if lst.protocol == "HTTPS":
                    found = self._certificates(gw, lst)
                    if found is None:
                        continue
                    certs = found
                    client = client_validation(gw, lst, self.idx.client_policies,
                                               self._ca_bundle, self.warnings)  # fmt: skip
                    if client is False:
                        continue
                key = (gw.meta.namespace, gw.meta.name, lst.name)
                attached[key] = _Attached(
                    gateway=gw, listener=lst, routes=HostTable(), certificates=certs,
                    client=client or None,
                )  # fmt: skip
        for route in sorted(self.idx.routes, key=_route_age):
            self._attach(route, attached)
        for stream in sorted(self.idx.streams, key=_route_age):
            self._attach_stream(stream, attached)
        routers: dict[ListenerKey, PortRouter] = {}
        for att in attached.values():
            att.routes.seal()
            lkey = ListenerKey(address=_bind_address(att.gateway), port=att.listener.port)
            router = routers.setdefault(lkey, PortRouter(protocol=att.listener.protocol))
            name = f"{_nn(att.gateway.meta)}/{att.listener.name}"
            if att.listener.protocol == FORWARD_PROXY and router.egress is None:
                router.egress = self._egress(att.gateway, att.listener.name)
            if router.protocol != att.listener.protocol:
                self.warnings.append(
                    f"Gateway listener {name}: protocol {att.listener.protocol} conflicts with "
                    f"{router.protocol} on port {att.listener.port}; listener not served"
                )
                continue
            router.add(
                ListenerRoutes(
                    name=name,
                    hostname=att.listener.hostname,
                    port=att.listener.port,
                    hosts=att.routes,
                    certificates=att.certificates,
                    client=att.client,
                    tcp=att.tcp,
                    sni=att.sni,
                )
            )
        return Snapshot(
            version=version,
            routers=routers,
            clusters=dict(self.clusters),
            limits=limits,
            warnings=tuple(self.warnings),
            authz=tuple(p.policy for p in self.idx.policies),
            limiters=tuple(self.policies.limiters.values()),
            jwks=tuple(self.policies.remotes),
            global_limiters=tuple(self.policies.global_limiters.values()),
            caches=tuple(self.policies.caches.values()),
        )

    def _egress(self, gw: r.Gateway, listener: str) -> EgressPolicy:
        """The EgressPolicy of a forward-proxy listener; without one, nothing is allowed."""
        policy = applying(self.idx.egress, gw, listener)
        if policy is None:
            self.warnings.append(f"Gateway {_nn(gw.meta)} listener {listener}: forward proxy "
                                 "with no EgressPolicy: every destination is refused")  # fmt: skip
            return EgressPolicy()
        auth = None
        if policy.users is not None:
            auth = self.policies.basic_auth(policy.meta.namespace, policy.users,
                                            _nn(policy.meta))  # fmt: skip
        return compiled(policy, auth)

    def _ca_bundle(self, kind: str, ns: str, name: str) -> bytes | None:
        """`ca.crt` of a ConfigMap or an Opaque Secret, or None."""
        if kind == "ConfigMap":
            cm = self.idx.config_maps.get((ns, name))
            text = dict(cm.data).get("ca.crt") if cm is not None else None
            return text.encode() if text is not None else None
        secret = self.idx.secrets.get((ns, name))
        return dict(secret.data).get("ca.crt") if secret is not None else None

    def _certificates(self, gw: r.Gateway, lst: r.Listener) -> tuple[CertificatePair, ...] | None:
        """The checked certificates of an HTTPS listener; None (and a warning) when any
        reference does not resolve, as the Gateway API requires (ResolvedRefs false)."""
        where = f"Gateway {_nn(gw.meta)} listener {lst.name}"
        problem = ""
        if lst.tls_mode == "Passthrough":
            problem = "tls.mode Passthrough needs protocol TLS and a TLSRoute"
        elif not lst.certificate_refs:
            problem = "an HTTPS listener needs tls.certificateRefs"
        out: list[CertificatePair] = []
        for ref in lst.certificate_refs:
            if problem:
                break
            kind = _CERT_KINDS.get((ref.group, ref.kind))
            ns = ref.namespace or gw.meta.namespace
            what = f"certificateRef {ref.kind} {ns}/{ref.name}"
            pair = self.certificates.get((kind, ns, ref.name)) if kind else None
            if kind is None:
                problem = f"certificateRef kind {ref.group or 'core'}/{ref.kind} is not supported"
            elif ns != gw.meta.namespace and not self._granted(
                ("Gateway", gw.meta.namespace), ns, (ref.group, ref.kind, ref.name)
            ):
                problem = f"{what} is not permitted by a ReferenceGrant"
            elif pair is None:
                problem = f"{what} not found (or not of type kubernetes.io/tls)"
            else:
                out.append(pair)
        if problem:
            self.warnings.append(f"{where}: {problem}; listener not served")
            return None
        return tuple(out)

    # -- attachment -----------------------------------------------------------------------
    def _targets(
        self,
        route: r.HTTPRoute | r.StreamRoute,
        attached: dict[tuple[str, str, str], _Attached],
    ) -> dict[tuple[str, str, str], list[str | None]]:
        """The listeners a route attaches to, each with the hostnames it gets there."""
        targets: dict[tuple[str, str, str], list[str | None]] = {}
        for pref in route.parent_refs:
            if pref.group != r.GATEWAY_GROUP or pref.kind != "Gateway":
                continue  # Service parents (GAMMA) are mesh routes, not edge routes
            ns = pref.namespace or route.meta.namespace
            for (gns, gname, lname), att in attached.items():
                if (gns, gname) != (ns, pref.name):
                    continue
                if pref.section_name is not None and pref.section_name != lname:
                    continue
                if pref.port is not None and pref.port != att.listener.port:
                    continue
                if route.kind not in ROUTE_KINDS[att.listener.protocol]:
                    continue
                if not self._allowed(att.listener, route, gns):
                    continue
                hosts = _intersect(att.listener.hostname, route.hostnames)
                if hosts is None:
                    continue
                targets.setdefault((gns, gname, lname), []).extend(hosts)
        return targets

    def _attach(self, route: r.HTTPRoute, attached: dict[tuple[str, str, str], _Attached]) -> None:
        targets = self._targets(route, attached)
        if not targets:
            return
        actions = [self._action(route, i, rule) for i, rule in enumerate(route.rules)]
        for key, hosts in targets.items():
            att = attached[key]
            gw, listener = att.gateway, att.listener.name
            here = [self.policies.secured(action, route, rule.name, gw, listener)
                    for action, rule in zip(actions, route.rules, strict=True)]  # fmt: skip
            for host in dict.fromkeys(hosts):
                table = att.routes.table_for(host, route.single_label_wildcards)
                for i, rule in enumerate(route.rules):
                    for j, match in enumerate(rule.matches):
                        table.add(_compile_match(route, i, j, match, here[i]))

    def _attach_stream(
        self, route: r.StreamRoute, attached: dict[tuple[str, str, str], _Attached]
    ) -> None:
        targets = self._targets(route, attached)
        if not targets:
            return
        backends = []
        for br in route.backend_refs:
            cluster, why = self._resolve(br.ref, route.meta.namespace, route.kind)
            if cluster is None:
                self.warnings.append(f"{route.kind} {_nn(route.meta)}: {why}")
            backends.append(Backend(cluster=cluster, weight=br.weight, reason=why))
        action = RouteAction(
            route=_nn(route.meta),
            rule=0,
            backends=tuple(backends),
            split=_split(backends),
        )
        for key, hosts in targets.items():
            att = attached[key]
            if route.kind == "TCPRoute":
                if att.tcp is None:
                    att.tcp = action
                else:
                    self.warnings.append(
                        f"TCPRoute {_nn(route.meta)}: listener {key[2]} already has TCPRoute "
                        f"{att.tcp.route}; not attached"
                    )
                continue
            for host in dict.fromkeys(hosts):
                att.sni.setdefault(host or "*", action)

    def _allowed(
        self, listener: r.Listener, route: r.HTTPRoute | r.StreamRoute, gateway_ns: str
    ) -> bool:
        ar = listener.allowed_routes
        if ar.kinds and not any(
            k.group == r.GATEWAY_GROUP and k.kind == route.kind for k in ar.kinds
        ):
            return False
        if ar.namespaces_from == "All":
            return True
        if ar.namespaces_from == "Same":
            return route.meta.namespace == gateway_ns
        ns = self.idx.namespaces.get(route.meta.namespace)
        labels = dict(ns.meta.labels) if ns else {}
        labels.setdefault("kubernetes.io/metadata.name", route.meta.namespace)
        assert ar.selector is not None
        return ar.selector.matches(labels)

    # -- actions --------------------------------------------------------------------------
    def _action(self, route: r.HTTPRoute, index: int, rule: r.RouteRule) -> RouteAction:
        ns = route.meta.namespace
        req_h = resp_h = None
        redirect = rewrite = None
        mirrors = []
        filters: list[Filter] = []
        for f in rule.filters:
            if f.cors is not None:
                filters.append(CorsFilter(f.cors))
            elif f.extension is not None:
                filters.append(self._extension(route, f.extension))
            elif f.request_headers is not None:
                req_h = _ops(f.request_headers)
            elif f.response_headers is not None:
                resp_h = _ops(f.response_headers)
            elif f.redirect is not None:
                rd = f.redirect
                redirect = RedirectAction(
                    scheme=rd.scheme,
                    hostname=rd.hostname,
                    path_type=rd.path.type if rd.path else None,
                    path_value=rd.path.value if rd.path else "",
                    port=rd.port,
                    status_code=rd.status_code,
                    path_regex=_regex(rd.path),
                )
            elif f.rewrite is not None:
                rw = f.rewrite
                rewrite = RewriteAction(
                    hostname=rw.hostname,
                    path_type=rw.path.type if rw.path else None,
                    path_value=rw.path.value if rw.path else "",
                    path_regex=_regex(rw.path),
                )
            elif f.mirror is not None:
                cluster, why = self._resolve(f.mirror.backend, ns, route.kind)
                if cluster is None:
                    self.warnings.append(f"HTTPRoute {_nn(route.meta)}: mirror {why}")
                mirrors.append(
                    Mirror(
                        cluster=cluster,
                        numerator=f.mirror.numerator,
                        denominator=f.mirror.denominator,
                    )
                )
        for name in self.idx.python.get((ns, route.meta.name), ()):  # by their targetRefs
            filters.append(self._extension(route, (r.WEFT_GROUP, "PythonFilter", name)))
        backends = []
        for br in rule.backend_refs:
            cluster, why = self._resolve(br.ref, ns, route.kind)
            if cluster is None:
                self.warnings.append(f"{route.kind} {_nn(route.meta)} rule {index}: {why}")
            b_req = b_resp = None
            for f in br.filters:
                if f.request_headers is not None:
                    b_req = _ops(f.request_headers)
                elif f.response_headers is not None:
                    b_resp = _ops(f.response_headers)
            backends.append(
                Backend(
                    cluster=cluster,
                    weight=br.weight,
                    request_ops=tuple(op for op in (req_h, b_req) if op is not None),
                    response_ops=tuple(op for op in (resp_h, b_resp) if op is not None),
                    reason=why,
                    retry=self._retry(route, rule, cluster),
                )
            )
        return RouteAction(
            route=_nn(route.meta),
            rule=index,
            rule_name=rule.name,
            redirect=redirect,
            rewrite=rewrite,
            mirrors=tuple(mirrors),
            backends=tuple(backends),
            split=_split(backends),
            request_timeout_s=rule.request_timeout_s,
            backend_request_timeout_s=rule.backend_request_timeout_s,
            filters=tuple(filters),
        )

    def _extension(self, route: r.HTTPRoute, ref: tuple[str, str, str]) -> Filter:
        """An ExtensionRef filter's target, or (missing) a filter answering 500."""
        _, kind, name = ref
        key = (route.meta.namespace, name)
        if kind == "PythonFilter":
            loaded = self.extensions.get(key)
            if loaded is not None:
                return loaded
        if kind == "Transform" and (t := self.idx.transforms.get(key)) is not None:
            return TransformFilter(f"{t.meta.namespace}/{t.meta.name}", t.spec)
        if kind == "Aggregation" and (a := self.idx.aggregations.get(key)) is not None:
            return self._aggregation(route, a)
        if kind == "GrpcJsonTranscoder" and (g := self.idx.transcoders.get(key)) is not None:
            from sidecar.filters.grpc_json import TranscoderFilter

            return TranscoderFilter(_nn(g.meta), g.spec)
        found = self.idx.validations.get(key) if kind == "RequestValidation" else None
        if found is None:
            why = f"{kind} {route.meta.namespace}/{name} not found"
            self.warnings.append(f"{route.kind} {_nn(route.meta)}: ExtensionRef filter: {why}; "
                                 "its rules answer 500")  # fmt: skip
            return FixedReply(LocalReply(500, b"a filter of this route is missing\n", (),
                                         "filter_missing"), why)  # fmt: skip
        key = (found.meta.namespace, found.meta.name)
        made = self.validators.get(key)
        if made is None:
            made = self.validators[key] = ValidationFilter(found)
        return made

    def _aggregation(self, route: r.HTTPRoute, a: r.Aggregation) -> AggregateFilter:
        """The Aggregation with its parts' backends resolved (as a route's would be: a
        Service in another namespace needs a ReferenceGrant to the route's)."""
        parts = []
        for part, ref in zip(a.spec.parts, a.refs, strict=True):
            cluster, why = self._resolve(ref, route.meta.namespace, route.kind)
            if cluster is None:
                self.warnings.append(f"Aggregation {_nn(a.meta)} part {part.name}: {why}")
            parts.append(dataclasses.replace(part, cluster=cluster, authority=ref.name, why=why))
        spec = dataclasses.replace(a.spec, parts=tuple(parts))
        return AggregateFilter(_nn(a.meta), spec)

    def _retry(
        self, route: r.HTTPRoute, rule: r.RouteRule, cluster: str | None
    ) -> RetryPolicy | None:
        """The rule's `retry` (and the route's non-idempotent annotation) over the policy
        of the backend's cluster; None when the rule changes nothing."""
        unsafe = route.meta.annotations.get(NON_IDEMPOTENT_ANNOTATION) == "true"
        if (rule.retry is None and not unsafe) or cluster is None:
            return None
        base = self.clusters[cluster].retry
        changes: dict[str, object] = {"non_idempotent": unsafe}
        if (rt := rule.retry) is not None:
            changes["codes"] = frozenset(rt.codes)
            if rt.attempts is not None:
                changes["attempts"] = rt.attempts
            if rt.backoff_s is not None:  # the base; the cap scales with it as Envoy's does
                changes["backoff_base_s"] = rt.backoff_s
                changes["backoff_max_s"] = max(base.backoff_max_s, rt.backoff_s * 10)
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    # -- backends -------------------------------------------------------------------------
    def _resolve(
        self, ref: r.BackendObjectRef, route_ns: str, route_kind: str
    ) -> tuple[str | None, str]:
        if ref.group != "" or ref.kind != "Service":
            return None, f"backend kind {ref.group or 'core'}/{ref.kind} is not supported"
        ns = ref.namespace or route_ns
        target = ("", "Service", ref.name)
        if ns != route_ns and not self._granted((route_kind, route_ns), ns, target):
            return None, f"Service {ns}/{ref.name} is not permitted by a ReferenceGrant"
        svc = self.idx.services.get((ns, ref.name))
        if svc is None:
            return None, f"Service {ns}/{ref.name} not found"
        if ref.port is None:
            return None, f"backendRef to Service {ns}/{ref.name} needs a port"
        sport = next((p for p in svc.ports if p.port == ref.port), None)
        if sport is None:
            return None, f"Service {ns}/{ref.name} has no port {ref.port}"
        if svc.service_type == "ExternalName":
            return None, f"Service {ns}/{ref.name} of type ExternalName is not supported"
        name = f"{ns}/{ref.name}:{ref.port}"
        protocol = sport.protocol
        if ref.protocol is not None and protocol not in (ref.protocol, "TCP"):
            protocol = ref.protocol  # the route says how, over the port's own
            name += f"+{protocol.lower()}"
        endpoints = self._endpoints(svc, sport)
        if ref.version is not None:  # a subset: the instances of one version
            name += f"@{ref.version}"
            endpoints = tuple(e for e in endpoints if e.version == ref.version)
        if name not in self.clusters:
            self.clusters[name] = _apply_policy(
                ClusterSpec(
                    name=name,
                    service=ref.name,
                    namespace=ns,
                    protocol=protocol,
                    endpoints=endpoints,
                    tls=upstream_tls(
                        self.idx.backend_tls.get((ns, ref.name), ()),
                        ns,
                        ref.name,
                        sport.name,
                        self.idx.config_maps,
                        self.warnings,
                    ),
                ),
                self.idx.traffic.get((ns, ref.name)),
            )
        return name, ""

    def _endpoints(self, svc: r.Service, sport: r.ServicePort) -> tuple[Endpoint, ...]:
        if not svc.kubernetes:
            return tuple(
                Endpoint(
                    address=e.address, port=e.port or sport.port, version=e.version, weight=e.weight
                )
                for e in svc.endpoints
                if e.ready
            )
        out: list[Endpoint] = []
        for es in self.idx.slices.get((svc.meta.namespace, svc.meta.name), []):
            port = next((p for n, p in es.ports if n == sport.name), None)
            if port is None and isinstance(sport.target_port, int) and not es.ports:
                port = sport.target_port
            if port is None:
                continue
            out.extend(
                Endpoint(address=e.address, port=port, version=e.version, weight=e.weight)
                for e in es.endpoints
                if e.ready
            )
        return tuple(dict.fromkeys(out))

    def _granted(self, source: tuple[str, str], to_ns: str, target: tuple[str, str, str]) -> bool:
        """Does a ReferenceGrant in `to_ns` let (Gateway API kind, namespace) `source`
        refer to `target` (group, kind, name)?"""
        from_kind, from_ns = source
        group, kind, name = target
        for g in self.idx.grants:
            if g.meta.namespace != to_ns:
                continue
            if not any(
                grp == r.GATEWAY_GROUP and k == from_kind and ns == from_ns
                for grp, k, ns in g.from_
            ):
                continue
            if any(grp == group and k == kind and n in (None, name) for grp, k, n in g.to):
                return True
        return False


# -- helpers ------------------------------------------------------------------------------
def _apply_policy(spec: ClusterSpec, p: r.BackendTrafficPolicy | None) -> ClusterSpec:
    """The cluster as its Service's BackendTrafficPolicy sets it (defaults where silent)."""
    if p is None:
        return spec
    changes: dict[str, object] = {"policy": _nn(p.meta)}
    for key, value in (
        ("lb_policy", p.lb_policy), ("connect_timeout_s", p.connect_timeout_s),
        ("request_timeout_s", p.request_timeout_s), ("idle_timeout_s", p.idle_timeout_s),
        ("retry", p.retry), ("budget", p.budget), ("limits", p.limits),
        ("outlier", p.outlier), ("health_check", p.health_check),
        ("panic_threshold", p.panic_threshold),
    ):  # fmt: skip
        if value is not None:
            changes[key] = value
    if p.outlier_off:
        changes["outlier"] = None
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def _split(backends: list[Backend]) -> SmoothWeighted | None:
    return SmoothWeighted(tuple(b.weight for b in backends)) if len(backends) > 1 else None


def _nn(meta: r.Meta) -> str:
    return f"{meta.namespace}/{meta.name}"


def _route_age(
    route: r.HTTPRoute
    | r.StreamRoute
    | r.BackendTrafficPolicy
    | r.SecurityPolicy
    | r.ClientTrafficPolicy,
) -> tuple[str, str, str]:
    return (route.meta.creation_timestamp, route.meta.namespace, route.meta.name)


def _bind_address(gw: r.Gateway) -> str:
    return gw.bind_address or "0.0.0.0"


def _ops(mod: r.HeaderModifier) -> HeaderOps:
    return HeaderOps.build(set_=mod.set, add=mod.add, remove=mod.remove)


def _regex(path: r.PathModifier | None) -> re.Pattern[str] | None:
    return re.compile(path.pattern) if path is not None and path.pattern else None


def _intersect(listener_host: str | None, route_hosts: tuple[str, ...]) -> list[str | None] | None:
    """Effective hostnames of a route on a listener; None when they do not intersect."""
    if not route_hosts:
        return [listener_host]
    if listener_host is None:
        return list(route_hosts)
    out: list[str | None] = []
    for h in route_hosts:
        both = _host_intersection(listener_host, h)
        if both is not None:
            out.append(both)
    return out or None


def _host_intersection(a: str, b: str) -> str | None:
    if a == b:
        return a
    if a.startswith("*.") and b.endswith(a[1:]):
        return b
    if b.startswith("*.") and a.endswith(b[1:]):
        return a
    return None


def _compile_match(
    route: r.HTTPRoute, rule_index: int, match_index: int, m: r.RouteMatch, action: RouteAction
) -> CompiledMatch:
    def conds(vs: tuple[r.ValueMatch, ...]) -> tuple[Condition, ...]:
        return tuple(
            (v.name, v.value, None) if v.type == "Exact" else (v.name, None, re.compile(v.value))
            for v in vs
        )

    specificity = 0 if m.path.type == "Exact" else -len(m.path.value)
    order = (
        specificity,
        0 if m.method else 1,
        -len(m.headers),
        -len(m.query_params),
        *_route_age(route),
        rule_index,
        match_index,
    )
    return CompiledMatch(
        action=action,
        path_type=m.path.type,
        path_value=m.path.value,
        method=m.method,
        headers=conds(m.headers),
        query=conds(m.query_params),
        path_regex=re.compile(m.path.value) if m.path.type == "RegularExpression" else None,
        order=order,
        template=route_template(m.path.type, m.path.value),
    )


def route_template(path_type: str, value: str) -> str:
    """How a match's path reads as OpenTelemetry's `http.route`: a prefix ends in `/*`;
    "" for a match of every path (no route to report: spans are named `{method}`)."""
    if path_type == "PathPrefix":
        return value.rstrip("/") + "/*" if value.rstrip("/") else ""
    return value
