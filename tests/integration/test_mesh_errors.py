"""Errors in the mesh, as a caller's sidecar sees them: a service answering its own 5xx
(because a deny policy refuses its calls) keeps answering, and is not ejected; an instance
whose app is gone is ejected, and with no other instance the panic threshold still sends
to it; an app cannot pass its answers off as its sidecar's."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from control.server import ControlPlane
from sidecar.config.parse import Document
from sidecar.modes.sidecar import SidecarServer
from tests.support.echo import EchoServer
from tests.support.net import free_port
from tests.support.plane import mesh_sidecar, on_plane, running_plane

DENY = {
    "apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "no-web-to-catalog"},
    "spec": {"targetRef": {"kind": "Service", "name": "catalog"}, "action": "DENY",
             "from": [{"services": ["web"]}]},
}  # fmt: skip


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    with running_plane(tmp_path) as srv:
        yield srv


def _sidecar(plane: ControlPlane, service: str, app_port: int) -> SidecarServer:
    return mesh_sidecar(plane.data_dir, f"127.0.0.1:{plane.port}", service, app_port)


class _Web(http.server.BaseHTTPRequestHandler):
    """The shop's web in small: it asks catalog through its sidecar and answers 502 when
    that call fails (the way an app reports a dependency it cannot use)."""

    protocol_version = "HTTP/1.1"
    outbound = 0  # web's sidecar's outbound port, once known

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.outbound}/items", headers={"Host": "catalog"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                status, body = 200, b"items: " + r.read()[:20]
        except urllib.error.HTTPError as err:
            status, body = 502, b"web: catalog answered %d\n" % err.code
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Forger(http.server.BaseHTTPRequestHandler):
    """An app that claims its sidecar could not reach it (so a POST would be retried)."""

    protocol_version = "HTTP/1.1"
    posts = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        type(self).posts += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(503)
        self.send_header("x-weft-error", "connect_failure")
        self.send_header("Content-Length", "0")
        self.end_headers()


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.ThreadingHTTPServer:
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    return app


async def _reachable(caller: SidecarServer, host: str) -> None:
    """Until `caller`'s sidecar routes `host` somewhere (its configuration has it)."""
    async with httpx.AsyncClient(timeout=10) as http_client:
        with trio.fail_after(10):
            url = f"http://127.0.0.1:{caller.outbound_port}/"
            while (await http_client.get(url, headers={"Host": host})).status_code == 404:
                await caller.config_changed.wait()


async def _policy_count(sidecar: SidecarServer, want: int) -> None:
    with trio.fail_after(10):
        while len(sidecar._policies()) != want:
            await sidecar.config_changed.wait()


def _ejections(sidecar: SidecarServer) -> float:
    return sum(
        v for k, v in sidecar.metrics.counters.items() if k[0] == "weft_outlier_ejections_total"
    )


async def test_a_deny_policy_leaves_the_site_answering_with_webs_own_error(
    plane: ControlPlane,
) -> None:
    web_app = _serve(_Web)
    try:
        with EchoServer("catalog") as catalog_app:
            async with trio.open_nursery() as nursery:
                catalog = await nursery.start(_sidecar(plane, "catalog", catalog_app.port).run)
                web = await nursery.start(_sidecar(plane, "web", web_app.server_port).run)
                _Web.outbound = web.outbound_port
                edge = await nursery.start(_sidecar(plane, "edge", 1).run)
                await _reachable(edge, "web")
                await _reachable(web, "catalog")
                url = f"http://127.0.0.1:{edge.outbound_port}/"
                async with httpx.AsyncClient(timeout=10) as http_client:
                    assert (await http_client.get(url, headers={"Host": "web"})).status_code == 200
                    await on_plane(plane, lambda s: s.apply([Document(DENY, "deny.yaml")]))
                    await _policy_count(catalog, 1)
                    denied = [
                        await http_client.get(url, headers={"Host": "web"}) for _ in range(20)
                    ]
                    await on_plane(
                        plane,
                        lambda s: s.delete(
                            "AuthorizationPolicy", "default", DENY["metadata"]["name"]
                        ),  # type: ignore[index]
                    )
                    await _policy_count(catalog, 0)
                    after = await http_client.get(url, headers={"Host": "web"})
                nursery.cancel_scope.cancel()
    finally:
        web_app.shutdown()
        web_app.server_close()
    # every answer is web's own (it says what catalog answered), none the proxy's 503
    assert {(r.status_code, r.text) for r in denied} == {(502, "web: catalog answered 403\n")}
    assert all("x-weft-error" not in r.headers for r in denied)
    assert _ejections(edge) == 0  # web reported errors; it was never unable to serve
    assert after.status_code == 200  # the deny is gone: the site is back at once


async def test_an_instance_whose_app_is_gone_is_ejected_and_panic_still_tries_it(
    plane: ControlPlane,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_sidecar(plane, "orders", free_port()).run)  # nothing listens
        web: SidecarServer = await nursery.start(_sidecar(plane, "web", 1).run)
        await _reachable(web, "orders")
        url = f"http://127.0.0.1:{web.outbound_port}/"
        async with httpx.AsyncClient(timeout=10) as http_client:
            answers = [await http_client.get(url, headers={"Host": "orders"}) for _ in range(12)]
        nursery.cancel_scope.cancel()
    assert _ejections(web) >= 1  # orders' sidecar answered "cannot reach my app" (marked)
    # its only instance out is under the panic threshold: still asked, never "no healthy"
    assert {(r.status_code, r.headers.get("x-weft-error")) for r in answers} == {
        (503, "connect_failure")
    }


async def test_an_app_cannot_claim_its_sidecars_errors(plane: ControlPlane) -> None:
    """A 503 marked `connect_failure` by the app itself: its sidecar removes the mark, so
    the caller's sidecar does not retry the POST (a second payment) and counts the answer
    as the app's."""
    app = _serve(_Forger)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_sidecar(plane, "payments", app.server_port).run)
            web: SidecarServer = await nursery.start(_sidecar(plane, "web", 1).run)
            url = f"http://127.0.0.1:{web.outbound_port}/pay"
            async with httpx.AsyncClient(timeout=10) as http_client:
                with trio.fail_after(10):
                    while (r := await http_client.post(url, headers={"Host": "payments"},
                                                       content=b"1 EUR")).status_code == 404:  # fmt: skip
                        await web.config_changed.wait()
            nursery.cancel_scope.cancel()
    finally:
        app.shutdown()
        app.server_close()
    assert r.status_code == 503 and "x-weft-error" not in r.headers
    assert _Forger.posts == 1
    assert _ejections(web) == 0
