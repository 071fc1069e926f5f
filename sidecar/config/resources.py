"""Typed configuration resources (Gateway API, Kubernetes and Weft kinds): data only.

Parsing and validation live in `parse` (dispatch, metadata, backends) and `parse_routes`
(Gateway API routing kinds); semantics across resources belong to `compile`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from sidecar.authz import Policy
from sidecar.config.model import (
    CircuitLimits,
    HealthCheckPolicy,
    OutlierPolicy,
    RetryBudget,
    RetryPolicy,
)
from sidecar.filters.aggregate import AggregateSpec
from sidecar.filters.cache import CacheSpec
from sidecar.filters.compress import CompressionSpec
from sidecar.filters.ratelimit import LimitRule
from sidecar.filters.transform import TransformSpec

if TYPE_CHECKING:  # PyJWT and protobuf load only where a policy uses them
    from sidecar.filters.grpc_json import TranscoderSpec
    from sidecar.filters.jwt_auth import Provider

GATEWAY_GROUP = "gateway.networking.k8s.io"
WEFT_GROUP = "weft.dev"
ENVOY_GATEWAY_GROUP = "gateway.envoyproxy.io"  # its policies are read for what Weft implements


# -- shared pieces ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    name: str
    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    creation_timestamp: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSelector:
    match_labels: Mapping[str, str]
    # (key, operator, values) with operator In | NotIn | Exists | DoesNotExist
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In" and not (present and labels[key] in values):
                return False
            if op == "NotIn" and present and labels[key] in values:
                return False
            if op == "Exists" and not present:
                return False
            if op == "DoesNotExist" and present:
                return False
        return True


# -- Gateway ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class RouteGroupKind:
    group: str
    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowedRoutes:
    namespaces_from: str = "Same"  # Same | All | Selector
    selector: LabelSelector | None = None
    kinds: tuple[RouteGroupKind, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectRef:
    group: str
    kind: str
    name: str
    namespace: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    name: str
    port: int
    protocol: str
    hostname: str | None = None
    allowed_routes: AllowedRoutes = AllowedRoutes()
    tls_mode: str | None = None
    certificate_refs: tuple[ObjectRef, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Gateway:
    meta: Meta
    class_name: str | None
    listeners: tuple[Listener, ...]
    bind_address: str | None = None  # first IPAddress of spec.addresses


# -- HTTPRoute --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ParentRef:
    group: str
    kind: str
    name: str
    namespace: str | None = None
    section_name: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PathMatch:
    type: str  # Exact | PathPrefix | RegularExpression
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueMatch:
    """A header or query-parameter match."""

    type: str  # Exact | RegularExpression
    name: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    path: PathMatch
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PathModifier:
    type: str  # ReplaceFullPath | ReplacePrefixMatch | ReplaceRegexMatch
    value: str  # the path, the prefix, or the regex's substitution (\1 for a group)
    pattern: str = ""  # ReplaceRegexMatch: the regular expression


@dataclass(frozen=True, slots=True, kw_only=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True, kw_only=True)
class Rewrite:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendObjectRef:
    group: str
    kind: str
    name: str
    namespace: str | None = None
    port: int | None = None
    version: str | None = None  # Weft: the subset of the Service's instances of this version
    # Weft: how to speak to it, over the Service port's own (an Ingress's backend-protocol)
    protocol: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mirror:
    backend: BackendObjectRef
    # fraction of requests mirrored, as numerator/denominator
    numerator: int = 100
    denominator: int = 100


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """CORS for a route (an HTTPRoute `CORS` filter, or a SecurityPolicy's `cors`)."""

    origins: tuple[str, ...]  # "*", or scheme://host[:port] where host may start with "*."
    methods: tuple[str, ...] = ()  # "*" for any
    headers: tuple[str, ...] = ()  # "*" for any
    expose: tuple[str, ...] = ()
    max_age_s: int = 5
    credentials: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteFilter:
    type: str
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirror: Mirror | None = None
    cors: CorsPolicy | None = None
    extension: tuple[str, str, str] | None = None  # ExtensionRef: (group, kind, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendRef:
    ref: BackendObjectRef
    weight: int = 1
    filters: tuple[RouteFilter, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRule:
    name: str | None
    matches: tuple[RouteMatch, ...]
    filters: tuple[RouteFilter, ...]
    backend_refs: tuple[BackendRef, ...]
    request_timeout_s: float | None = None
    backend_request_timeout_s: float | None = None
    retry: RouteRetry | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRetry:
    """An HTTPRoute rule's `retry` (Gateway API): fields left out keep the cluster's."""

    codes: tuple[int, ...] = ()
    attempts: int | None = None
    backoff_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRoute:
    """An HTTPRoute, or a GRPCRoute translated to one (gRPC methods are HTTP/2 paths)."""

    meta: Meta
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[RouteRule, ...]
    kind: str = "HTTPRoute"  # or "GRPCRoute"
    # "*.example.com" matches one leading label only (an Ingress's host), not several
    single_label_wildcards: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRoute:
    """A TCPRoute (opaque bytes) or TLSRoute (TLS passed through, chosen by SNI)."""

    meta: Meta
    kind: str  # "TCPRoute" | "TLSRoute"
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]  # TLSRoute only
    backend_refs: tuple[BackendRef, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferenceGrant:
    meta: Meta
    from_: tuple[tuple[str, str, str], ...]  # (group, kind, namespace)
    to: tuple[tuple[str, str, str | None], ...]  # (group, kind, name)


# -- backends ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePort:
    port: int
    name: str = ""
    protocol: str = "HTTP"  # application protocol: HTTP | HTTP2 | GRPC | TCP
    target_port: int | str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointAddress:
    address: str
    port: int | None = None  # None: the service port's target
    version: str = ""
    ready: bool = True
    weight: int = 1  # relative share among the service's endpoints (Consul's Weights.Passing)
    app_port: int | None = None  # an instance's app port (a mesh destination when dialled)


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A Weft Service (with endpoints) or a Kubernetes Service (endpoints from slices)."""

    meta: Meta
    ports: tuple[ServicePort, ...]
    endpoints: tuple[EndpointAddress, ...] = ()
    kubernetes: bool = False
    service_type: str = "ClusterIP"
    addresses: tuple[str, ...] = ()  # virtual addresses (a Kubernetes Service's cluster IPs)


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSlice:
    meta: Meta
    service_name: str
    address_type: str
    ports: tuple[tuple[str, int], ...]  # (name, port)
    endpoints: tuple[EndpointAddress, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Namespace:
    meta: Meta


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayClass:
    meta: Meta
    controller: str


# -- certificates -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Secret:
    """A Kubernetes Secret: a TLS pair, or an Opaque one's data (never printed)."""

    meta: Meta
    secret_type: str
    tls_cert: bytes | None = field(default=None, repr=False)
    tls_key: bytes | None = field(default=None, repr=False)
    data: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)  # Opaque


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSCertificate:
    """A Weft certificate from PEM files (paths made absolute against the YAML file)."""

    meta: Meta
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationPolicy:
    meta: Meta
    policy: Policy


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTrafficPolicy:
    """How a Service's upstream cluster is used (weft.dev/v1alpha1): balancing, timeouts,
    retries and their budget, circuit-breaker limits, outlier detection, health checks.
    Sections left out keep Weft's defaults (docs/resilience.md)."""

    meta: Meta
    target: str  # a Service in the policy's namespace
    lb_policy: str | None = None
    connect_timeout_s: float | None = None
    request_timeout_s: float | None = None
    idle_timeout_s: float | None = None
    retry: RetryPolicy | None = None
    budget: RetryBudget | None = None
    limits: CircuitLimits | None = None
    outlier: OutlierPolicy | None = None
    outlier_off: bool = False
    health_check: HealthCheckPolicy | None = None
    panic_threshold: int | None = None
    # targeting Gateways or routes instead of a Service: a rate limit for them
    targets: tuple[PolicyTarget, ...] = ()
    rate_limit: tuple[LimitRule, ...] | None = None
    rate_limit_global: bool = False  # counted in Redis, across every edge process
    compression: CompressionSpec | None = None
    max_inflated: int | None = None  # requestDecompression: request bodies decoded, up to this
    cache: CacheSpec | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshConfig:
    """Mesh-wide settings (one per mesh; the control plane reads the one named `mesh`)."""

    meta: Meta
    trust_domain: str
    default_allow: bool


# -- parsing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyTarget:
    """A policy's targetRef (Gateway API policy attachment)."""

    kind: str  # Gateway | HTTPRoute | GRPCRoute
    name: str
    section_name: str | None = None  # a Gateway's listener, a route's rule


@dataclass(frozen=True, slots=True)
class ClaimMatch:
    """A JWT claim (a dotted path into nested objects) that must hold one of `values`."""

    path: tuple[str, ...]
    values: frozenset[str]
    array: bool = False  # valueType StringArray: one element of the claim must match


@dataclass(frozen=True, slots=True)
class JwtPrincipal:
    """A request authenticated by `provider`, with every scope and claim given."""

    provider: str
    scopes: frozenset[str] = frozenset()
    claims: tuple[ClaimMatch, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthzRule:
    """Who a rule is about: every part it sets must match (client CIDRs, a JWT principal,
    request headers with given values)."""

    name: str
    action: str  # Allow | Deny
    cidrs: tuple[IPv4Network | IPv6Network, ...] = ()
    jwt: JwtPrincipal | None = None
    headers: tuple[tuple[bytes, frozenset[bytes]], ...] = ()  # (name, values)


@dataclass(frozen=True, slots=True)
class Authorization:
    """SecurityPolicy.authorization: the first rule that matches decides, else
    `default_action`."""

    default_action: str  # Allow | Deny
    rules: tuple[AuthzRule, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyAuth:
    """SecurityPolicy.apiKeyAuth: where keys are read, which Secrets hold them."""

    secrets: tuple[str, ...]  # Opaque Secrets in the policy's namespace: client-id -> key
    headers: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()
    forward_client_id: str | None = None
    sanitize: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicAuth:
    """SecurityPolicy.basicAuth: the Secret holding `.htpasswd`."""

    secret: str  # in the policy's namespace
    forward_username: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtAuth:
    """SecurityPolicy.jwt: its providers, checked and ready (keys parsed)."""

    providers: tuple[Provider, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtAuth:
    """SecurityPolicy.extAuth: the authorization service each request is checked with."""

    backend: BackendObjectRef
    grpc: bool  # Envoy's envoy.service.auth.v3.Authorization API, else plain HTTP
    path: str = ""  # http: prefixed to the request's path
    headers_to_backend: tuple[bytes, ...] = ()  # http: copied from a 2xx answer upstream
    headers_to_ext_auth: tuple[bytes, ...] = ()  # () : http sends Authorization; gRPC all
    fail_open: bool = False
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityPolicy:
    """Who may call the routes it targets, and from where (Envoy Gateway's shape)."""

    meta: Meta
    targets: tuple[PolicyTarget, ...]
    cors: CorsPolicy | None = None
    authorization: Authorization | None = None
    api_keys: ApiKeyAuth | None = None
    basic: BasicAuth | None = None
    jwt: JwtAuth | None = None
    ext_auth: ExtAuth | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigMap:
    """A Kubernetes ConfigMap (what ClientTrafficPolicy CA bundles are usually kept in)."""

    meta: Meta
    data: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientTrafficPolicy:
    """Envoy Gateway's ClientTrafficPolicy, for what Weft implements: client certificate
    validation on HTTPS listeners and the X-Forwarded-Client-Cert the edge sets."""

    meta: Meta
    targets: tuple[PolicyTarget, ...]
    ca_refs: tuple[tuple[str, str], ...] = ()  # (kind, name): Secret or ConfigMap, `ca.crt`
    optional: bool = False
    xfcc_set: bool = True  # SanitizeSet (the verified certificate), else Sanitize (none)
    xfcc_details: tuple[str, ...] = ("Subject", "URI", "DNS")


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestValidation:
    """weft.dev RequestValidation, used by HTTPRoute rules through an ExtensionRef filter."""

    meta: Meta
    methods: frozenset[str] = frozenset()  # empty: any
    required_headers: tuple[bytes, ...] = ()  # lower case
    max_body_bytes: int = 0  # 0: the listener's limit
    json_schema: str = ""  # the schema as canonical JSON text ("": none)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transform:
    """weft.dev Transform, used by HTTPRoute rules through an ExtensionRef filter."""

    meta: Meta
    spec: TransformSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTLSPolicy:
    """Gateway API BackendTLSPolicy: TLS from the edge to a Service's endpoints."""

    meta: Meta
    targets: tuple[tuple[str, str | None], ...]  # (Service, sectionName: one of its ports)
    hostname: str  # the name asked for (SNI) and checked in the certificate
    ca_refs: tuple[str, ...] = ()  # ConfigMaps holding `ca.crt`
    system: bool = False  # wellKnownCACertificates: System
    verify: bool = True  # False: weft.dev's insecureSkipVerify


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcJsonTranscoder:
    """weft.dev GrpcJsonTranscoder, used by HTTPRoute rules through an ExtensionRef filter."""

    meta: Meta
    spec: TranscoderSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class Aggregation:
    """weft.dev Aggregation, used by HTTPRoute rules through an ExtensionRef filter; its
    parts' backends (`refs`, in their order) resolve when the configuration compiles."""

    meta: Meta
    spec: AggregateSpec
    refs: tuple[BackendObjectRef, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PythonFilter:
    """weft.dev PythonFilter: a user's filter class, from a file or a module, and its
    configuration (filters/python.py loads it; routes use it through an ExtensionRef)."""

    meta: Meta
    file: str  # absolute (made so against the YAML file), or ""
    module: str  # or an importable module's name
    class_name: str
    config_json: str  # the `config` block, canonical JSON ("{}" when none)
    targets: tuple[str, ...] = ()  # HTTPRoutes of its namespace it runs on (every rule)


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPolicyRule:
    hosts: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPolicy:
    """weft.dev EgressPolicy: what the clients of a forward-proxy listener may reach."""

    meta: Meta
    targets: tuple[tuple[str, str | None], ...]  # (Gateway name, sectionName)
    rules: tuple[EgressPolicyRule, ...]
    users: str | None = None  # proxyAuth: the Secret holding .htpasswd


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressBackend:
    service: str
    port: int | str  # a Service port's number, or its name


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressPath:
    path: str
    path_type: str  # Exact | Prefix | ImplementationSpecific (served as Prefix)
    backend: IngressBackend


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressRule:
    host: str | None  # None: every host; "*.example.com": one leading label
    paths: tuple[IngressPath, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ingress:
    """A Kubernetes Ingress (networking.k8s.io/v1); config/ingress.py serves it."""

    meta: Meta
    class_name: str | None  # spec.ingressClassName, else the legacy annotation's
    default_backend: IngressBackend | None
    rules: tuple[IngressRule, ...]
    tls: tuple[tuple[tuple[str, ...], str], ...]  # (hosts, Secret name)


@dataclass(frozen=True, slots=True, kw_only=True)
class IngressClass:
    meta: Meta
    controller: str
    default: bool  # ingressclass.kubernetes.io/is-default-class


Resource = (
    Gateway
    | GatewayClass
    | HTTPRoute
    | ReferenceGrant
    | Service
    | EndpointSlice
    | Namespace
    | Secret
    | TLSCertificate
    | StreamRoute
    | AuthorizationPolicy
    | BackendTrafficPolicy
    | MeshConfig
    | SecurityPolicy
    | RequestValidation
    | Transform
    | Aggregation
    | GrpcJsonTranscoder
    | BackendTLSPolicy
    | ConfigMap
    | ClientTrafficPolicy
    | Ingress
    | IngressClass
    | PythonFilter
    | EgressPolicy
)
