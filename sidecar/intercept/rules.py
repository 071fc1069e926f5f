"""The netfilter rules of transparent interception (pure), as istio-init and linkerd-init
write them: `iptables-restore` input for the nat table of the workload's network namespace.

Theory of operation. Two chains of our own hang off the nat table's hooks, so installing
and removing never touches anyone else's rules:

- `WEFT_INBOUND` (from PREROUTING): TCP arriving for the workload goes to the sidecar's
  inbound port, except the skipped ports (the admin port, SSH, whatever the user lists).
- `WEFT_OUTPUT` (from OUTPUT): TCP the workload opens goes to the sidecar's outbound port,
  except the sidecar's own (by its UID or GID: the sidecar runs as a dedicated user, or in
  a dedicated group, so its upstream connections are not captured again), loopback, and
  the skipped ports and CIDRs.

REDIRECT rewrites the destination to the sidecar's port on the local address and leaves
the original in conntrack, where the sidecar reads it back with SO_ORIGINAL_DST. Each
address family gets its own script (`iptables-restore` and `ip6tables-restore`); the
loopback and skip CIDRs of the other family are left out of each.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

CHAINS = ("WEFT_INBOUND", "WEFT_OUTPUT", "WEFT_REDIRECT", "WEFT_IN_REDIRECT")
HOOKS = (("PREROUTING", "WEFT_INBOUND"), ("OUTPUT", "WEFT_OUTPUT"))
DEFAULT_SKIP_INBOUND = (15000, 22)  # the sidecar's admin port, SSH


@dataclass(frozen=True, kw_only=True)
class Interception:
    inbound_port: int = 15006
    outbound_port: int = 15001
    proxy_uid: int | None = None  # the sidecar's user: its traffic is not captured
    proxy_gid: int | None = None  # or its group
    skip_inbound_ports: tuple[int, ...] = DEFAULT_SKIP_INBOUND
    skip_outbound_ports: tuple[int, ...] = ()
    skip_outbound_cidrs: tuple[str, ...] = ()
    inbound: bool = True  # capture inbound at all (a gateway has nothing to capture)

    def __post_init__(self) -> None:
        if self.proxy_uid is None and self.proxy_gid is None:
            raise ValueError(
                "the sidecar's user or group is needed (--proxy-uid or --proxy-gid): without "
                "it the sidecar's own connections would be captured again"
            )
        for port in (self.inbound_port, self.outbound_port, *self.skip_inbound_ports,
                     *self.skip_outbound_ports):  # fmt: skip
            if not 1 <= port <= 65535:
                raise ValueError(f"{port} is not a TCP port")
        for cidr in self.skip_outbound_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an address or CIDR") from None


def install_script(spec: Interception, *, ipv6: bool = False) -> str:
    """`iptables-restore --noflush` input that adds our chains and hooks them in."""
    loopback = "::1/128" if ipv6 else "127.0.0.0/8"
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in CHAINS)]
    lines.append(f"-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports {spec.outbound_port}")
    lines.append(f"-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports {spec.inbound_port}")
    if spec.inbound:
        lines += [f"-A WEFT_INBOUND -p tcp --dport {port} -j RETURN"
                  for port in sorted({*spec.skip_inbound_ports})]  # fmt: skip
        lines.append("-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT")
    if spec.proxy_uid is not None:
        lines.append(f"-A WEFT_OUTPUT -m owner --uid-owner {spec.proxy_uid} -j RETURN")
    if spec.proxy_gid is not None:
        lines.append(f"-A WEFT_OUTPUT -m owner --gid-owner {spec.proxy_gid} -j RETURN")
    lines.append(f"-A WEFT_OUTPUT -d {loopback} -j RETURN")
    lines.append("-A WEFT_OUTPUT -o lo -j RETURN")  # the workload calling its own address
    lines += [f"-A WEFT_OUTPUT -p tcp --dport {port} -j RETURN"
              for port in sorted({*spec.skip_outbound_ports})]  # fmt: skip
    for cidr in spec.skip_outbound_cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        if (network.version == 6) == ipv6:
            lines.append(f"-A WEFT_OUTPUT -d {network} -j RETURN")
    lines.append("-A WEFT_OUTPUT -p tcp -j WEFT_REDIRECT")
    lines += [f"-A {hook} -p tcp -j {chain}" for hook, chain in HOOKS]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def uninstall_commands(*, ipv6: bool = False) -> list[list[str]]:
    """The commands that remove what `install_script` added (each may fail harmlessly
    when that part is not there)."""
    tool = "ip6tables" if ipv6 else "iptables"
    out = [[tool, "-w", "-t", "nat", "-D", hook, "-p", "tcp", "-j", chain]
           for hook, chain in HOOKS]  # fmt: skip
    out += [[tool, "-w", "-t", "nat", "-F", chain] for chain in CHAINS]
    out += [[tool, "-w", "-t", "nat", "-X", chain] for chain in CHAINS]
    return out


def parse_ports(text: str) -> tuple[int, ...]:
    """ "80,443" (spaces allowed, empty: none); ValueError names a bad item."""
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError(f"{item!r} is not a TCP port")
        out.append(int(item))
    return tuple(out)
