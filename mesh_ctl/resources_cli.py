"""`meshctl apply -f`, `get`, `delete`: the control plane's resources, kubectl-style."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mesh_ctl.common import CliError, add_server_arguments, admin_client, table


def apply(args: argparse.Namespace) -> int:
    # YAML and the resource parsers load when a command needs them, not with every meshctl
    from sidecar.config.loader import expand, read_documents

    docs = read_documents(expand(args.file))
    request = {
        "documents": [{"source": d.source, "data": d.data} for d in docs if d.data is not None]
    }
    reply = admin_client(args).call("Apply", request)
    for line in reply["results"]:
        print(line)
    print(f"configuration version {reply['version']}")
    return 0


def get(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    request = {"kind": kind, "namespace": args.namespace, "name": args.name}
    client = admin_client(args)
    reply = client.call("Get", request)
    docs: list[dict[str, Any]] = reply["documents"]
    if kind == "Service":  # declared ones, and those only sidecars registered
        docs = with_registered(docs, client.call("Status", {})["instances"], args)
    if args.name and not docs:
        raise CliError(f"{kind} {args.namespace or 'default'}/{args.name} not found")
    if args.output == "json":
        print(json.dumps(docs[0] if args.name else docs, indent=2))
    elif args.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    elif kind == "Service":
        rows = [["NAMESPACE", "NAME", "SOURCE", "INSTANCES", "VERSIONS"]]
        for d in docs:
            st = d["status"]
            rows.append([d["metadata"].get("namespace", "default"), d["metadata"]["name"],
                         st["source"], f"{st['ready']}/{st['instances']}",
                         ",".join(v or "-" for v in st["versions"]) or "-"])  # fmt: skip
        print(table(rows))
    else:
        print(f"{'KIND':<20} {'NAMESPACE':<16} NAME")
        for d in docs:
            md = d.get("metadata", {})
            print(f"{kind:<20} {md.get('namespace', 'default'):<16} {md.get('name')}")
    return 0


def with_registered(
    docs: list[dict[str, Any]], instances: list[dict[str, Any]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Service documents, each with a `status` (where it comes from, its instances), plus
    one for each service that sidecars registered without a declaration."""
    by_name: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for inst in instances:
        if args.namespace not in (None, inst["namespace"]) or args.name not in (
            None,
            inst["service"],
        ):
            continue
        by_name.setdefault((inst["namespace"], inst["service"]), []).append(inst)
    out = []
    for d in docs:
        md = d.get("metadata", {})
        key = (md.get("namespace", "default"), md.get("name", ""))
        out.append({**d, "status": _status("declared", by_name.pop(key, []))})
    for (ns, name), insts in sorted(by_name.items()):
        ports = sorted({(i["protocol"]) for i in insts})
        out.append({
            "apiVersion": "weft.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"ports": [{"port": 80, "protocol": p} for p in ports]},
            "status": _status("registered", insts),
        })  # fmt: skip
    for d in out:
        if d["status"]["source"] == "declared" and d["status"]["instances"]:
            d["status"]["source"] = "declared, registered"
    return out


def _status(source: str, insts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "source": source,
        "instances": len(insts),
        "ready": sum(1 for i in insts if i.get("ready")),
        "versions": sorted({i["version"] for i in insts}),
    }


def delete(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    request = {"kind": kind, "namespace": args.namespace, "name": args.name}
    reply = admin_client(args).call("Delete", request)
    print(f"{kind} {args.namespace}/{args.name} deleted")
    print(f"configuration version {reply['version']}")
    return 0


def _kind(name: str) -> str:
    from control.store import kind_of

    try:
        return kind_of(name)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("apply", help="create or update resources from YAML files")
    p.add_argument("-f", "--file", action="append", required=True, metavar="PATH",
                   help="YAML file or directory of them; repeat for more")  # fmt: skip
    add_server_arguments(p)
    p.set_defaults(func=apply)

    p = sub.add_parser("get", help="list resources of a kind, or print one")
    p.add_argument("kind", help="e.g. routes, services, policies, gateways, meshconfig")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", default=None, help="default: all namespaces")
    p.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    add_server_arguments(p)
    p.set_defaults(func=get)

    p = sub.add_parser("delete", help="delete one resource")
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    add_server_arguments(p)
    p.set_defaults(func=delete)
