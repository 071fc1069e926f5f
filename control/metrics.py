"""The control plane's metrics, and its HTTP port (DESIGN.md: 15014, `/healthz`, `/metrics`).

prometheus_client keeps and renders them: nothing here is per request, so the maintained
library costs nothing that matters (the data plane has its own writer, measured faster:
docs/observability.md). The HTTP server is the standard library's WSGI server with a thread
per request, which is all a scrape or a health check needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

PUSH_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControlMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connected = Gauge(
            "weft_control_sidecars_connected", "Sidecars with an open config watch.", registry=r
        )
        self.generation = Gauge(
            "weft_control_config_generation", "The configuration generation.", registry=r
        )
        self.pushes = Counter(
            "weft_control_config_pushes", "Snapshots sent to sidecars.", registry=r
        )
        self.acks = Counter(
            "weft_control_config_acks", "Snapshots sidecars put in force (ACK).", registry=r
        )
        self.nacks = Counter(
            "weft_control_config_nacks", "Snapshots sidecars refused (NACK).", registry=r
        )
        self.push_seconds = Histogram(
            "weft_control_config_push_seconds",
            "From a configuration change to a sidecar's ACK of the snapshot carrying it.",
            buckets=PUSH_BUCKETS_S,
            registry=r,
        )

    def watch(self, connected: Callable[[], int], generation: Callable[[], int]) -> None:
        """Gauges read from the state when scraped."""
        self.connected.set_function(connected)
        self.generation.set_function(generation)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /healthz and /metrics are served here\n"]

    return app


class HttpPort:
    """`/healthz` and `/metrics` on `listen` (HOST:PORT; port 0 picks one), in a thread."""

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        host, _, port = listen.rpartition(":")
        self.server = make_server(
            host.strip("[]"), int(port), _app(registry), server_class=_Server, handler_class=_Quiet
        )
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="control-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
