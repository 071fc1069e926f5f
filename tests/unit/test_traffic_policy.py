"""BackendTrafficPolicy and HTTPRoute `retry`: parsed, validated, compiled onto clusters."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.loader import load_snapshot
from sidecar.config.snapshot import Snapshot
from sidecar.errors import ConfigError

BASE = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  listeners: [{name: http, port: 18080, protocol: HTTP}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  ports: [{port: 80}]
  endpoints: [{address: 127.0.0.1, port: 9001}, {address: 127.0.0.2, port: 9001}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: orders, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
  - backendRefs: [{name: orders, port: 80}]
"""

POLICY = """---
apiVersion: weft.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: orders, namespace: shop}
spec:
  targetRef: {group: "", kind: Service, name: orders}
  loadBalancer: {type: LeastRequest}
  timeout: {connect: 2s, request: 15s, idle: 90s}
  retry:
    attempts: 3
    codes: [502, 503]
    perTryTimeout: 1500ms
    backoff: {baseInterval: 10ms, maxInterval: 1s}
    bufferBytes: 1024
    budget: {percent: 10, minRetriesPerSecond: 2, window: 30s}
  circuitBreaker: {maxConnections: 10, maxPendingRequests: 5, maxRequests: 20}
  outlierDetection:
    consecutive5xx: 7
    consecutiveGatewayErrors: 3
    baseEjectionTime: 10s
    maxEjectionTime: 2m
    maxEjectionPercent: 34
  healthCheck:
    type: HTTP
    http: {path: /healthz, expectedStatuses: [200, 204]}
    interval: 2s
    timeout: 500ms
    healthyThreshold: 1
    unhealthyThreshold: 2
    panicThreshold: 25
"""


def _load(tmp_path: Path, text: str) -> Snapshot:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return load_snapshot([str(f)], version=1, gateway_class="weft")


def test_policy_sets_the_cluster(tmp_path: Path) -> None:
    spec = _load(tmp_path, BASE + POLICY).clusters["shop/orders:80"]
    assert spec.policy == "shop/orders"
    assert spec.lb_policy == "least_request"
    assert (spec.connect_timeout_s, spec.request_timeout_s, spec.idle_timeout_s) == (2, 15, 90)
    r = spec.retry
    assert (r.attempts, r.codes, r.per_try_timeout_s) == (3, {502, 503}, 1.5)
    assert (r.backoff_base_s, r.backoff_max_s, r.buffer_bytes) == (0.01, 1.0, 1024)
    assert not r.non_idempotent
    assert (spec.budget.ratio, spec.budget.min_per_s, spec.budget.window_s) == (0.1, 2, 30)
    lim = spec.limits
    assert (lim.max_connections, lim.max_pending_requests, lim.max_requests) == (10, 5, 20)
    o = spec.outlier
    assert o is not None
    assert (o.consecutive_5xx, o.consecutive_gateway_errors) == (7, 3)
    assert (o.base_ejection_s, o.max_ejection_s, o.max_ejection_percent) == (10, 120, 34)
    h = spec.health_check
    assert h is not None
    assert (h.type, h.path, h.expected_statuses) == ("HTTP", "/healthz", {200, 204})
    assert (h.interval_s, h.timeout_s, h.healthy_threshold, h.unhealthy_threshold) == (
        2, 0.5, 1, 2,
    )  # fmt: skip
    assert spec.panic_threshold == 25


def test_a_panic_threshold_alone_is_no_active_check(tmp_path: Path) -> None:
    alone = POLICY.split("  healthCheck:", maxsplit=1)[0] + "  healthCheck: {panicThreshold: 0}\n"
    spec = _load(tmp_path, BASE + alone).clusters["shop/orders:80"]
    assert spec.health_check is None and spec.panic_threshold == 0
    assert _load(tmp_path, BASE).clusters["shop/orders:80"].panic_threshold == 50


def test_defaults_without_a_policy(tmp_path: Path) -> None:
    spec = _load(tmp_path, BASE).clusters["shop/orders:80"]
    assert spec.policy == "" and spec.health_check is None
    assert spec.retry.attempts == 2 and not spec.retry.codes
    assert spec.outlier is not None and spec.outlier.consecutive_gateway_errors == 5


def test_route_retry_goes_over_the_cluster_policy(tmp_path: Path) -> None:
    route = BASE.replace(
        "  - backendRefs: [{name: orders, port: 80}]",
        "  - backendRefs: [{name: orders, port: 80}]\n"
        "    retry: {codes: [500, 503], attempts: 1, backoff: 50ms}",
    )
    snap = _load(tmp_path, route + POLICY)
    backend = _only_backend(snap)
    assert backend.retry is not None
    assert (backend.retry.codes, backend.retry.attempts) == ({500, 503}, 1)
    assert (backend.retry.backoff_base_s, backend.retry.backoff_max_s) == (0.05, 1.0)
    assert backend.retry.per_try_timeout_s == 1.5  # still the Service's
    assert not backend.retry.non_idempotent


def test_route_annotation_allows_non_idempotent_retries(tmp_path: Path) -> None:
    route = BASE.replace(
        "metadata: {name: orders, namespace: shop}\nspec:\n  parentRefs",
        "metadata:\n  name: orders\n  namespace: shop\n"
        "  annotations: {weft.dev/retry-non-idempotent: 'true'}\nspec:\n  parentRefs",
    )
    backend = _only_backend(_load(tmp_path, route))
    assert backend.retry is not None and backend.retry.non_idempotent
    assert _only_backend(_load(tmp_path, BASE)).retry is None


def test_outlier_detection_can_be_switched_off(tmp_path: Path) -> None:
    off = (
        POLICY.split("  outlierDetection:", maxsplit=1)[0]
        + "  outlierDetection: {enabled: false}\n"
    )
    assert _load(tmp_path, BASE + off).clusters["shop/orders:80"].outlier is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("maxEjectionPercent: 34", "maxEjectionPercent: 150"),
         "spec.outlierDetection.maxEjectionPercent: must be between 0 and 100"),
        (("codes: [502, 503]", "codes: [502, 200]"),
         "spec.retry.codes[1]: must be a status code between 400 and 599"),
        (("type: HTTP\n    http: {path: /healthz, expectedStatuses: [200, 204]}\n", "type: HTTP\n"),
         "spec.healthCheck.http: is required when type is HTTP"),
        (("type: LeastRequest", "type: Random"),
         "spec.loadBalancer.type: must be one of PeakEWMA, LeastRequest, RoundRobin"),
        (("perTryTimeout: 1500ms", "perTryTimeout: soon"), "spec.retry.perTryTimeout"),
        (("maxRequests: 20", "maxRequests: 0"), "spec.circuitBreaker.maxRequests"),
        (("maxInterval: 1s", "maxInterval: 1ms"),
         "spec.retry.backoff.maxInterval: must not be shorter than baseInterval"),
        (("kind: Service, name: orders", "kind: Deployment, name: orders"), "spec.targetRef.kind"),
        (('group: "", kind: Service, name: orders',
          "group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders"),
         "spec.loadBalancer: applies per Service in Weft"),
        (("panicThreshold: 25", "panicThreshold: 101"),
         "spec.healthCheck.panicThreshold: must be between 0 and 100"),
        (("bufferBytes: 1024", "bufferBytes: 1024\n    retryOn: everything"),
         "spec.retry.retryOn: unknown field"),
    ],
)  # fmt: skip
def test_bad_policies_are_refused_naming_the_field(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in POLICY
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, BASE + POLICY.replace(old, new))
    assert message in str(info.value)
    assert "document 4" in str(info.value)


def test_bad_route_retry_is_refused(tmp_path: Path) -> None:
    route = BASE.replace(
        "  - backendRefs: [{name: orders, port: 80}]",
        "  - backendRefs: [{name: orders, port: 80}]\n    retry: {attempts: -1}",
    )
    with pytest.raises(ConfigError, match=r"rules\[0\]\.retry\.attempts: must be between 0 and 10"):
        _load(tmp_path, route)


def _only_backend(snap: Snapshot):  # type: ignore[no-untyped-def]
    router = next(iter(snap.routers.values()))
    match = router.route("orders", "/", "GET", [], "")
    assert match is not None
    (backend,) = match.action.backends
    return backend
