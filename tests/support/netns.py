"""Network namespaces a test creates and removes (root only): two namespaces joined by a
veth pair on a private /24 and /64, as two pods or two compose services on one network are."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

TOOLS = ("ip", "iptables-restore", "setpriv", "curl")


def unavailable() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


@dataclass(frozen=True)
class Pair:
    a: str  # namespace names
    b: str
    ip_a: str
    ip_b: str
    ip6_a: str
    ip6_b: str
    net: int  # the third octet of the pair's /24 (and the /64's fourth group)

    def vip(self, ipv6: bool = False) -> str:
        """An unassigned address on the pair's network (a Service's virtual address)."""
        return f"fd00:211:{self.net}::100" if ipv6 else f"10.211.{self.net}.100"

    def cmd(self, ns: str, *argv: str, gid: int | None = None) -> list[str]:
        """`argv` run inside namespace `ns` (in group `gid`: a sidecar's own group)."""
        group = ["setpriv", f"--regid={gid}", "--clear-groups"] if gid is not None else []
        return ["ip", "netns", "exec", ns, *group, *argv]

    def run(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cmd(ns, *argv), check=False, capture_output=True, text=True, timeout=30
        )


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def namespace_pair() -> Iterator[Pair]:
    """Two fresh namespaces, loopback up, a veth pair between them; all removed after."""
    tag = f"{os.getpid() % 100000}"
    net = 16 + os.getpid() % 200  # a /24 of 10.211.0.0/16 per test process
    pair = Pair(f"weft-a{tag}", f"weft-b{tag}", f"10.211.{net}.1", f"10.211.{net}.2",
                f"fd00:211:{net}::1", f"fd00:211:{net}::2", net)  # fmt: skip
    veth_a, veth_b = f"wa{tag}", f"wb{tag}"
    try:
        for ns in (pair.a, pair.b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        for ns, dev, addr, addr6 in ((pair.a, veth_a, pair.ip_a, pair.ip6_a),
                                     (pair.b, veth_b, pair.ip_b, pair.ip6_b)):  # fmt: skip
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "addr", "add", f"{addr6}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        yield pair
    finally:
        for ns in (pair.a, pair.b):  # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=10)
