"""`meshctl up --transparent`'s network: a network namespace per instance, as a pod is,
joined by veth pairs to a bridge the command creates, on a private /24 it picks, with the
mesh's service names in an /etc/hosts of each namespace (`ip netns exec` mounts
/etc/netns/NAME/hosts over /etc/hosts). Needs root.

Everything is named after the owning `meshctl up`'s process id (`wup<PID>…`), so `remove`
deletes exactly one mesh's network and `leftovers` finds those whose owner is gone (a
crash, a SIGKILL) for `meshctl up --cleanup`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "wup"
NETNS_ETC = Path("/etc/netns")
SUPERNET = ipaddress.IPv4Network("10.233.0.0/16")  # one /24 of it per mesh
PROXY_GID = 1337  # sidecars run in this group: `meshctl init` spares their traffic
APP_PORT = 8080  # every app listens here, in its own namespace
TOOLS = ("ip", "iptables-restore", "setpriv")
# Names come from the hosts file; no DNS server answers in the namespaces, so a lookup
# that gets past the file fails at once instead of waiting for the host's servers.
RESOLV_CONF = "# meshctl up --transparent: names are in /etc/hosts\noptions timeout:1 attempts:1\n"
# gRPC's own resolver (c-ares) asks DNS servers only; the system's reads the hosts file.
APP_ENV = {"GRPC_DNS_RESOLVER": "native"}


def unavailable() -> str | None:
    """Why a transparent mesh cannot run here (one line), or None."""
    if os.geteuid() != 0:
        return "--transparent needs root (network namespaces and iptables)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"--transparent needs {', '.join(missing)} (Debian: iproute2, iptables, util-linux)"
    return None


@dataclass
class Network:
    owner: int  # the pid of the `meshctl up` it belongs to
    subnet: ipaddress.IPv4Network
    addresses: dict[str, str] = field(default_factory=dict)  # instance -> its address

    @property
    def tag(self) -> str:
        return f"{PREFIX}{self.owner}"

    @property
    def gateway(self) -> str:
        """The bridge's address: where the root namespace's processes listen."""
        return str(self.subnet.network_address + 1)

    def namespace(self, instance: str) -> str:
        return f"{self.tag}-{instance}"

    def add(self, instance: str) -> str:
        """An address for one more instance (from .10 up)."""
        address = str(self.subnet.network_address + 10 + len(self.addresses))
        self.addresses[instance] = address
        return address

    def run_in(self, instance: str, argv: list[str], *, gid: int | None = None) -> list[str]:
        """`argv` inside the instance's namespace (in group `gid`: a sidecar), keeping the
        parent-death signal that a change of group would clear."""
        group = ["setpriv", f"--regid={gid}", "--clear-groups", "--pdeathsig=keep"]
        return ["ip", "netns", "exec", self.namespace(instance), *(group if gid else []), *argv]


def hosts_file(names: dict[str, list[str]]) -> str:
    """/etc/hosts for the namespaces: each service name with its instances' addresses."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{address}\t{name}" for name, addresses in names.items() for address in addresses]
    return "\n".join(lines) + "\n"


def pick_subnet(in_use: list[ipaddress.IPv4Network], owner: int) -> ipaddress.IPv4Network:
    """A /24 of SUPERNET that overlaps no network the host already has (its addresses and
    routes), starting at one the owner's pid picks, so two meshes rarely race for one."""
    subnets = list(SUPERNET.subnets(new_prefix=24))
    start = owner % len(subnets)
    for subnet in subnets[start:] + subnets[:start]:
        if not any(subnet.overlaps(net) for net in in_use):
            return subnet
    raise RuntimeError(f"no free /24 left in {SUPERNET}")


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of the host's routes (`ip -4 route`)."""
    out = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                         text=True, check=False, timeout=10).stdout  # fmt: skip
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("local", "broadcast", "unicast"):
            first = line.split()[1]
        if first == "default":
            continue
        try:
            nets.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False, timeout=10)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def create(net: Network, names: dict[str, list[str]]) -> None:
    """The bridge, and per instance its namespace, veth pair, address, default route and
    hosts file. RuntimeError (with what failed) after removing what was made."""
    try:
        bridge = net.tag
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{net.gateway}/{net.subnet.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        hosts = hosts_file(names)
        for i, (instance, address) in enumerate(net.addresses.items()):
            ns, outer, inner = net.namespace(instance), f"{net.tag}h{i}", f"{net.tag}n{i}"
            _ip("netns", "add", ns)
            (NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / ns / "hosts").write_text(hosts)
            (NETNS_ETC / ns / "resolv.conf").write_text(RESOLV_CONF)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/{net.subnet.prefixlen}", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "route", "add", "default", "via", net.gateway)
    except (RuntimeError, OSError):
        remove(net.owner)
        raise


def remove(owner: int) -> list[str]:
    """Everything of the mesh `owner` made: processes left in its namespaces, the
    namespaces (their veth pairs go with them), hosts files, the bridge. What it removed."""
    tag = f"{PREFIX}{owner}"
    removed = []
    for ns in _namespaces():
        if ns == tag or ns.startswith(f"{tag}-"):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  check=False, timeout=10).stdout.split()  # fmt: skip
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    continue
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False, timeout=10)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
            removed.append(f"namespace {ns}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=False, timeout=10).stdout  # fmt: skip
    for name in re.findall(rf"^\d+: ({tag}(?:h\d+)?)[@:]", links, re.MULTILINE):
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False, timeout=10)
        removed.append(f"link {name}")
    return removed


def leftovers() -> list[int]:
    """Owners of transparent meshes whose `meshctl up` is gone."""
    owners = set()
    for ns in _namespaces():
        found = re.match(rf"{PREFIX}(\d+)-", ns)
        if found:
            owners.add(int(found.group(1)))
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=False, timeout=10).stdout  # fmt: skip
    owners.update(int(m) for m in re.findall(rf"^\d+: {PREFIX}(\d+)[@:]", links, re.MULTILINE))
    return sorted(o for o in owners if not _alive(o))


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False,
                         timeout=10).stdout  # fmt: skip
    return [line.split()[0] for line in out.splitlines() if line.split()]


def _alive(pid: int) -> bool:
    """Whether `pid` is still a `meshctl` (not a later process that took its number)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"mesh_ctl" in cmdline or b"meshctl" in cmdline
