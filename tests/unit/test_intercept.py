"""Transparent interception's pure parts: the rules `meshctl init` installs, the original
destination's sockaddr, and which mesh destination an intercepted address is (from what
the control plane pushes: instances' app ports, Services' virtual addresses)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

import pytest

from control.registry import Instance, Registry
from control.snapshot import documents_for
from control.store import Resources
from sidecar.config.mesh import outbound_config
from sidecar.config.model import ListenerKey
from sidecar.config.parse import Document, load_documents
from sidecar.errors import ConfigError
from sidecar.intercept.origdst import parse_sockaddr
from sidecar.intercept.rules import Interception, install_script, parse_ports, uninstall_commands

OUT = ListenerKey(address="127.0.0.1", port=15001)


def test_the_rules_capture_tcp_both_ways_and_spare_the_sidecar_loopback_and_skips() -> None:
    spec = Interception(
        proxy_uid=10001, skip_inbound_ports=(15000, 22, 22), skip_outbound_ports=(5432,),
        skip_outbound_cidrs=("169.254.169.254", "fd00::/8"),
    )  # fmt: skip
    lines = install_script(spec).splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    output = [line for line in lines if line.startswith("-A WEFT_OUTPUT")]
    # the exclusions come before the redirect, which is last
    assert output == [
        "-A WEFT_OUTPUT -m owner --uid-owner 10001 -j RETURN",
        "-A WEFT_OUTPUT -d 127.0.0.0/8 -j RETURN",
        "-A WEFT_OUTPUT -o lo -j RETURN",
        "-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A WEFT_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A WEFT_OUTPUT -p tcp -j WEFT_REDIRECT",
    ]
    inbound = [line for line in lines if line.startswith("-A WEFT_INBOUND")]
    assert inbound == [
        "-A WEFT_INBOUND -p tcp --dport 22 -j RETURN",
        "-A WEFT_INBOUND -p tcp --dport 15000 -j RETURN",
        "-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT",
    ]
    assert "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in lines
    assert "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006" in lines
    assert "-A PREROUTING -p tcp -j WEFT_INBOUND" in lines
    assert "-A OUTPUT -p tcp -j WEFT_OUTPUT" in lines
    v6 = install_script(spec, ipv6=True)
    assert "-d ::1/128 -j RETURN" in v6 and "-d fd00::/8 -j RETURN" in v6
    assert "169.254.169.254" not in v6 and "127.0.0.0/8" not in v6


def test_outbound_only_and_by_group() -> None:
    script = install_script(Interception(proxy_gid=1337, inbound=False))
    assert "--gid-owner 1337" in script and "--uid-owner" not in script
    assert "-A WEFT_INBOUND" not in script  # the chain exists, empty: nothing captured


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "user or group is needed"),
        ({"proxy_uid": 1, "outbound_port": 0}, "0 is not a TCP port"),
        ({"proxy_uid": 1, "skip_outbound_cidrs": ("10.0.0.0/33",)}, "is not an address or CIDR"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Interception(**kwargs)


def test_port_lists() -> None:
    assert parse_ports(" 80, 443 ,") == (80, 443)
    assert parse_ports("") == ()
    with pytest.raises(ValueError, match="'http' is not a TCP port"):
        parse_ports("80,http")


def test_uninstall_removes_the_hooks_then_the_chains() -> None:
    cmds = uninstall_commands(ipv6=True)
    assert all(c[0] == "ip6tables" for c in cmds)
    assert cmds[0][-4:] == ["-p", "tcp", "-j", "WEFT_INBOUND"] and "-D" in cmds[0]
    assert [c[-2:] for c in cmds[-4:]] == [["-X", "WEFT_INBOUND"], ["-X", "WEFT_OUTPUT"],
                                          ["-X", "WEFT_REDIRECT"], ["-X", "WEFT_IN_REDIRECT"]]  # fmt: skip


def test_sockaddrs_as_the_kernel_writes_them() -> None:
    v4 = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 8080)
    v4 += socket.inet_pton(socket.AF_INET, "10.1.2.3") + bytes(8)
    assert parse_sockaddr(v4) == ("10.1.2.3", 8080)
    v6 = struct.pack("<H", socket.AF_INET6) + struct.pack(">H", 443) + bytes(4)
    v6 += socket.inet_pton(socket.AF_INET6, "fd00::5") + bytes(4)
    assert parse_sockaddr(v6) == ("fd00::5", 443)
    assert parse_sockaddr(b"\x00" * 16) is None
    assert parse_sockaddr(v4[:6]) is None


def _pushed(declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reg = Registry()
    for i, (svc, address, app_port) in enumerate(
        [("orders", "10.0.0.5", 8080), ("orders", "10.0.0.6", 8080), ("web", "10.0.0.7", 3000)]
    ):
        reg.put(Instance(id=f"i{i}", namespace="default", service=svc, version="",
                         address=address, port=15006, ready=True, app_port=app_port), now=0.0)  # fmt: skip
    res, _ = Resources().apply([Document(d, f"doc {i}") for i, d in enumerate(declared)])
    return documents_for(res, reg, "default", "web")


def test_an_instances_address_at_its_app_port_is_its_service() -> None:
    names = outbound_config(_pushed([]), OUT, "default").names
    assert names.by_address("10.0.0.5", 8080) == ("default", "orders", 80)
    assert names.by_address("10.0.0.6", 80) == ("default", "orders", 80)  # a Service port
    assert names.by_address("10.0.0.7", 3000) == ("default", "web", 80)
    assert names.by_address("10.0.0.5", 9999) is None  # another port: outside the mesh
    assert names.by_address("10.9.9.9", 8080) is None


KUBE_SERVICE = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders"},
    "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::a"],
             "ports": [{"port": 80, "name": "http"}, {"port": 9000, "name": "grpc",
                                                      "appProtocol": "kubernetes.io/h2c"}]},
}  # fmt: skip
WEFT_SERVICE = {
    "apiVersion": "weft.dev/v1alpha1", "kind": "Service", "metadata": {"name": "db"},
    "spec": {"addresses": ["10.96.0.20"], "ports": [{"port": 5432, "protocol": "TCP"}],
             "endpoints": [{"address": "127.0.0.1", "port": 25432}]},
}  # fmt: skip


def test_a_services_virtual_addresses_are_its_ports_there() -> None:
    pushed = _pushed([KUBE_SERVICE, WEFT_SERVICE])
    docs = {d["metadata"]["name"]: d for d in pushed if d["kind"] == "Service"}
    assert docs["orders"]["spec"]["addresses"] == ["10.96.0.10", "fd00::a"]
    names = outbound_config(pushed, OUT, "default").names
    assert names.by_address("10.96.0.10", 9000) == ("default", "orders", 9000)
    assert names.by_address("fd00::a", 80) == ("default", "orders", 80)
    assert names.by_address("10.96.0.10", 8080) is None  # not a port of the Service
    assert names.by_address("10.96.0.20", 5432) == ("default", "db", 5432)
    # what the sidecar compiles from the push accepts the new fields
    load_documents(Document(d, "pushed") for d in pushed)


def test_a_virtual_address_that_is_not_an_ip_is_refused() -> None:
    bad = {**WEFT_SERVICE, "spec": {**WEFT_SERVICE["spec"], "addresses": ["db.internal"]}}
    with pytest.raises(ConfigError, match=r"'db\.internal' is not an IP address"):
        load_documents([Document(bad, "db.yaml")])


def test_a_transparent_mesh_picks_a_free_subnet_and_writes_every_name() -> None:
    from mesh_ctl import transparent

    taken = [ipaddress.IPv4Network("10.233.7.0/24"), ipaddress.IPv4Network("10.233.8.0/22")]
    assert str(transparent.pick_subnet(taken, owner=7)) == "10.233.12.0/24"  # 8-11 in the /22
    assert str(transparent.pick_subnet([], owner=256 + 3)) == "10.233.3.0/24"
    with pytest.raises(RuntimeError, match="no free /24"):
        transparent.pick_subnet([ipaddress.IPv4Network("10.233.0.0/16")], owner=1)
    net = transparent.Network(owner=42, subnet=ipaddress.IPv4Network("10.233.5.0/24"))
    assert [net.add("orders-v1"), net.add("orders-v2"), net.add("web")] == [
        "10.233.5.10", "10.233.5.11", "10.233.5.12"]  # fmt: skip
    assert net.gateway == "10.233.5.1" and net.namespace("web") == "wup42-web"
    hosts = transparent.hosts_file(
        {"orders": ["10.233.5.10", "10.233.5.11"], "web": ["10.233.5.12"]}
    )
    assert "10.233.5.10\torders\n10.233.5.11\torders\n10.233.5.12\tweb\n" in hosts
    assert hosts.startswith("127.0.0.1\tlocalhost\n")
    cmd = net.run_in("web", ["meshctl", "sidecar"], gid=1337)
    assert cmd[:4] == ["ip", "netns", "exec", "wup42-web"] and "--regid=1337" in cmd
    assert "--pdeathsig=keep" in cmd  # a change of group would clear it


def test_without_root_transparent_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from mesh_ctl import transparent

    monkeypatch.setattr(transparent.os, "geteuid", lambda: 1000)
    assert transparent.unavailable() == "--transparent needs root (network namespaces and iptables)"


def test_the_advertised_address_is_the_one_facing_the_control_plane() -> None:
    from sidecar.transport.io import local_address_towards

    assert local_address_towards("127.0.0.1:15010") == "127.0.0.1"
    assert local_address_towards("localhost:15010,cp2:15010") in ("127.0.0.1", "::1")
    assert local_address_towards("no-such-host.invalid:15010") == "127.0.0.1"
    assert local_address_towards("garbage") == "127.0.0.1"
