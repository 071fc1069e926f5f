"""External authorization at the edge with real clients and real services: an HTTP
authorization service and a grpcio server implementing Envoy's Authorization API. What
the backend receives is asserted: only what passed, with the service's fields and
without ones the proxy must not take from it."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.ext_authz import GrpcAuthDouble, HttpAuthDouble
from tests.support.h2raw import RawH2, get

POLICY = """---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: SecurityPolicy
metadata: {{name: ext}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}}]
  extAuth:
{service}
    headersToExtAuth: {to_auth}
    timeout: 500ms
    failOpen: {fail_open}
"""
HTTP = """    http:
      backendRefs: [{name: authz, port: 80}]
      path: /auth
      headersToBackend: [x-user]"""
GRPC = """    grpc:
      backendRefs: [{name: authz, port: 80}]"""


def _bearer(t: str) -> dict[str, str]:
    return {"authorization": f"Bearer {t}"}


async def test_http_authorization_service(tmp_path: Path) -> None:
    with HttpAuthDouble() as authz, EchoServer("api") as api:
        text = config({"api": api.port, "authz": authz.port}, [("api", "/", "api")])
        text += POLICY.format(service=HTTP, to_auth="[x-tenant]", fail_open="false")
        async with trio.open_nursery() as nursery:
            edge, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                ok = await http.post("/orders?id=7", content=b"{}",
                                     headers={**_bearer("good"), "x-tenant": "t1",
                                              "x-user": "mallory", "cookie": "c=1"})  # fmt: skip
                denied = await http.get("/orders", headers=_bearer("bad"))
                slow = await http.get("/orders", headers=_bearer("slow"))
                metrics = (await http.get(f"http://127.0.0.1:{edge.admin_bound_port}/metrics")).text
            h2 = await RawH2.connect(port)
            sid = await h2.request([*get(b"/h2", b"gw"), (b"authorization", b"Bearer good")])
            (h2_ok,) = await h2.wait(sid)
            await h2.aclose()
            nursery.cancel_scope.cancel()
    assert ok.status_code == 200 and h2_ok.status == 200
    assert denied.status_code == 401 and denied.text == "denied by the test authorization service\n"
    assert denied.headers["www-authenticate"] == 'Bearer realm="test"'
    assert slow.status_code == 403  # the service did not answer in 500 ms: fail closed
    assert 'weft_ext_auth_errors_total{policy="default/ext"} 1' in metrics
    first = authz.checks[0]
    assert (first["method"], first["path"]) == ("POST", "/auth/orders?id=7")
    assert first["headers"]["x-tenant"] == "t1" and first["headers"]["content-length"] == "0"
    assert "cookie" not in first["headers"]  # only what the policy lets through
    assert [(r["path"], r["headers"]["x-user"]) for r in api.received] == [
        ("/orders?id=7", ["alice"]),
        ("/h2", ["alice"]),
    ]  # the service's x-user, not the client's
    assert all("x-not-forwarded" not in r["headers"] for r in api.received)


@pytest.mark.parametrize("fail_open", [False, True])
async def test_grpc_authorization_service(tmp_path: Path, fail_open: bool) -> None:
    with GrpcAuthDouble() as authz, EchoServer("api") as api:
        text = config({"api": api.port, "authz": authz.port}, [("api", "/", "api")])
        text += POLICY.format(service=GRPC, to_auth="[]", fail_open=str(fail_open).lower())
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                ok = await http.get("/a?q=1", headers={**_bearer("good"), "x-remove-me": "1"})
                denied = await http.get("/a", headers=_bearer("bad"))
                error = await http.get("/a", headers=_bearer("error"))
            nursery.cancel_scope.cancel()
    assert ok.status_code == 200
    assert denied.status_code == 401 and denied.text == "denied by the test authorization service\n"
    assert error.status_code == (200 if fail_open else 403)
    assert ok.headers["x-checked-by"] == "grpc-double"  # response_headers_to_add
    http = authz.checks[0]["attributes"]["request"]["http"]
    assert (http["method"], http["path"], http["query"]) == ("GET", "/a?q=1", "q=1")
    assert http["headers"]["x-remove-me"] == "1"  # gRPC checks see every field
    assert (
        authz.checks[0]["attributes"]["source"]["address"]["socketAddress"]["address"]
        == "127.0.0.1"
    )
    seen = api.received[0]["headers"]
    assert seen["x-user"] == ["bob"] and "x-remove-me" not in seen
    assert "x-smuggle" not in seen and seen.get("content-length", ["0"]) == ["0"]
    assert seen["host"] and api.received[0]["path"] == "/a?q=1"  # no :path from the service
    # nor a field the hop writes itself, however it is spelled
    assert len(seen["x-request-id"]) == 1 and seen["x-request-id"] != ["forged"]
    assert seen["x-forwarded-for"] == ["127.0.0.1"] and "x_forwarded_for" not in seen
    assert len(api.received) == (2 if fail_open else 1)


async def test_a_grpc_service_answering_garbage_fails_closed(tmp_path: Path) -> None:
    """A 'gRPC' service whose message is not a CheckResponse: the check fails (403), the
    proxy does not."""
    import h2.config
    import h2.connection
    import h2.events

    async def garbage(stream: trio.SocketStream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        with trio.move_on_after(5):
            while data := await stream.receive_some(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.StreamEnded):
                        sid = ev.stream_id
                        conn.send_headers(
                            sid, [(":status", "200"), ("content-type", "application/grpc")]
                        )
                        conn.send_data(sid, b"\x00\x00\x00\x00\x04\xff\xff\xff\xff")
                        conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                await stream.send_all(conn.data_to_send())

    with EchoServer("api") as api:
        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, garbage, 0, host="127.0.0.1"))
            port_auth = listener.socket.getsockname()[1]
            text = config({"api": api.port, "authz": port_auth}, [("api", "/", "api")])
            text += POLICY.format(service=GRPC, to_auth="[]", fail_open="false")
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                r = await http.get("/a", headers=_bearer("good"))
                again = await http.get("/a", headers=_bearer("good"))
            nursery.cancel_scope.cancel()
    assert r.status_code == 403 and again.status_code == 403
    assert api.received == []
