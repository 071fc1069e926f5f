"""Which destinations a forward proxy's clients may reach (pure): a compiled
`weft.dev EgressPolicy`. Nothing is allowed without one (default deny)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.config import resources as r
    from sidecar.filters.chain import Filter

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class EgressRule:
    hosts: tuple[str, ...] = ()  # "api.example.com", "*.example.com" (one or more labels)
    cidrs: tuple[Network, ...] = ()  # destinations by address
    ports: frozenset[int] = frozenset()  # empty: any

    def host_matches(self, host: str) -> bool:
        for pattern in self.hosts:
            if pattern == host or (pattern.startswith("*.") and host.endswith(pattern[1:])):
                return True
        return False


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    name: str = ""  # "namespace/name", or "" when no policy applies (nothing is allowed)
    rules: tuple[EgressRule, ...] = ()
    auth: Filter | None = field(default=None, compare=False)  # basic auth of the clients

    def allows(self, host: str, port: int, addresses: tuple[str, ...]) -> bool:
        """May a client reach `host:port` (whose addresses are `addresses`)? A rule allows
        it when its port list has the port (or is empty) and its hosts name the host or its
        CIDRs hold every address the host has."""
        host = host.lower().rstrip(".")
        for rule in self.rules:
            if rule.ports and port not in rule.ports:
                continue
            if rule.host_matches(host):
                return True
            if rule.cidrs and addresses and all(_within(a, rule.cidrs) for a in addresses):
                return True
        return False


def _within(address: str, cidrs: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    return any(ip in net for net in cidrs)


def applying(policies: list[r.EgressPolicy], gw: r.Gateway, listener: str) -> r.EgressPolicy | None:
    """The policy of a Gateway's forward-proxy listener: the oldest that targets the
    listener or its Gateway."""
    targets = ((gw.meta.name, None), (gw.meta.name, listener))
    found = [p for p in policies if p.meta.namespace == gw.meta.namespace
             and any(t in targets for t in p.targets)]  # fmt: skip
    return min(found, key=lambda p: (p.meta.creation_timestamp, p.meta.name), default=None)


def compiled(policy: r.EgressPolicy, auth: Filter | None) -> EgressPolicy:
    rules = tuple(
        EgressRule(hosts=rule.hosts, ports=frozenset(rule.ports),
                   cidrs=tuple(ipaddress.ip_network(c) for c in rule.cidrs))
        for rule in policy.rules
    )  # fmt: skip
    name = f"{policy.meta.namespace}/{policy.meta.name}"
    return EgressPolicy(name=name, rules=rules, auth=auth)
