"""orders: order quotes as JSON over HTTP. v1 and v2 answer differently; both ask
inventory (raw TCP, through the sidecar's local port for it) how much is in stock.

Raw TCP has no headers to carry a trace context: the inventory hop is in no trace (as with
any mesh); its connections and bytes show in the sidecars' weft_tcp_* metrics instead."""

from __future__ import annotations

import json
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("VERSION", "v1")


def in_stock(sku: str) -> int:
    host, _, port = os.environ["INVENTORY_ADDR"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(f"STOCK {sku}\n".encode())
        reply = conn.makefile("r").readline().split()
    return int(reply[1]) if len(reply) == 2 and reply[1].isdigit() else 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # the http.server API
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "orders":
            return self._send(404, {"error": "GET /orders/<sku>"})
        sku = parts[1]
        quote = {"sku": sku, "version": VERSION, "in_stock": in_stock(sku)}
        if VERSION == "v2":  # the new version also promises a delivery date
            quote["delivery"] = "tomorrow" if quote["in_stock"] else "in two weeks"
        self._send(200, quote)

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # the sidecar logs every request
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
