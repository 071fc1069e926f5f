"""examples/edge as `make edge-demo` runs it (its gateway, routes and policies, with the
demo's generated identity provider), against echo backends: the flows its README and
banner tell a newcomer to try answer as they say."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from examples.edge_demo import HERE, SERVICES, identity_provider
from tests.support.echo import EchoServer
from tests.support.edge import start_edge


async def test_the_edge_demo_flows(tmp_path: Path) -> None:
    jwks, tokens = identity_provider(tmp_path)
    backends = {name: EchoServer(name) for name in SERVICES}
    text = "\n---\n".join(p.read_text() for p in sorted(HERE.glob("*.yaml")))
    text += "\n---\n" + jwks.read_text()
    for name, port in SERVICES.items():
        text = text.replace(f"port: {port}", f"port: {backends[name].port}")
    for b in backends.values():
        b.__enter__()
    try:
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "edge.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                no_key = await http.get("/api/partner/items")
                quota = [(await http.get("/api/partner/items",
                                         headers={"x-api-key": "globex-demo-key-9a2c"})).status_code
                         for _ in range(7)]  # fmt: skip
                preflight = await http.options("/api/partner/items", headers={
                    "origin": "https://app.example.com", "access-control-request-method": "GET",
                    "access-control-request-headers": "x-api-key"})  # fmt: skip
                reader = await http.get(
                    "/api/me", headers={"authorization": f"Bearer {tokens['reader']}"}
                )
                other = await http.get(
                    "/api/me", headers={"authorization": f"Bearer {tokens['other']}"}
                )
                anonymous = await http.get("/api/me")
                open_route = await http.get("/api/catalog/items")
            nursery.cancel_scope.cancel()
    finally:
        for b in backends.values():
            b.__exit__()
    assert no_key.status_code == 401 and no_key.headers["www-authenticate"].startswith("API-Key")
    assert quota == [200] * 5 + [429] * 2
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert (reader.status_code, other.status_code, anonymous.status_code) == (200, 403, 401)
    assert open_route.status_code == 200
    partner = [
        r["headers"] for r in backends["catalog"].received if r["path"].startswith("/api/partner")
    ]
    assert len(partner) == 5 and all(
        h["x-client-id"] == ["globex"] and "x-api-key" not in h for h in partner
    )
    (me,) = backends["orders-v1"].received
    assert me["headers"]["x-user"] == ["ada"]
