"""`meshctl apply -f`, `get`, `delete`: the control plane's resources, kubectl-style."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from control.store import kind_of
from mesh_ctl.common import CliError, add_server_arguments, admin_client
from sidecar.config.loader import expand, read_documents


def apply(args: argparse.Namespace) -> int:
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
    reply = admin_client(args).call("Get", request)
    docs: list[dict[str, Any]] = reply["documents"]
    if args.name and not docs:
        raise CliError(f"{kind} {args.namespace or 'default'}/{args.name} not found")
    if args.output == "json":
        print(json.dumps(docs[0] if args.name else docs, indent=2))
    elif args.output == "yaml":
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    else:
        print(f"{'KIND':<20} {'NAMESPACE':<16} NAME")
        for d in docs:
            md = d.get("metadata", {})
            print(f"{kind:<20} {md.get('namespace', 'default'):<16} {md.get('name')}")
    return 0


def delete(args: argparse.Namespace) -> int:
    kind = _kind(args.kind)
    request = {"kind": kind, "namespace": args.namespace, "name": args.name}
    reply = admin_client(args).call("Delete", request)
    print(f"{kind} {args.namespace}/{args.name} deleted")
    print(f"configuration version {reply['version']}")
    return 0


def _kind(name: str) -> str:
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
