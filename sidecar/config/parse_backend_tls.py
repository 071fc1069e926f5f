"""BackendTLSPolicy (Gateway API, gateway.networking.k8s.io v1alpha3 and v1; Weft's
weft.dev variant adds `insecureSkipVerify`): the edge speaks TLS to a Service's endpoints
and checks them against the policy's roots and hostname."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sidecar.config.model import UpstreamTls
from sidecar.config.reader import HOSTNAME_RE, NAME_RE, Reader
from sidecar.config.resources import BackendTLSPolicy, ConfigMap, Meta


def parse_backend_tls_policy(top: Reader, meta: Meta, *, weft: bool) -> BackendTLSPolicy:
    spec = top.req_obj("spec")
    targets = []
    for tr in spec.objs("targetRefs", max_items=16):
        tr.text("group", "", choices=("",))
        tr.text("kind", "Service", choices=("Service",))
        targets.append((tr.text("name", pattern=NAME_RE),
                        tr.text("sectionName", None, pattern=NAME_RE)))  # fmt: skip
        tr.finish()
    if not targets:
        spec.fail("targetRefs", "must name at least one Service")
    v = spec.req_obj("validation")
    hostname = v.text("hostname", pattern=HOSTNAME_RE)
    refs = []
    for cr in v.objs("caCertificateRefs", max_items=8):
        cr.text("group", "", choices=("",))
        cr.text("kind", "ConfigMap", choices=("ConfigMap",))
        refs.append(cr.text("name", pattern=NAME_RE))
        cr.finish()
    system = v.text("wellKnownCACertificates", None, choices=("System",)) == "System"
    skip = v.flag("insecureSkipVerify", False) if weft else False
    if sum((bool(refs), system, skip)) != 1:
        v.fail(None, "give one of caCertificateRefs, wellKnownCACertificates"
               + (", insecureSkipVerify" if weft else ""))  # fmt: skip
    v.finish()
    spec.ignore("options")
    spec.finish()
    return BackendTLSPolicy(meta=meta, targets=tuple(targets), hostname=hostname,
                            ca_refs=tuple(refs), system=system, verify=not skip)  # fmt: skip


def upstream_tls(
    policies: Iterable[BackendTLSPolicy], ns: str, service: str, port_name: str,
    config_maps: Mapping[tuple[str, str], ConfigMap], warnings: list[str],
) -> UpstreamTls | None:  # fmt: skip
    """TLS to a Service port, from the BackendTLSPolicy that targets it (one naming the
    port wins over one for the whole Service; the oldest among equals), or None. A CA
    ConfigMap that is missing is a warning, and no root: no endpoint is trusted."""
    found = [
        (section is None, (p.meta.creation_timestamp, p.meta.name), p)
        for p in policies
        for svc, section in p.targets
        if svc == service and section in (None, port_name)
    ]
    if not found:
        return None
    policy = min(found, key=lambda f: (f[0], f[1]))[2]
    if not policy.verify or policy.system:
        return UpstreamTls(hostname=policy.hostname, verify=policy.verify)
    pem = b""
    for ref in policy.ca_refs:
        cm = config_maps.get((ns, ref))
        ca = dict(cm.data).get("ca.crt") if cm is not None else None
        if ca is None or not _certificates(ca):
            what = "with key ca.crt not found" if ca is None else "has no certificate in ca.crt"
            warnings.append(f"BackendTLSPolicy {ns}/{policy.meta.name}: ConfigMap {ns}/{ref} "
                            f"{what}; its endpoints are not trusted")  # fmt: skip
            continue
        pem += ca.encode() + b"\n"
    return UpstreamTls(hostname=policy.hostname, ca_pem=pem)


def _certificates(pem: str) -> bool:
    """Does `pem` hold certificates the TLS library loads?"""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError):
        return False
    return True
