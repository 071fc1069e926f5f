"""What a plain gateway or sidecar never loads: the libraries of features it does not use
(each costs megabytes of resident memory per process, and a sidecar runs beside every
instance)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("cryptography", "jwt", "bcrypt", "jsonschema", "hiredis", "h11", "httpx", "grpc", "email",
         "google.protobuf", "opentelemetry")  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


def _loaded(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    probe = (code + "\nimport sys\nprint(' '.join(sorted({m for m in sys.modules for h in "
             f"{heavy!r} if m == h or m.startswith(h + '.')}})))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    return out.stdout.split()


def test_a_plain_edge_loads_no_policy_libraries(tmp_path: Path) -> None:
    from tests.support.edge import config

    cfg = tmp_path / "edge.yaml"
    cfg.write_text(config({"one": 8080}, [("r", "/", "one")], port=18080))
    loaded = _loaded(
        "import mesh_ctl.cli, sidecar.modes.edge, sidecar.modes.sidecar\n"
        "mesh_ctl.cli.build_parser()\n"  # every subcommand registered, as `meshctl edge` does
        "from sidecar.config.loader import load_snapshot\n"
        f"load_snapshot([{str(cfg)!r}], version=1, gateway_class='weft')"
    )
    assert loaded == []


def test_a_sidecar_fed_by_the_control_plane_reads_no_yaml() -> None:
    """Its configuration arrives as documents, not files: PyYAML (a megabyte) stays out."""
    code = (
        "import mesh_ctl.cli, sidecar.modes.edge, sidecar.modes.sidecar\n"
        "mesh_ctl.cli.build_parser()\n"
        "from sidecar.config.compile import compile_snapshot\n"
        "from sidecar.config.mesh import outbound_config\n"
        "from sidecar.config.model import ListenerKey\n"
        "from sidecar.config.parse import Document, load_documents\n"
        "svc = {'apiVersion': 'weft.dev/v1alpha1', 'kind': 'Service', 'metadata': {'name': 'a'},"
        " 'spec': {'ports': [{'port': 80}], 'endpoints': [{'address': '127.0.0.1', 'port': 1}]}}\n"
        "out = outbound_config([svc], ListenerKey(address='127.0.0.1', port=15001), 'default')\n"
        "compile_snapshot(load_documents(Document(d, 'pushed') for d in out.documents), version=1)"
    )
    assert _loaded(code, ("yaml",)) == []
    assert "yaml" in _loaded(
        "from sidecar.config.loader import load_yaml; load_yaml('a: 1', 'x')", ("yaml",)
    )


def test_long_running_commands_skip_the_admin_verbs() -> None:
    """`meshctl sidecar|edge|server` never run `shift`, `top` or `up`: their modules stay
    out of a process that runs beside every instance; any other command line gets them."""
    verbs = ("mesh_ctl.up", "mesh_ctl.mesh_cli", "mesh_ctl.traces_cli", "mesh_ctl.resources_cli")
    for line in (
        ["sidecar", "--help"],
        ["--log-level", "info", "edge"],
        ["--log-level=info", "server"],
    ):
        assert _loaded(f"import mesh_ctl.cli\nmesh_ctl.cli.build_parser(mesh_ctl.cli._command({line!r}))",
                       verbs) == []  # fmt: skip
    assert len(_loaded("import mesh_ctl.cli\nmesh_ctl.cli.build_parser(mesh_ctl.cli._command(['top']))",
                       verbs)) == len(verbs)  # fmt: skip


def test_a_jwt_policy_loads_pyjwt_where_it_is_used() -> None:
    assert "jwt" in _loaded("import sidecar.filters.jwt_auth")
