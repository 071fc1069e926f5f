"""`meshctl traces`: recent traces from the control plane's own OTLP receiver, as a list or
one trace as a waterfall in the terminal (no Jaeger needed)."""

from __future__ import annotations

import argparse
import datetime
import json

from mesh_ctl.common import add_server_arguments, admin_client, table


def traces(args: argparse.Namespace) -> int:
    """Complete traces (no new span for a few seconds), newest first; or one drawn."""
    from control.traces import waterfall  # grpc loads with it: not in every meshctl

    client = admin_client(args)
    if args.last and not args.trace_id:
        reply = client.call("Traces", {"limit": 1, "service": args.service})
        if not reply["traces"]:
            print(_none(reply["receiving"]))
            return 0
        args.trace_id = reply["traces"][0]["trace_id"]
    if args.trace_id:
        one = client.call("Traces", {"trace_id": args.trace_id})
        print(json.dumps(one, indent=2) if args.output == "json" else waterfall(
            one["trace_id"], one["spans"]))  # fmt: skip
        return 0
    reply = client.call("Traces", {"limit": args.limit, "service": args.service})
    if args.output == "json":
        print(json.dumps(reply, indent=2))
        return 0
    if not reply["traces"]:
        print(_none(reply["receiving"]))
        return 0
    rows = [["TRACE ID", "STARTED", "ROOT", "SPANS", "DURATION", "ERRORS", "SERVICES"]]
    for t in reply["traces"]:
        started = datetime.datetime.fromtimestamp(t["start_ns"] / 1e9).strftime("%H:%M:%S")
        rows.append([t["trace_id"], started, t["root"], str(t["spans"]),
                     f"{t['duration_ms']:.1f} ms", str(t["errors"]),
                     ",".join(t["services"])])  # fmt: skip
    print(table(rows))
    more = f"; {reply['receiving']} newer still receiving spans" if reply["receiving"] else ""
    print(f"`meshctl traces ID` (or a prefix of it) draws one, `--last` the newest{more}")
    return 0


def _none(receiving: int) -> str:
    if receiving:
        return f"{receiving} trace(s) still receiving spans: complete in a few seconds"
    return "no traces received yet (proxies export to the control plane's --otlp-listen)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("traces", help="recent traces from the control plane's OTLP receiver")
    p.add_argument("trace_id", nargs="?", help="draw this trace (an id or a prefix of one)")
    p.add_argument("--last", action="store_true", help="draw the newest trace")
    p.add_argument("--service", default="", help="only traces through this service")
    p.add_argument("--limit", type=int, default=20, help="how many to list (default 20)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_server_arguments(p)
    p.set_defaults(func=traces)
