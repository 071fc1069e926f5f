"""`meshctl shift`, `status`, `top`, `policy allow|deny`: the day-to-day mesh commands."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from typing import Any

from control.shift import parse_weights
from mesh_ctl.common import CliError, add_server_arguments, admin_client


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
    action = args.action.upper()
    name = f"{args.action}-{args.source}-to-{args.target}".replace("/", "-").replace(".", "-")
    doc = {
        "apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": args.namespace},
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
    reply = admin_client(args).call("Apply", {"documents": [{"source": source, "data": doc}]})
    for line in reply["results"]:
        print(line)
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

    results: list[tuple[bool, str]] = []

    def add(ok: bool, text: str, fix: str = "") -> None:
        results.append((ok, text if ok or not fix else f"{text} — {fix}"))

    ddir = data_dir(args)
    now = datetime.datetime.now(datetime.UTC)
    try:
        left = keystore.load(ddir, now).signer.cert.not_valid_after_utc - now
        text = f"CA in {keystore.ca_dir(ddir)}: intermediate valid {left.days} more days"
        add(left > datetime.timedelta(days=30), text, "run `meshctl ca rotate`")
    except (keystore.KeystoreError, OSError) as exc:
        add(False, f"CA: {exc}")
    try:
        sent = time.time()
        reply = admin_client(args).call("Status", {}, timeout_s=5)
        rtt = time.time() - sent
        count = len(reply["instances"])
        add(True, f"control plane reachable (generation {reply['generation']}, "
                  f"{count} instance(s), {rtt * 1000:.0f} ms)")  # fmt: skip
        skew = abs(sent + rtt / 2 - float(reply["time"]))
        add(skew <= MAX_SKEW_S, f"clock skew with the control plane: {skew:.1f} s",
            "synchronize the clocks (NTP)")  # fmt: skip
    except CliError as exc:
        add(False, f"control plane: {exc}")
    for what, port in SIDECAR_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                add(True, f"port {port} ({what}) is free")
            except OSError as exc:
                add(False, f"port {port} ({what}) is taken: {exc.strerror}")
    for ok, text in results:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for ok, _ in results) else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check", help="pre-flight checks: CA, control plane, clock, ports")
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

    p = sub.add_parser("policy", help="allow or deny calls from one service to another")
    p.add_argument("action", choices=("allow", "deny"))
    p.add_argument("source", help="the calling service (name or namespace/name)")
    p.add_argument("target", help="the called service")
    p.add_argument("-n", "--namespace", default="default", help="the target's namespace")
    p.add_argument("--path", action="append", help="only these path prefixes")
    p.add_argument("--method", action="append", help="only these methods")
    add_server_arguments(p)
    p.set_defaults(func=policy)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"out of range: {text}")
    return value
