"""nginx as the upstream: keep-alive reuse, and upstream connections nginx retires."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from tests.support.edge import config, start_edge
from tests.support.net import free_port
from tests.support.nginx import NGINX, nginx

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (make test installs it)"
)


async def test_keepalive_pool_against_nginx_that_retires_connections(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4096)
    server = f"""
  log_format conn '$connection $request_uri';
  access_log {tmp_path}/access.log conn;
  keepalive_requests 25;
  server {{
    listen 127.0.0.1:{port};
    location /small {{ return 200 "small"; }}
    location /big.bin {{ root {tmp_path}; }}
  }}"""
    async with nginx(tmp_path, server):
        text = config({"nginx": port}, [("r", "/", "nginx")])
        async with trio.open_nursery() as nursery:
            _, edge_port = await start_edge(nursery, tmp_path / "edge.yaml", text)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{edge_port}") as client:
                for i in range(100):
                    r = await client.get("/small" if i % 10 else "/big.bin")
                    assert r.status_code == 200, r.text
                    assert len(r.content) == (5 if i % 10 else 1 << 20)
            nursery.cancel_scope.cancel()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) == 100  # nothing retried twice, nothing lost
    connections = {line.split()[0] for line in lines}
    # One client connection, so one upstream connection at a time: nginx closes each after
    # 25 requests and the pool opens the next.
    assert len(connections) == 4
