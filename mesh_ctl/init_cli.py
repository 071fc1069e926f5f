"""`meshctl init`: install (or with `--uninstall` remove) the interception rules in the
current network namespace, then exit, as istio-init and linkerd-init do. Needs NET_ADMIN
(root, or a container with that capability); the rules are sidecar/intercept/rules.py's."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

from mesh_ctl.common import CliError
from sidecar.intercept.rules import (
    DEFAULT_SKIP_INBOUND,
    Interception,
    install_script,
    parse_ports,
    uninstall_commands,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init", help="redirect this network namespace's TCP to its sidecar (iptables), then exit"
    )
    p.add_argument("--proxy-uid", type=int, help="the sidecar's user: its traffic is not captured")
    p.add_argument("--proxy-gid", type=int, help="or the sidecar's group")
    p.add_argument("--inbound-port", type=int, default=15006)
    p.add_argument("--outbound-port", type=int, default=15001)
    p.add_argument(
        "--skip-inbound-ports", default=",".join(map(str, DEFAULT_SKIP_INBOUND)),
        metavar="PORT,…", help="inbound ports not captured (default: 15000,22)",
    )  # fmt: skip
    p.add_argument("--skip-outbound-ports", default="", metavar="PORT,…")
    p.add_argument(
        "--skip-outbound-cidrs", default="", metavar="CIDR,…",
        help="destinations not captured (a cloud's metadata address, a database outside)",
    )  # fmt: skip
    p.add_argument("--no-inbound", action="store_true", help="capture outbound traffic only")
    p.add_argument("--ipv6", action="store_true", help="also capture IPv6 (ip6tables)")
    p.add_argument("--uninstall", action="store_true", help="remove the rules and exit")
    p.add_argument(
        "--dry-run", action="store_true", help="print the iptables-restore input, change nothing"
    )
    p.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    families = [False, True] if args.ipv6 else [False]
    if args.uninstall:  # both families: whatever an earlier `init` installed
        for ipv6 in (False, True):
            _remove(ipv6, dry_run=args.dry_run)
        return 0
    try:
        spec = Interception(
            inbound_port=args.inbound_port, outbound_port=args.outbound_port,
            proxy_uid=args.proxy_uid, proxy_gid=args.proxy_gid,
            skip_inbound_ports=parse_ports(args.skip_inbound_ports),
            skip_outbound_ports=parse_ports(args.skip_outbound_ports),
            skip_outbound_cidrs=tuple(c.strip() for c in args.skip_outbound_cidrs.split(",")
                                      if c.strip()),
            inbound=not args.no_inbound,
        )  # fmt: skip
    except ValueError as exc:
        raise CliError(str(exc)) from None
    for ipv6 in families:
        script = install_script(spec, ipv6=ipv6)
        if args.dry_run:
            sys.stdout.write(script)
            continue
        _remove(ipv6, dry_run=False)  # installing twice leaves one copy
        tool = _tool("ip6tables-restore" if ipv6 else "iptables-restore")
        done = subprocess.run([tool, "-w", "--noflush"], input=script, text=True,
                              capture_output=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise CliError(f"{tool}: {done.stderr.strip() or 'failed'} (NET_ADMIN is needed)")
    if not args.dry_run:
        print("interception rules installed: outbound TCP to port "
              f"{spec.outbound_port}" + (f", inbound to {spec.inbound_port}" if spec.inbound
                                           else ""))  # fmt: skip
    return 0


def _remove(ipv6: bool, *, dry_run: bool) -> None:
    """Remove our chains; parts already gone are fine."""
    for cmd in uninstall_commands(ipv6=ipv6):
        if dry_run:
            print(" ".join(cmd))
            continue
        tool = shutil.which(cmd[0]) or shutil.which(cmd[0], path="/usr/sbin:/sbin")
        if tool is None:  # without the tool there are no such rules to remove
            return
        subprocess.run([tool, *cmd[1:]], capture_output=True, check=False)


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise CliError(f"{name} not found: install iptables (Debian: apt-get install iptables)")
    return found
