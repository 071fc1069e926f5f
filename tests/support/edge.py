"""Start an in-process edge server on ephemeral ports for integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from sidecar.config.model import Limits
from sidecar.modes.edge import EdgeServer

GATEWAY = """apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]  # tests listen on loopback only
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
"""

SERVICE = """---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{{address: 127.0.0.1, port: {port}}}]
"""

ROUTE = """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    backendRefs: [{{name: {service}, port: 80}}]
{extra}"""


def config(
    services: dict[str, int], routes: list[tuple[str, str, str]], *, port: int = 80, extra: str = ""
) -> str:
    """A Gateway on `port`, services name->backend port, routes (name, prefix, service)."""
    text = GATEWAY.format(port=port)
    for name, backend_port in services.items():
        text += SERVICE.format(name=name, port=backend_port)
    for name, prefix, service in routes:
        text += ROUTE.format(name=name, prefix=prefix, service=service, extra=extra)
    return text


async def start_edge(
    nursery: trio.Nursery, path: Path, text: str, **kwargs: Any
) -> tuple[EdgeServer, int]:
    """Write `text` to `path`, serve it, and return the server and its first listener's port."""
    path.write_text(text)
    server = EdgeServer(
        [str(path)],
        admin_port=0,
        bind=lambda key: ("127.0.0.1", 0),
        watch_interval_s=kwargs.pop("watch_interval_s", 0),
        limits=kwargs.pop("limits", Limits()),
        **kwargs,
    )
    await nursery.start(server.run)
    assert server.snapshot is not None
    key = next(iter(server.snapshot.routers))
    return server, server.bound_port(key.address, key.port)


async def raw_exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send raw bytes and read until the server closes (or the first response)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(10):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return out
                out += chunk
                if not until_close and b"\r\n\r\n" in out:
                    return out
