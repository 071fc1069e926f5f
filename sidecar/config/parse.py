"""Parse YAML documents into resources: dispatch by kind, metadata, and backend kinds.

`parse_resource` turns one document into one frozen resource or raises `ConfigError`
naming the document and field.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ca.spiffe import DEFAULT_TRUST_DOMAIN, TRUST_DOMAIN_RE, InvalidSpiffeId, SpiffeId
from sidecar.authz import Operation, Policy, Source
from sidecar.config.parse_aggregate import parse_aggregation
from sidecar.config.parse_backend_tls import parse_backend_tls_policy
from sidecar.config.parse_client_traffic import parse_client_traffic_policy, parse_config_map
from sidecar.config.parse_egress import parse_egress_policy
from sidecar.config.parse_ingress import parse_ingress, parse_ingress_class
from sidecar.config.parse_policy import parse_backend_traffic_policy
from sidecar.config.parse_routes import (
    parse_gateway,
    parse_grpc_route,
    parse_http_route,
    parse_reference_grant,
    parse_stream_route,
)
from sidecar.config.parse_security import parse_security_policy
from sidecar.config.parse_transform import parse_grpc_json_transcoder, parse_transform
from sidecar.config.parse_validation import parse_request_validation
from sidecar.config.reader import HOSTNAME_RE, NAME_RE, Reader
from sidecar.config.resources import (
    ENVOY_GATEWAY_GROUP,
    GATEWAY_GROUP,
    WEFT_GROUP,
    AuthorizationPolicy,
    EndpointAddress,
    EndpointSlice,
    GatewayClass,
    HTTPRoute,
    MeshConfig,
    Meta,
    Namespace,
    PythonFilter,
    Resource,
    Secret,
    Service,
    ServicePort,
    StreamRoute,
    TLSCertificate,
)
from sidecar.errors import ConfigError

_CONTROLLER_RE = re.compile(r"^[a-z0-9.-]+/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")
_VERSIONS = {
    GATEWAY_GROUP: ("v1", "v1beta1", "v1alpha2", "v1alpha3"),
    "": ("v1",),
    "discovery.k8s.io": ("v1",),
    "networking.k8s.io": ("v1",),
    WEFT_GROUP: ("v1alpha1",),
    ENVOY_GATEWAY_GROUP: ("v1alpha1",),
}

APP_PROTOCOLS = {
    "kubernetes.io/h2c": "HTTP2",
    "http": "HTTP",
    "kubernetes.io/ws": "HTTP",
    "kubernetes.io/wss": "HTTP",
    "h2c": "HTTP2",
    "grpc": "GRPC",
    "tcp": "TCP",
}


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document; `source` names it in errors, `base_dir` anchors relative paths."""

    data: object
    source: str
    base_dir: Path | None = None


def parse_resource(doc: object, source: str, base_dir: Path | None = None) -> Resource:
    """Parse one YAML document; `source` names it in errors (`file.yaml document 2`)."""
    top = Reader(doc, "", source)
    api_version = top.text("apiVersion", max_len=100)
    kind = top.text("kind", max_len=100)
    group, _, version = api_version.rpartition("/")
    parser = _PARSERS.get((group, kind))
    if parser is None:
        top.fail("kind", f"unknown kind {kind!r} in apiVersion {api_version!r}")
    if version not in _VERSIONS[group]:
        top.fail("apiVersion", f"version {version!r} of {kind} is not served")
    source = f"{source} ({kind} {_name_hint(doc)})"
    top.source = source
    meta = _meta(top.req_obj("metadata"))
    top.ignore("status")
    if parser in (_tls_certificate, _python_filter, parse_grpc_json_transcoder):
        resource: Resource = parser(top, meta, base_dir)
    else:
        resource = parser(top, meta)
    top.finish()
    return resource


def _name_hint(doc: object) -> str:
    md = doc.get("metadata") if isinstance(doc, Mapping) else None
    if isinstance(md, Mapping):
        return f"{md.get('namespace') or 'default'}/{md.get('name')}"
    return "?"


def _meta(r: Reader) -> Meta:
    name = r.text("name", pattern=NAME_RE)
    ns = r.text("namespace", "default", pattern=NAME_RE, max_len=63)
    labels = r.str_map("labels")
    annotations = r.str_map("annotations")
    ts = r.raw("creationTimestamp", "")
    r.ignore(
        "uid", "resourceVersion", "generation", "managedFields",
        "finalizers", "ownerReferences", "generateName", "deletionTimestamp",
    )  # fmt: skip
    r.finish()
    return Meta(
        name=name, namespace=ns, labels=labels, annotations=annotations,
        creation_timestamp=str(ts),
    )  # fmt: skip


def _k8s_service(top: Reader, meta: Meta) -> Service:
    spec = top.req_obj("spec")
    ports = []
    for pr in spec.objs("ports", max_items=64):
        app = pr.text("appProtocol", None)
        target = pr.raw("targetPort", None)
        if target is not None and not isinstance(target, int | str):
            pr.fail("targetPort", "must be a port number or name")
        ports.append(
            ServicePort(
                port=pr.integer("port", lo=1, hi=65535),
                name=pr.text("name", ""),
                protocol=APP_PROTOCOLS.get(app or "", "HTTP"),
                target_port=target,
            )
        )
        pr.text("protocol", "TCP", choices=("TCP", "UDP", "SCTP"))
        pr.ignore("nodePort")
        pr.finish()
    stype = spec.text(
        "type", "ClusterIP", choices=("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
    )
    spec.str_map("selector")
    cluster_ips = [*spec.str_list("clusterIPs"), spec.text("clusterIP", "")]
    spec.ignore(
        "ipFamilies", "ipFamilyPolicy", "sessionAffinity",
        "externalName", "externalTrafficPolicy", "internalTrafficPolicy",
        "publishNotReadyAddresses",
        "loadBalancerIP", "externalIPs", "healthCheckNodePort", "allocateLoadBalancerNodePorts",
        "sessionAffinityConfig", "loadBalancerSourceRanges", "loadBalancerClass",
        "trafficDistribution",
    )  # fmt: skip
    spec.finish()
    addresses = _ip_addresses(spec, "clusterIPs", [a for a in cluster_ips if a not in ("", "None")])
    return Service(
        meta=meta, ports=tuple(ports), kubernetes=True, service_type=stype, addresses=addresses
    )


def _ip_addresses(r: Reader, key: str, values: list[str]) -> tuple[str, ...]:
    """IP addresses, normalized and without repeats (a Service's virtual addresses)."""
    out: list[str] = []
    for value in values:
        try:
            address = str(ipaddress.ip_address(value))
        except ValueError:
            r.fail(key, f"{value!r} is not an IP address")
        if address not in out:
            out.append(address)
    return tuple(out)


def _weft_service(top: Reader, meta: Meta) -> Service:
    spec = top.req_obj("spec")
    ports = []
    for pr in spec.objs("ports", max_items=64):
        ports.append(
            ServicePort(
                port=pr.integer("port", lo=1, hi=65535),
                name=pr.text("name", ""),
                protocol=pr.text("protocol", "HTTP", choices=("HTTP", "HTTP2", "GRPC", "TCP")),
            )
        )
        pr.finish()
    if not ports:
        spec.fail("ports", "must list at least one port")
    endpoints = []
    for er in spec.objs("endpoints"):
        endpoints.append(
            EndpointAddress(
                address=_address(er, "address"),
                port=er.integer("port", None, lo=1, hi=65535),
                version=er.text("version", "", max_len=63),
                weight=er.integer("weight", 1, lo=1, hi=1000),
                app_port=er.integer("appPort", None, lo=1, hi=65535),
            )
        )
        er.finish()
    addresses = _ip_addresses(spec, "addresses", spec.str_list("addresses"))
    spec.finish()
    return Service(meta=meta, ports=tuple(ports), endpoints=tuple(endpoints), addresses=addresses)


def _address(r: Reader, key: str) -> str:
    value: str = r.text(key)
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        if HOSTNAME_RE.match(value) and not value.startswith("*"):
            return value
        r.fail(key, f"{value!r} is not an IP address or hostname")


def _endpoint_slice(top: Reader, meta: Meta) -> EndpointSlice:
    service = meta.labels.get("kubernetes.io/service-name")
    if not service:
        top.fail("metadata.labels", "needs the kubernetes.io/service-name label")
    atype = top.text("addressType", choices=("IPv4", "IPv6", "FQDN"))
    ports = []
    for pr in top.objs("ports", max_items=64):
        ports.append((pr.text("name", ""), pr.integer("port", lo=1, hi=65535)))
        pr.text("protocol", "TCP", choices=("TCP", "UDP", "SCTP"))
        pr.ignore("appProtocol")
        pr.finish()
    endpoints = []
    for er in top.objs("endpoints"):
        addrs = er.str_list("addresses")
        if not addrs:
            er.fail("addresses", "must have at least one address")
        ready = True
        cr = er.obj("conditions")
        if cr is not None:
            ready = cr.flag("ready", True) and not cr.flag("terminating", False)
            cr.ignore("serving")
            cr.finish()
        er.ignore("hostname", "nodeName", "zone", "targetRef", "hints", "deprecatedTopology")
        er.finish()
        endpoints.append(EndpointAddress(address=addrs[0], ready=ready))
    return EndpointSlice(
        meta=meta,
        service_name=service,
        address_type=atype,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
    )


def _gateway_class(top: Reader, meta: Meta) -> GatewayClass:
    """Accepted so Kubernetes manifests load as they are; Gateways pick their class by
    name (`--gateway-class`)."""
    spec = top.req_obj("spec")
    controller = spec.text("controllerName", pattern=_CONTROLLER_RE)
    spec.ignore("parametersRef", "description")
    spec.finish()
    return GatewayClass(meta=meta, controller=controller)


_SECRET_KEY_RE = re.compile(r"[-._a-zA-Z0-9]{1,253}")


def _secret(top: Reader, meta: Meta) -> Secret:
    """TLS Secrets keep their pair, Opaque ones their data (credentials for SecurityPolicy);
    Secrets of other types load (a cluster dump has many) but keep no data."""
    stype = top.text("type", "Opaque")
    top.ignore("immutable")
    if stype not in ("kubernetes.io/tls", "Opaque"):
        top.ignore("data", "stringData")
        return Secret(meta=meta, secret_type=stype)
    data, strings = top.str_map("data"), top.str_map("stringData")
    for key in (*data, *strings):  # as Kubernetes allows: they become header values here
        if not _SECRET_KEY_RE.fullmatch(key):
            top.fail("data", f"key {key[:40]!r}: use letters, digits, '-', '_' and '.'")
    if stype == "Opaque":
        decoded = {k: v.encode() for k, v in strings.items()}
        for key, value in data.items():
            try:
                decoded.setdefault(key, base64.b64decode(value, validate=True))
            except binascii.Error:
                top.fail(f"data.{key}", "is not valid base64")
        return Secret(meta=meta, secret_type=stype, data=tuple(sorted(decoded.items())))

    def item(key: str) -> bytes:
        if key in strings:
            return strings[key].encode()
        if key not in data:
            top.fail("data", f"a kubernetes.io/tls Secret needs {key}")
        try:
            return base64.b64decode(data[key], validate=True)
        except binascii.Error:
            top.fail(f"data.{key}", "is not valid base64")

    return Secret(meta=meta, secret_type=stype, tls_cert=item("tls.crt"), tls_key=item("tls.key"))


def _tls_certificate(top: Reader, meta: Meta, base_dir: Path | None) -> TLSCertificate:
    spec = top.req_obj("spec")
    files = []
    for key in ("certFile", "keyFile"):
        path = Path(spec.text(key, max_len=4096))
        files.append(str(path if path.is_absolute() or base_dir is None else base_dir / path))
    spec.finish()
    return TLSCertificate(meta=meta, cert_file=files[0], key_file=files[1])


def _python_filter(top: Reader, meta: Meta, base_dir: Path | None) -> PythonFilter:
    spec = top.req_obj("spec")
    file = spec.text("file", "", max_len=4096)
    module = spec.text("module", "", pattern=_MODULE_RE, max_len=200)
    if bool(file) == bool(module):
        spec.fail("file", "give exactly one of file and module")
    if file and not Path(file).is_absolute() and base_dir is not None:
        file = str(base_dir / file)
    class_name = spec.text("class", pattern=_IDENTIFIER_RE, max_len=100)
    config = spec.raw("config", {})
    if not isinstance(config, dict):
        spec.fail("config", "must be a mapping")
    targets = []
    for tr in spec.objs("targetRefs", max_items=64):
        tr.text("group", "gateway.networking.k8s.io", choices=("gateway.networking.k8s.io",))
        tr.text("kind", "HTTPRoute", choices=("HTTPRoute", "GRPCRoute"))
        targets.append(tr.text("name", pattern=NAME_RE))
        tr.finish()
    spec.finish()
    return PythonFilter(meta=meta, file=file, module=module, class_name=class_name,
                        config_json=json.dumps(config, sort_keys=True, default=str),
                        targets=tuple(targets))  # fmt: skip


_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METHOD_RE = re.compile(r"^[A-Z]{1,20}$")


def _authorization_policy(top: Reader, meta: Meta) -> AuthorizationPolicy:
    spec = top.req_obj("spec")
    tr = spec.req_obj("targetRef")
    tr.text("group", WEFT_GROUP, choices=(WEFT_GROUP, ""))
    tr.text("kind", "Service", choices=("Service",))
    target = tr.text("name", pattern=NAME_RE)
    tr.finish()
    action = spec.text("action", "ALLOW", choices=("ALLOW", "DENY"))
    sources = []
    for fr in spec.objs("from", max_items=64):
        identities = fr.str_list("identities")
        for i, uri in enumerate(identities):
            try:
                SpiffeId.parse(uri)
            except InvalidSpiffeId as exc:
                fr.fail(f"identities[{i}]", str(exc))
        services = fr.str_list("services", pattern=re.compile(r"^([a-z0-9-]+/)?[a-z0-9-]+$"))
        namespaces = fr.str_list("namespaces", pattern=NAME_RE)
        fr.finish()  # an unknown field is named as such before what is missing
        if not (identities or services or namespaces):
            fr.fail(None, "needs identities, services or namespaces")
        sources.append(
            Source(identities=tuple(identities), services=tuple(services),
                   namespaces=tuple(namespaces))
        )  # fmt: skip
    operations = []
    for tor in spec.objs("to", max_items=64):
        paths = tor.str_list("paths", pattern=re.compile(r"^/"))
        methods = tor.str_list("methods", pattern=_METHOD_RE)
        tor.finish()
        operations.append(Operation(paths=tuple(paths), methods=tuple(methods)))
    spec.finish()
    return AuthorizationPolicy(
        meta=meta,
        policy=Policy(
            name=f"{meta.namespace}/{meta.name}", namespace=meta.namespace, target=target,
            action=action, sources=tuple(sources), operations=tuple(operations),
        ),
    )  # fmt: skip


def _mesh_config(top: Reader, meta: Meta) -> MeshConfig:
    spec = top.obj("spec")
    if spec is None:
        return MeshConfig(meta=meta, trust_domain=DEFAULT_TRUST_DOMAIN, default_allow=True)
    domain = spec.text("trustDomain", DEFAULT_TRUST_DOMAIN, pattern=TRUST_DOMAIN_RE, max_len=255)
    policy = spec.text("defaultPolicy", "allow", choices=("allow", "deny"))
    spec.finish()
    return MeshConfig(meta=meta, trust_domain=domain, default_allow=policy == "allow")


def _namespace(top: Reader, meta: Meta) -> Namespace:
    top.ignore("spec")
    return Namespace(meta=meta)


_PARSERS: dict[tuple[str, str], Callable[..., Any]] = {
    (GATEWAY_GROUP, "GatewayClass"): _gateway_class,
    (GATEWAY_GROUP, "Gateway"): parse_gateway,
    (GATEWAY_GROUP, "HTTPRoute"): parse_http_route,
    (GATEWAY_GROUP, "GRPCRoute"): parse_grpc_route,
    (GATEWAY_GROUP, "TCPRoute"): lambda top, meta: parse_stream_route(top, meta, "TCPRoute"),
    (GATEWAY_GROUP, "TLSRoute"): lambda top, meta: parse_stream_route(top, meta, "TLSRoute"),
    (GATEWAY_GROUP, "ReferenceGrant"): parse_reference_grant,
    (GATEWAY_GROUP, "BackendTLSPolicy"): lambda top, meta: parse_backend_tls_policy(
        top, meta, weft=False
    ),
    (WEFT_GROUP, "BackendTLSPolicy"): lambda top, meta: parse_backend_tls_policy(
        top, meta, weft=True
    ),
    ("", "Service"): _k8s_service,
    ("", "Namespace"): _namespace,
    ("", "Secret"): _secret,
    (WEFT_GROUP, "TLSCertificate"): _tls_certificate,
    (WEFT_GROUP, "PythonFilter"): _python_filter,
    (WEFT_GROUP, "EgressPolicy"): parse_egress_policy,
    (WEFT_GROUP, "AuthorizationPolicy"): _authorization_policy,
    (WEFT_GROUP, "BackendTrafficPolicy"): parse_backend_traffic_policy,
    ("discovery.k8s.io", "EndpointSlice"): _endpoint_slice,
    (WEFT_GROUP, "Service"): _weft_service,
    (WEFT_GROUP, "MeshConfig"): _mesh_config,
    (WEFT_GROUP, "SecurityPolicy"): parse_security_policy,
    (WEFT_GROUP, "RequestValidation"): parse_request_validation,
    (WEFT_GROUP, "Transform"): parse_transform,
    (WEFT_GROUP, "Aggregation"): parse_aggregation,
    (WEFT_GROUP, "GrpcJsonTranscoder"): parse_grpc_json_transcoder,
    (WEFT_GROUP, "ClientTrafficPolicy"): parse_client_traffic_policy,
    (ENVOY_GATEWAY_GROUP, "ClientTrafficPolicy"): parse_client_traffic_policy,
    ("", "ConfigMap"): parse_config_map,
    ("networking.k8s.io", "Ingress"): parse_ingress,
    ("networking.k8s.io", "IngressClass"): parse_ingress_class,
    (ENVOY_GATEWAY_GROUP, "SecurityPolicy"): parse_security_policy,
    (ENVOY_GATEWAY_GROUP, "BackendTrafficPolicy"): parse_backend_traffic_policy,
}


def load_documents(docs: Iterable[Document]) -> list[Resource]:
    """Parse many documents; raises the first error (each names its source)."""
    out = []
    keys: dict[tuple[str, str, str], str] = {}
    for doc in docs:
        if doc.data is None:
            continue
        source = doc.source
        res = parse_resource(doc.data, source, doc.base_dir)
        k = (kind_key(res), res.meta.namespace, res.meta.name)
        if k in keys:
            raise ConfigError(f"duplicate {k[0]} {k[1]}/{k[2]} (first in {keys[k]})", source=source)
        keys[k] = source
        out.append(res)
    return out


def kind_key(res: Resource) -> str:
    if isinstance(res, Service):
        return "Service"
    if isinstance(res, HTTPRoute | StreamRoute):
        return res.kind
    return type(res).__name__
