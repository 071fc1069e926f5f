"""inventory: stock levels over raw TCP, one line each way ("STOCK tea" → "tea 42")."""

from __future__ import annotations

import os
import socketserver

STOCK = {"tea": 42, "mug": 7, "teapot": 0}


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            words = line.decode("utf-8", "replace").split()
            if len(words) == 2 and words[0] == "STOCK":
                self.wfile.write(f"{words[1]} {STOCK.get(words[1], 0)}\n".encode())
            else:
                self.wfile.write(b"ERR expected: STOCK <sku>\n")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    with Server(("127.0.0.1", int(os.environ["PORT"])), Handler) as server:
        server.serve_forever()
