"""`meshctl shift`, `status`, `top`, `policy allow|deny|list|remove`: the day-to-day mesh
commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ca.spiffe import SpiffeId
from control.shift import parse_weights
from mesh_ctl.common import CliError, add_server_arguments, admin_client, table
from sidecar.authz import Operation, Policy, Source, denials
from sidecar.config.resources import AuthorizationPolicy

if TYPE_CHECKING:
    from mesh_ctl.client import AdminClient


def shift(args: argparse.Namespace) -> int:
    try:
        weights = parse_weights(args.weights)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    request = {"service": args.service, "namespace": args.namespace, "weights": weights,
               "wait": not args.no_wait, "timeout_s": args.timeout}  # fmt: skip
    reply = admin_client(args).call("Shift", request, timeout_s=args.timeout + 10)
    split = " ".join(f"{v}={w}" for v, w in weights.items())
    if args.no_wait:
        print(f"{args.service}: {split} written (configuration version {reply['version']})")
        return 0
    if reply["lagging"]:
        print(f"{args.service}: {split} written, but not every sidecar applied it "
              f"within {args.timeout:g}s:")  # fmt: skip
        for who in reply["lagging"]:
            print(f"  {who}")
        return 1
    print(f"{args.service}: {split} in force on all {reply['sidecars']} sidecar(s) "
          f"in {reply['seconds'] * 1000:.0f} ms")  # fmt: skip
    return 0


def status(args: argparse.Namespace) -> int:
    reply = admin_client(args).call("Status", {})
    if args.output == "json":
        print(json.dumps(reply, indent=2))
        return 0
    print(f"control plane: ok, configuration generation {reply['generation']} "
          f"(resources version {reply['resource_version']})")  # fmt: skip
    rows = reply["instances"]
    if not rows:
        print("no sidecars registered")
        return 0
    print(f"{'SERVICE':<24} {'VERSION':<8} {'INSTANCE':<13} {'ADDRESS':<22} {'READY':<6} "
          f"{'CONFIG':<10} IDENTITY EXPIRES")  # fmt: skip
    for r in rows:
        config = str(r["config"]) + (" stale" if r["stale"] else "")
        if r["error"]:
            config += " NACK"
        print(f"{r['namespace'] + '/' + r['service']:<24} {r['version'] or '-':<8} {r['id']:<13} "
              f"{r['address'] + ':' + str(r['port']):<22} {'yes' if r['ready'] else 'no':<6} "
              f"{config:<10} {r['identity_expires'][:19] or '-'}")  # fmt: skip
        if r["error"]:
            print(f"    refused: {r['error']}")
    return 0


def top(args: argparse.Namespace) -> int:
    """Every service's RPS, success rate and latency by version, refreshed every
    `--interval` (a terminal is redrawn in place, like `top`); `-o json`: one sample."""
    client = admin_client(args)
    request = {"namespace": args.namespace, "window_s": args.window}
    if args.output == "json":
        print(json.dumps(client.call("Top", request), indent=2))
        return 0
    redraw = sys.stdout.isatty()
    shown = 0
    try:
        while True:
            reply = client.call("Top", request)
            head = (f"meshctl top: {client.target}, last {reply['window_s']:g} s, "
                    f"{time.strftime('%H:%M:%S')} (Ctrl-C to quit)")  # fmt: skip
            print(("\x1b[H\x1b[2J" if redraw else "") + head + "\n" + render_top(reply), flush=True)
            shown += 1
            if shown == args.count:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


def render_top(reply: Mapping[str, Any]) -> str:
    """The table for one Top reply (control/top.py rows)."""
    lines = [
        f"{'SERVICE':<28} {'VERSION':<8} {'INST':>4} {'RPS':>9} {'SUCCESS':>8} "
        f"{'P50 ms':>8} {'P99 ms':>8} {'TCP/s':>7}"
    ]
    for r in reply["services"]:
        success = "-" if r["success"] is None else f"{r['success'] * 100:.2f}%"
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.1f}"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.1f}"
        lines.append(
            f"{r['namespace'] + '/' + r['service']:<28} {r['version'] or '-':<8} "
            f"{r['instances']:>4} {r['rps']:>9.1f} {success:>8} {p50:>8} {p99:>8} "
            f"{r['tcp_cps']:>7.1f}"
        )
    if not reply["services"]:
        lines.append("no sidecars connected")
    return "\n".join(lines)


def policy(args: argparse.Namespace) -> int:
    """`policy allow|deny SOURCE TARGET`: one AuthorizationPolicy named for the pair."""
    action = args.action.upper()
    doc = {
        "apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": _policy_name(args.action, args.source, args.target),
                     "namespace": args.namespace},
        "spec": {"targetRef": {"kind": "Service", "name": args.target}, "action": action,
                 "from": [{"services": [args.source]}]},
    }  # fmt: skip
    if args.path or args.method:
        to: dict[str, list[str]] = {}
        if args.path:
            to["paths"] = args.path
        if args.method:
            to["methods"] = [m.upper() for m in args.method]
        doc["spec"]["to"] = [to]  # type: ignore[index]
    source = f"meshctl policy {args.action} {args.source} {args.target}"
    client = admin_client(args)
    reply = client.call("Apply", {"documents": [{"source": source, "data": doc}]})
    for line in reply["results"]:
        print(line)
    if action == "ALLOW":
        _warn_of_denials(client, args)
    return 0


def _policy_name(action: str, source: str, target: str) -> str:
    return f"{action}-{source}-to-{target}".replace("/", "-").replace(".", "-")


def _policies(client: AdminClient, namespace: str | None) -> list[Policy]:
    from sidecar.config.parse import Document, load_documents

    reply = client.call("Get", {"kind": "AuthorizationPolicy", "namespace": namespace})
    docs = [Document(d, "control plane") for d in reply["documents"]]
    return [r.policy for r in load_documents(docs) if isinstance(r, AuthorizationPolicy)]


def _warn_of_denials(client: AdminClient, args: argparse.Namespace) -> None:
    """A DENY on the same pair wins over the ALLOW just written: say so."""
    ns, _, name = args.source.rpartition("/")
    caller = SpiffeId("weft.local", ns or args.namespace, name)
    found = denials(_policies(client, args.namespace), namespace=args.namespace,
                    service=args.target, peer=caller)  # fmt: skip
    for p in found:
        narrowed = " (for the paths and methods it names)" if p.operations else ""
        print(
            f"warning: AuthorizationPolicy {p.name} denies {args.source} → {args.target}"
            f"{narrowed}, and a DENY wins over any ALLOW: those calls stay refused "
            f"(`meshctl policy remove {args.source} {args.target} --action deny` removes a "
            "deny this command made)",
            file=sys.stderr,
        )


def policy_list(args: argparse.Namespace) -> int:
    """Every AuthorizationPolicy, one line each, and the mesh's default."""
    client = admin_client(args)
    policies = _policies(client, args.namespace)
    mesh = client.call("Get", {"kind": "MeshConfig"})["documents"]
    default = next((d.get("spec", {}).get("defaultPolicy", "allow") for d in mesh), "allow")
    if args.output == "json":
        found = [{"name": p.name, "target": f"{p.namespace}/{p.target}", "action": p.action,
                  "from": [_source_text(s) for s in p.sources] or ["*"],
                  "to": [_operation_text(o) for o in p.operations] or ["*"]}
                 for p in policies]  # fmt: skip
        print(json.dumps({"default": default, "policies": found}, indent=2))
        return 0
    rows = [["NAME", "TARGET", "ACTION", "FROM", "TO"]]
    for p in policies:
        rows.append([
            p.name, f"{p.namespace}/{p.target}", p.action,
            "; ".join(_source_text(s) for s in p.sources) or "*",
            "; ".join(_operation_text(o) for o in p.operations) or "*",
        ])  # fmt: skip
    print(table(rows))
    print(f"default for services without an ALLOW policy: {default} (MeshConfig)")
    return 0


def _source_text(s: Source) -> str:
    parts = [*s.identities, *(f"service {x}" for x in s.services),
             *(f"namespace {x}" for x in s.namespaces)]  # fmt: skip
    return ", ".join(parts)


def _operation_text(o: Operation) -> str:
    return " ".join([",".join(o.methods) or "any", ",".join(o.paths) or "/"])


def policy_remove(args: argparse.Namespace) -> int:
    """Remove what `policy allow|deny SOURCE TARGET` made (both, unless --action)."""
    client = admin_client(args)
    actions = [args.action] if args.action else ["allow", "deny"]
    there = {p.name for p in _policies(client, args.namespace)}
    removed = []
    for action in actions:
        name = _policy_name(action, args.source, args.target)
        if f"{args.namespace}/{name}" not in there:
            continue
        reply = client.call("Delete", {"kind": "AuthorizationPolicy",
                                       "namespace": args.namespace, "name": name})  # fmt: skip
        removed.append(name)
        print(f"AuthorizationPolicy {args.namespace}/{name} deleted "
              f"(configuration version {reply['version']})")  # fmt: skip
    if not removed:
        made = " or ".join(_policy_name(a, args.source, args.target) for a in actions)
        raise CliError(f"no policy {args.source} → {args.target} in {args.namespace} "
                       f"({made}); `meshctl policy list` shows them all")  # fmt: skip
    return 0


SIDECAR_PORTS = (("sidecar admin", 15000), ("sidecar outbound", 15001), ("sidecar inbound", 15006))
MAX_SKEW_S = 30.0  # SVIDs are back-dated 5 minutes; beyond this, expiry times mislead


def check(args: argparse.Namespace) -> int:
    """Pre-flight checks, one line each; exit 1 if any fails."""
    import datetime
    import socket
    import time

    from ca import keystore
    from mesh_ctl.common import data_dir

    results: list[tuple[str, bool, str]] = []

    def add(name: str, ok: bool, text: str, fix: str = "") -> None:
        results.append((name, ok, text if ok or not fix else f"{text} — {fix}"))

    ddir = data_dir(args)
    now = datetime.datetime.now(datetime.UTC)
    try:
        left = keystore.load(ddir, now).signer.cert.not_valid_after_utc - now
        text = f"CA in {keystore.ca_dir(ddir)}: intermediate valid {left.days} more days"
        add("ca", left > datetime.timedelta(days=30), text, "run `meshctl ca rotate`")
    except (keystore.KeystoreError, OSError) as exc:
        add("ca", False, f"CA: {exc}")
    try:
        sent = time.time()
        reply = admin_client(args).call("Status", {}, timeout_s=5)
        rtt = time.time() - sent
        count = len(reply["instances"])
        add("control_plane", True, f"control plane reachable (generation "
            f"{reply['generation']}, {count} instance(s), {rtt * 1000:.0f} ms)")  # fmt: skip
        skew = abs(sent + rtt / 2 - float(reply["time"]))
        add("clock_skew", skew <= MAX_SKEW_S, f"clock skew with the control plane: {skew:.1f} s",
            "synchronize the clocks (NTP)")  # fmt: skip
    except CliError as exc:
        add("control_plane", False, f"control plane: {exc}")
    for what, port in SIDECAR_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                add(f"port_{port}", True, f"port {port} ({what}) is free")
            except OSError as exc:
                add(f"port_{port}", False, f"port {port} ({what}) is taken: {exc.strerror}")
    passed = all(ok for _, ok, _ in results)
    if args.output == "json":
        checks = [{"check": name, "ok": ok, "detail": text} for name, ok, text in results]
        print(json.dumps({"ok": passed, "checks": checks}, indent=2))
    else:
        for _, ok, text in results:
            print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if passed else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="pre-flight checks: CA, control plane, clock, ports")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_server_arguments(p)
    p.set_defaults(func=check)

    p = sub.add_parser("shift", help="split a service's traffic between its versions")
    p.add_argument("service")
    p.add_argument("weights", nargs="+", metavar="VERSION=WEIGHT", help="e.g. v1=90 v2=10")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--no-wait", action="store_true", help="return once written, not applied")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    add_server_arguments(p)
    p.set_defaults(func=shift)

    p = sub.add_parser("status", help="the control plane, and every registered instance")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_server_arguments(p)
    p.set_defaults(func=status)

    p = sub.add_parser("top", help="live RPS, success rate and latency of every service")
    p.add_argument("-n", "--namespace", default=None, help="only this namespace")
    p.add_argument(
        "--window",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="rates and latency over this many past seconds (2 to 120; default 10)",
    )
    p.add_argument(
        "--interval",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="refresh every this many seconds (default 2)",
    )
    p.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="stop after N refreshes (default: until Ctrl-C)",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=("table", "json"),
        default="table",
        help="json: print one sample and exit",
    )
    add_server_arguments(p)
    p.set_defaults(func=top)

    p = sub.add_parser("policy", help="allow or deny calls between services; list, remove")
    verbs = p.add_subparsers(dest="action", required=True, metavar="allow|deny|list|remove")
    for action in ("allow", "deny"):
        v = verbs.add_parser(action, help=f"{action} calls from one service to another")
        v.add_argument("source", help="the calling service (name or namespace/name)")
        v.add_argument("target", help="the called service")
        v.add_argument("-n", "--namespace", default="default", help="the target's namespace")
        v.add_argument("--path", action="append", help="only these path prefixes")
        v.add_argument("--method", action="append", help="only these methods")
        add_server_arguments(v)
        v.set_defaults(func=policy)
    v = verbs.add_parser("list", help="every AuthorizationPolicy and the mesh's default")
    v.add_argument("-n", "--namespace", default=None, help="default: all namespaces")
    v.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_server_arguments(v)
    v.set_defaults(func=policy_list)
    v = verbs.add_parser("remove", help="remove what `policy allow|deny SOURCE TARGET` made")
    v.add_argument("source")
    v.add_argument("target")
    v.add_argument("-n", "--namespace", default="default", help="the target's namespace")
    v.add_argument("--action", choices=("allow", "deny"), help="only this one (default: both)")
    add_server_arguments(v)
    v.set_defaults(func=policy_remove)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"out of range: {text}")
    return value
