"""`meshctl inject compose FILE` and `meshctl uninject compose FILE`: the file with the mesh
written in (or taken out), on standard output or in place. A round-trip YAML loader
(ruamel.yaml) keeps the user's comments, order and quoting; what Weft adds is written in
the compact style compose files use."""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh_ctl.common import CliError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, what in (("inject", "write the mesh's sidecars into"),
                       ("uninject", "take the mesh's sidecars out of")):  # fmt: skip
        p = sub.add_parser(verb, help=f"{what} a docker compose file")
        kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
        c = kinds.add_parser("compose", help=f"{what} a docker compose file")
        c.add_argument("file", help="the compose file (- for standard input)")
        c.add_argument("--service", action="append", default=[], metavar="NAME",
                       help="only these services (default: every one that can be)")  # fmt: skip
        c.add_argument("-i", "--in-place", action="store_true", help="rewrite FILE")
        if verb == "inject":
            c.add_argument("--image", default="weft:latest", help="default: %(default)s")
            c.add_argument(
                "--control-plane", default="", metavar="HOST:PORT",
                help="an existing control plane (default: add one to the file)",
            )  # fmt: skip
            c.add_argument("--app-port", action="append", default=[], metavar="SERVICE=PORT",
                           help="the app's port where the file does not say it")  # fmt: skip
        c.set_defaults(func=_compose, verb=verb)
        k = kinds.add_parser("k8s", help=f"{what} Kubernetes manifests (workloads, Pods, Lists)")
        k.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                       help="a manifest file, a directory of them, or - (repeatable)")  # fmt: skip
        if verb == "inject":
            k.add_argument("--image", default="weft:latest", help="default: %(default)s")
            k.add_argument("--control-plane", default="weft-control-plane.weft-system.svc:15010",
                           metavar="HOST:PORT", help="default: %(default)s")  # fmt: skip
            k.add_argument(
                "--ca-fingerprint", default="", metavar="sha256:HEX",
                help="the mesh's root (default: read from --data-dir's CA)",
            )  # fmt: skip
            k.add_argument("--data-dir", help="default: $WEFT_DATA_DIR or ~/.weft")
        k.set_defaults(func=_kubernetes, verb=verb)
    p = sub.add_parser("install", help="print what runs the mesh on a platform")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    i = kinds.add_parser("k8s", help="the control plane's manifests (| kubectl apply -f -)")
    i.add_argument("--image", default="weft:latest", help="default: %(default)s")
    i.add_argument("--data-dir", help="the CA to install (`meshctl ca init`); default ~/.weft")
    i.set_defaults(func=_install)


def _kubernetes(args: argparse.Namespace) -> int:
    from ruamel.yaml.error import YAMLError

    from mesh_ctl.inject import kubernetes
    from mesh_ctl.inject.compose import InjectError

    yaml = _yaml()
    docs: list[Any] = []
    for path in _manifests(args.filename):
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
            docs += [d for d in yaml.load_all(text) if d is not None]
        except (OSError, YAMLError) as exc:
            raise CliError(f"{path}: {exc}") from None
    try:
        if args.verb == "inject":
            pin = args.ca_fingerprint or _fingerprint(args)
            opts = kubernetes.Options(args.image, args.control_plane, pin)
            names, skipped = kubernetes.inject(docs, opts)
            for line in skipped:
                print(f"not injected: {line}", file=sys.stderr)
        else:
            names = kubernetes.uninject(docs)
    except InjectError as exc:
        raise CliError(str(exc)) from None
    _dump_all(yaml, docs)
    done = "injected" if args.verb == "inject" else "uninjected"
    print(f"{done}: {', '.join(names) or 'nothing'}", file=sys.stderr)
    return 0


def _manifests(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        if path != "-" and Path(path).is_dir():
            out += sorted(str(p) for p in Path(path).iterdir()
                          if p.suffix in (".yaml", ".yml", ".json"))  # fmt: skip
        else:
            out.append(path)
    return out


def _ca(args: argparse.Namespace) -> Any:
    import datetime

    from ca import keystore
    from mesh_ctl import common

    try:
        return keystore.load(common.data_dir(args), datetime.datetime.now(datetime.UTC))
    except keystore.KeystoreError as exc:
        raise CliError(f"{exc} (make one with `meshctl ca init`)") from None


def _fingerprint(args: argparse.Namespace) -> str:
    from ca import keystore

    current = [r for r in _ca(args).roots if r.retire_after is None]
    return keystore.fingerprint(current[-1].cert)


def _install(args: argparse.Namespace) -> int:
    from mesh_ctl import common
    from mesh_ctl.inject import install

    _ca(args)  # there is one
    ca_dir = common.data_dir(args) / "ca"
    files = {p.name: p.read_bytes() for p in sorted(ca_dir.iterdir()) if p.is_file()}
    yaml = _yaml()
    print(f"# Weft's control plane. Inject workloads with: meshctl inject k8s "
          f"--ca-fingerprint {_fingerprint(args)} -f …")  # fmt: skip
    _dump_all(yaml, install.control_plane(files, args.image))
    return 0


def _dump_all(yaml: Any, docs: list[Any]) -> None:
    for doc in docs:
        _style(doc)
    out = io.StringIO()
    yaml.dump_all(docs, out)
    sys.stdout.write(out.getvalue())


def _compose(args: argparse.Namespace) -> int:
    from mesh_ctl.inject import compose

    def change(doc: Any) -> list[str]:
        if args.verb == "uninject":
            return compose.uninject(doc, args.service)
        opts = compose.Options(image=args.image, control_plane=args.control_plane,
                               app_ports=tuple(_app_port(t) for t in args.app_port))  # fmt: skip
        names, skipped = compose.inject(doc, args.service, opts)
        for line in skipped:
            print(f"not injected: {line}", file=sys.stderr)
        return names

    try:
        names = _rewrite(args.file, args.in_place, change)
    except compose.InjectError as exc:
        raise CliError(f"{args.file}: {exc}") from None
    done = "injected" if args.verb == "inject" else "uninjected"
    print(f"{done}: {', '.join(names) or 'nothing'}", file=sys.stderr)
    return 0


def _app_port(text: str) -> tuple[str, int]:
    name, _, port = text.partition("=")
    if not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--app-port {text!r}: expected SERVICE=PORT")
    return name, int(port)


def _rewrite(path: str, in_place: bool, change: Callable[[Any], list[str]]) -> list[str]:
    from ruamel.yaml.error import YAMLError

    yaml = _yaml()
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        doc = yaml.load(text)
    except (OSError, YAMLError) as exc:
        raise CliError(f"{path}: {exc}") from None
    if doc is None:
        raise CliError(f"{path}: empty")
    names = change(doc)
    _style(doc)
    out = io.StringIO()
    yaml.dump(doc, out)
    if in_place and path != "-":
        Path(path).write_text(out.getvalue())
    else:
        sys.stdout.write(out.getvalue())
    return names


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long command line
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _style(node: Any) -> Any:
    """What inject added (plain dicts, lists, strings) in compose's usual style: lists of
    scalars in flow style (`[a, b]`), multi-line strings as `|` blocks. What the user
    wrote (already the loader's types) keeps its own."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString

    if isinstance(node, CommentedMap | CommentedSeq):
        items = node.items() if isinstance(node, CommentedMap) else enumerate(node)
        for key, value in list(items):
            node[key] = _style(value)
        return node
    if isinstance(node, dict):
        return CommentedMap((k, _style(v)) for k, v in node.items())
    if isinstance(node, list):
        seq = CommentedSeq(_style(v) for v in node)
        if all(not isinstance(v, dict | list) and "\n" not in str(v) for v in node):
            seq.fa.set_flow_style()
        return seq
    if isinstance(node, str) and "\n" in node:
        return LiteralScalarString(node)
    if node == "no":  # a string to every reader, YAML 1.1 ones too
        return DoubleQuotedScalarString(node)
    return node
