"""ClientTrafficPolicy (gateway.envoyproxy.io/v1alpha1, and weft.dev/v1alpha1): client
certificates on HTTPS listeners (`tls.clientValidation`) and the X-Forwarded-Client-Cert
the edge sets (`headers.xForwardedClientCert`). Other sections are refused by name."""

from __future__ import annotations

from sidecar.config.reader import NAME_RE, Reader
from sidecar.config.resources import ClientTrafficPolicy, ConfigMap, Meta
from sidecar.http.xfcc import DETAILS

# Modes that take the client's own X-Forwarded-Client-Cert: never at an edge, where any
# client could write one.
_TRUSTING = ("ForwardOnly", "AppendForward", "AlwaysForwardOnly")


def parse_client_traffic_policy(top: Reader, meta: Meta) -> ClientTrafficPolicy:
    from sidecar.config.parse_security import parse_targets

    spec = top.req_obj("spec")
    targets = parse_targets(spec)
    if any(t.kind != "Gateway" for t in targets):
        spec.fail("targetRefs", "must name Gateways (a listener with sectionName)")
    refs: list[tuple[str, str]] = []
    optional = False
    if (tr := spec.obj("tls")) is not None:
        cv = tr.req_obj("clientValidation")
        for rr in cv.objs("caCertificateRefs", max_items=8):
            rr.text("group", "", choices=("",))
            kind = rr.text("kind", "Secret", choices=("Secret", "ConfigMap"))
            if rr.has("namespace"):
                rr.fail("namespace", "must be the policy's own")
            refs.append((kind, rr.text("name", pattern=NAME_RE)))
            rr.finish()
        if not refs:
            cv.fail("caCertificateRefs", "must name a Secret or ConfigMap holding ca.crt")
        optional = cv.flag("optional", False)
        cv.finish()
        tr.finish()
    xfcc_set = bool(refs)
    details: tuple[str, ...] = ("Subject", "URI", "DNS")
    if (hr := spec.obj("headers")) is not None:
        xr = hr.req_obj("xForwardedClientCert")
        mode = xr.text("mode", "SanitizeSet" if refs else "Sanitize",
                       choices=("Sanitize", "SanitizeSet", *_TRUSTING))  # fmt: skip
        if mode in _TRUSTING:
            xr.fail("mode", f"{mode} would pass on what a client wrote; an edge supports "
                    "Sanitize and SanitizeSet")  # fmt: skip
        xfcc_set = mode == "SanitizeSet"
        if xfcc_set and not refs:
            xr.fail("mode", "SanitizeSet needs tls.clientValidation (a verified certificate)")
        if xr.has("certDetailsToAdd"):
            details = tuple(xr.str_list("certDetailsToAdd"))
            for i, d in enumerate(details):
                if d not in DETAILS:
                    xr.fail(f"certDetailsToAdd[{i}]", f"must be one of {', '.join(DETAILS)}")
        xr.finish()
        hr.finish()
    spec.finish()  # what else a ClientTrafficPolicy may hold is refused here, by name
    return ClientTrafficPolicy(
        meta=meta, targets=targets, ca_refs=tuple(refs), optional=optional,
        xfcc_set=xfcc_set, xfcc_details=details,
    )  # fmt: skip


def parse_config_map(top: Reader, meta: Meta) -> ConfigMap:
    data = top.str_map("data")
    top.ignore("binaryData", "immutable")
    return ConfigMap(meta=meta, data=tuple(sorted(data.items())))
