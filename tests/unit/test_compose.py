"""docker-compose.yml and the Dockerfile, checked offline (no Docker engine here): the file's
structure, and every Weft container's command parsed by meshctl's own argument parser and
checked against the app beside it, the control planes, Consul and the shop's up.yaml."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh_ctl.cli import build_parser
from sidecar.config.parse import Document, load_documents

ROOT = Path(__file__).parent.parent.parent
SHOP = ROOT / "examples" / "shop"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data["services"]


def meshctl_lines(svc: dict[str, Any]) -> list[list[str]]:
    """The meshctl command lines a Weft container runs (its command, or in its shell script)."""
    entry = svc.get("entrypoint")
    if entry is None:
        return [list(map(str, svc["command"]))]
    if entry == ["sh", "-ec"]:
        out = []
        for raw in svc["command"][0].splitlines():
            line = raw.strip().replace("$$", "$")
            if line.startswith("meshctl "):
                words = shlex.split(line.split("|")[0])[1:]
                out.append(
                    [
                        w.replace('"$s"', "web").replace("$s", "web").replace("$f", "mesh.yaml")
                        for w in words
                    ]
                )
        return out
    return []


def weft(svc: dict[str, Any]) -> bool:
    return svc.get("image") == "weft:latest" and svc.get("entrypoint") != ["python"]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_structure_and_references(compose: dict[str, Any]) -> None:
    assert compose["consul"]["image"].startswith("hashicorp/consul:")
    assert {"agent", "-dev"} <= set(compose["consul"]["command"])
    assert "8500:8500" in compose["consul"]["ports"]
    assert compose["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    assert "4317:4317" in compose["jaeger"]["ports"]
    for name, svc in compose.items():
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in compose, (name, dep)
        mode = svc.get("network_mode", "")
        if mode:
            assert mode.startswith("service:") and mode[8:] in compose, name
    built = [s for s in compose.values() if s.get("build")]
    assert built and all(s["build"] == "." for s in built)


def test_dockerfile_installs_every_package_and_runs_meshctl() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    assert 'ENTRYPOINT ["meshctl"]' in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject).group(1)  # type: ignore[union-attr]
    for pkg in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {pkg} ./{pkg}" in text, pkg
    assert "COPY examples ./examples" in text


def test_every_meshctl_command_parses(compose: dict[str, Any]) -> None:
    parser = build_parser()
    seen = 0
    for svc in compose.values():
        if not weft(svc):
            continue
        for args in meshctl_lines(svc):
            parser.parse_args(args)  # SystemExit (a test error) on anything meshctl refuses
            seen += 1
    assert seen >= 10


def test_sidecars_match_their_apps_the_control_planes_and_consul(compose: dict[str, Any]) -> None:
    parser = build_parser()
    up = yaml.safe_load((SHOP / "up.yaml").read_text())
    planned = {(s["name"], v) for s in up["services"] for v in s.get("versions", [""])}
    protocols = {s["name"]: s["protocol"] for s in up["services"]}
    planes = {}
    for name, svc in compose.items():
        if weft(svc) and svc["command"][0] == "server":
            args = parser.parse_args(svc["command"])
            planes[f"{name}:{args.listen.rpartition(':')[2]}"] = args
            assert args.store == "consul://consul:8500"
    assert len(planes) == 2
    init = compose["weft-init"]["command"][0]
    tokens = re.search(r"for s in ([\w ]+); do", init).group(1).split()  # type: ignore[union-attr]
    found = set()
    for name, svc in compose.items():
        if not (weft(svc) and svc["command"][0] == "sidecar"):
            continue
        args = parser.parse_args(svc["command"])
        app = compose[svc["network_mode"][len("service:") :]]
        env = app["environment"]
        assert str(args.app_port) == env["PORT"], name
        assert (SHOP / "apps" / app["command"][0]).exists(), name
        assert env.get("VERSION", "") == args.version, name
        assert args.protocol == protocols[args.service], name
        assert set(args.control_plane.split(",")) == set(planes), name
        assert args.discovery == "consul://consul:8500" and args.admin_address == "0.0.0.0", name
        assert args.advertise == svc["network_mode"][len("service:") :], name
        assert args.token_file == f"/weft/tokens/{args.service}" and args.service in tokens, name
        for up_arg in args.upstream or ():
            target, _, port = up_arg.partition(":")
            assert env[f"{target.upper()}_ADDR"] == f"127.0.0.1:{port}", name
        if env.get("MESH_OUTBOUND"):
            assert env["MESH_OUTBOUND"] == f"127.0.0.1:{args.outbound_port}", name
        found.add((args.service, args.version))
    assert found == planned
    edge = parser.parse_args(compose["edge"]["command"])
    assert set(edge.control_plane.split(",")) == set(planes) and "edge" in tokens


def test_the_entrance_is_published_and_the_shop_resources_parse(compose: dict[str, Any]) -> None:
    docs = [d for f in (SHOP / "mesh.yaml", SHOP / "compose" / "gateway.yaml")
            for d in yaml.safe_load_all(f.read_text())]  # fmt: skip
    gateway = docs[-1]
    listener = gateway["spec"]["listeners"][0]
    assert gateway["spec"]["addresses"][0]["value"] == "0.0.0.0"
    assert f"{listener['port']}:{listener['port']}" in compose["edge"]["ports"]
    load_documents(Document(d, f"doc {i}") for i, d in enumerate(docs[:-1]))
    load_documents([Document(gateway, "compose/gateway.yaml")])
