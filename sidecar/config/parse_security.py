"""SecurityPolicy (weft.dev/v1alpha1, and Envoy Gateway's gateway.envoyproxy.io/v1alpha1
for the fields Weft implements): targets, CORS, and authorization on client addresses.

Field names are Envoy Gateway's, so a policy moves between the two by its apiVersion. What
Weft does not implement yet is refused by name, never ignored: a policy that silently
dropped its `jwt` section would leave an API open.
"""

from __future__ import annotations

import ipaddress

from sidecar.config.parse_routes import parse_cors
from sidecar.config.reader import NAME_RE, Reader
from sidecar.config.resources import (
    GATEWAY_GROUP,
    IpAuthorization,
    IpRule,
    Meta,
    PolicyTarget,
    SecurityPolicy,
)

_TARGET_KINDS = ("Gateway", "HTTPRoute", "GRPCRoute")
_NOT_YET = ("jwt", "apiKeyAuth", "basicAuth", "extAuth", "oidc")


def parse_security_policy(top: Reader, meta: Meta) -> SecurityPolicy:
    spec = top.req_obj("spec")
    targets = parse_targets(spec)
    for key in _NOT_YET:
        if spec.has(key):
            spec.fail(key, "is not supported yet (supported: cors, authorization)")
    cors = None
    if (cr := spec.obj("cors")) is not None:
        cors = parse_cors(cr, max_age=_max_age)
    authorization = None
    if (ar := spec.obj("authorization")) is not None:
        authorization = _authorization(ar)
    spec.finish()
    if cors is None and authorization is None:
        top.fail("spec", "sets nothing Weft enforces (cors, authorization)")
    return SecurityPolicy(meta=meta, targets=targets, cors=cors, authorization=authorization)


def parse_targets(spec: Reader) -> tuple[PolicyTarget, ...]:
    readers = list(spec.objs("targetRefs", max_items=16))
    if (single := spec.obj("targetRef")) is not None:
        readers.append(single)
    if not readers:
        spec.fail("targetRefs", "is required (a Gateway, HTTPRoute or GRPCRoute)")
    out = []
    for tr in readers:
        kind = tr.text("kind", choices=_TARGET_KINDS)
        tr.text("group", GATEWAY_GROUP, choices=(GATEWAY_GROUP,))
        name = tr.text("name", pattern=NAME_RE)
        section = tr.text("sectionName", None, pattern=NAME_RE)
        out.append(PolicyTarget(kind=kind, name=name, section_name=section))
        tr.finish()
    return tuple(out)


def _max_age(r: Reader, key: str, default: int) -> int:
    """Envoy Gateway's `maxAge`: a duration ("10m")."""
    from sidecar.config.parse_routes import DURATION_RE, duration_s

    text = r.text(key, None, pattern=DURATION_RE)
    return default if text is None else int(duration_s(text))


def _authorization(r: Reader) -> IpAuthorization:
    default = r.text("defaultAction", "Deny", choices=("Allow", "Deny"))
    rules = []
    for i, rr in enumerate(r.objs("rules", max_items=256)):
        action = rr.text("action", choices=("Allow", "Deny"))
        pr = rr.req_obj("principal")
        for key in ("jwt", "headers"):
            if pr.has(key):
                pr.fail(key, "is not supported yet (supported: clientCIDRs)")
        cidrs = []
        for j, text in enumerate(pr.str_list("clientCIDRs")):
            try:
                cidrs.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                pr.fail(f"clientCIDRs[{j}]", f"is not a CIDR: {text!r}")
        if not cidrs:
            pr.fail("clientCIDRs", "must name at least one CIDR")
        pr.finish()
        rules.append(IpRule(name=rr.text("name", f"rule {i}"), action=action, cidrs=tuple(cidrs)))
        rr.finish()
    r.finish()
    return IpAuthorization(default_action=default, rules=tuple(rules))
