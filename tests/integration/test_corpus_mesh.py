"""Every `api: mesh` (GAMMA) case of the routing corpus, through a real control plane and
real sidecars over mTLS.

Each file's resources are applied to a control plane as they are. Each workload is an echo
server; for every Service whose selector picks it, a sidecar joins the mesh as an instance
of that Service (in Weft an instance registers under the Service it serves). A case's
request goes from the client workload's sidecar: to its outbound port with the case's
Host, or, when the case dials a Service whose name differs from its Host (the Service's
frontend decides, not the Host), to a local `--upstream` port bound to that Service.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from control.server import ControlPlane
from sidecar.config.parse import Document
from sidecar.modes.sidecar import SidecarServer
from tests.support.corpus import corpus_files
from tests.support.corpus_expect import check_case
from tests.support.echo import EchoServer
from tests.support.plane import mesh_sidecar, on_plane, running_plane

FILES = corpus_files("mesh")


def test_every_mesh_case_runs() -> None:
    assert sum(len(json.loads(p.read_text())["cases"]) for p in FILES) == 55


def _members(doc: dict[str, Any], workload: dict[str, Any]) -> list[str]:
    """The Services whose selector picks the workload's pods."""
    return [
        r["metadata"]["name"]
        for r in doc["resources"]
        if r["kind"] == "Service"
        and r["metadata"]["namespace"] == workload["namespace"]
        and all(workload["pod_labels"].get(k) == v for k, v in r["spec"]["selector"].items())
    ]


def _picks(workload: dict[str, Any], client: dict[str, Any]) -> bool:
    labels = workload["pod_labels"]
    return workload["namespace"] == client["namespace"] and all(
        labels.get(k) == v for k, v in client["pod_selector"].items()
    )


def _workloads(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The file's workloads, and the client pods its cases send from where they are not
    among them (the conformance suite runs them beside every test)."""
    out = list(doc["workloads"])
    for case in doc["cases"]:
        client = case["request"]["client"]
        if not any(_picks(w, client) for w in out):
            labels = client["pod_selector"]
            name = "-".join(labels[k] for k in sorted(labels))
            out.append({"backend": name, "namespace": client["namespace"], "pod_labels": labels})
    return out


def _client(
    doc: dict[str, Any], sidecars: dict[str, list[SidecarServer]], case: dict[str, Any]
) -> SidecarServer:
    """A sidecar of the workload the case sends from."""
    want = case["request"]["client"]
    return next(sidecars[w["backend"]][0] for w in _workloads(doc) if _picks(w, want))


async def _send(
    http: httpx.AsyncClient, sidecars: dict[str, list[SidecarServer]], doc: dict[str, Any],
    case: dict[str, Any],
) -> httpx.Response:  # fmt: skip
    req = case["request"]
    client = _client(doc, sidecars, case)
    host = req["host"] or req["entrypoint"]["name"]
    dialled = req["entrypoint"]["name"]
    if host.split(":")[0].split(".")[0] != dialled:
        port = client.upstream_ports[dialled]  # the Service's frontend, not the Host, decides
    else:
        port = client.outbound_port
    return await http.request(
        req["method"], f"http://127.0.0.1:{port}{req['path']}",
        headers={"Host": host, **req["headers"]}, follow_redirects=False,
    )  # fmt: skip


@pytest.mark.parametrize("corpus_file", FILES, ids=[f.stem for f in FILES])
async def test_mesh_corpus_file(corpus_file: Path, tmp_path: Path) -> None:
    doc = json.loads(corpus_file.read_text())
    echoes = {
        (w["namespace"], w["backend"]): EchoServer(w["backend"], w["namespace"])
        for w in _workloads(doc)
    }
    dialled = {
        c["request"]["entrypoint"]["name"]
        for c in doc["cases"]
        if (c["request"]["host"] or "").split(":")[0].split(".")[0]
        != c["request"]["entrypoint"]["name"]
    }
    failures: list[str] = []
    with running_plane(tmp_path) as plane:
        docs = [Document(r, f"{corpus_file.name} #{i}") for i, r in enumerate(doc["resources"])]
        _, problems = await on_plane(plane, lambda state: state.apply(docs))
        assert all("created" in p for p in problems), problems
        for e in echoes.values():
            e.__enter__()
        try:
            async with trio.open_nursery() as nursery:
                sidecars = await _start_sidecars(nursery, plane, doc, echoes, dialled)
                async with httpx.AsyncClient(timeout=10.0) as http:
                    for case in doc["cases"]:
                        send = functools.partial(_send, http, sidecars, doc)
                        await check_case(send, case, echoes, failures)
                nursery.cancel_scope.cancel()
        finally:
            for e in echoes.values():
                e.__exit__()
    assert not failures, "\n".join(failures)


async def _start_sidecars(
    nursery: trio.Nursery,
    plane: ControlPlane,
    doc: dict[str, Any],
    echoes: dict[tuple[str, str], EchoServer],
    dialled: set[str],
) -> dict[str, list[SidecarServer]]:
    """Every sidecar, started once each has seen the whole mesh (every instance ready)."""
    target = f"127.0.0.1:{plane.port}"
    sidecars: dict[str, list[SidecarServer]] = {}
    for w in _workloads(doc):
        echo = echoes[(w["namespace"], w["backend"])]
        # a pod no Service selects still has a sidecar: an instance of its own name
        for service in _members(doc, w) or [w["backend"]]:
            sc = mesh_sidecar(
                plane.data_dir, target, service, echo.port, w["pod_labels"].get("version", ""),
                namespace=w["namespace"], upstreams=tuple((name, 0) for name in sorted(dialled)),
            )  # fmt: skip
            await nursery.start(sc.run)
            sidecars.setdefault(w["backend"], []).append(sc)
    everyone = [sc for group in sidecars.values() for sc in group]
    with trio.fail_after(10):
        for sc in everyone:
            while not _sees_all(sc, len(everyone)):
                await sc.config_changed.wait()
    return sidecars


def _sees_all(sc: SidecarServer, instances: int) -> bool:
    """Whether the control plane's last snapshot for `sc` lists every instance."""
    seen = {
        (e["address"], e["port"])
        for d in sc._pushed
        if d["kind"] == "Service"
        for e in d["spec"]["endpoints"]
    }
    return len(seen) >= instances
