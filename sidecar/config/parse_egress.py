"""weft.dev EgressPolicy: the destinations a forward-proxy listener's clients may reach
(hosts, with `*.` wildcards; CIDRs; ports), and optionally who may use it (basic auth)."""

from __future__ import annotations

import ipaddress
import re

from sidecar.config.reader import HOSTNAME_RE, NAME_RE, Reader
from sidecar.config.resources import GATEWAY_GROUP, EgressPolicy, EgressPolicyRule, Meta

_WILDCARD_HOST = re.compile(
    r"^\*\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def parse_egress_policy(top: Reader, meta: Meta) -> EgressPolicy:
    spec = top.req_obj("spec")
    targets = []
    for tr in spec.objs("targetRefs", max_items=16):
        tr.text("group", GATEWAY_GROUP, choices=(GATEWAY_GROUP,))
        tr.text("kind", "Gateway", choices=("Gateway",))
        targets.append((tr.text("name", pattern=NAME_RE), tr.text("sectionName", None)))
        tr.finish()
    if not targets:
        spec.fail("targetRefs", "must name the Gateway of the forward-proxy listener")
    rules = []
    for rr in spec.objs("rules", max_items=256):
        hosts = []
        for given in rr.str_list("hosts"):
            host = given.lower()
            if not (HOSTNAME_RE.match(host) or _WILDCARD_HOST.match(host)):
                rr.fail("hosts", f"{host!r} is not a host name (or *.domain)")
            hosts.append(host)
        cidrs = []
        for cidr in rr.str_list("cidrs"):
            try:
                cidrs.append(str(ipaddress.ip_network(cidr, strict=False)))
            except ValueError:
                rr.fail("cidrs", f"{cidr!r} is not an address or CIDR")
        ports = []
        for port in rr.raw("ports", []) or []:
            if not isinstance(port, int) or not 1 <= port <= 65535:
                rr.fail("ports", f"{port!r} is not a TCP port")
            ports.append(port)
        if not hosts and not cidrs:
            rr.fail("hosts", "a rule names hosts or cidrs")
        rr.finish()
        rules.append(EgressPolicyRule(hosts=tuple(hosts), cidrs=tuple(cidrs), ports=tuple(ports)))
    users = None
    auth = spec.obj("proxyAuth")
    if auth is not None:
        ur = auth.req_obj("users")
        users = ur.text("name", pattern=NAME_RE)
        ur.finish()
        auth.finish()
    spec.finish()
    return EgressPolicy(meta=meta, targets=tuple(targets), rules=tuple(rules), users=users)
