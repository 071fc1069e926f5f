"""Apps a test runs inside a network namespace it made (`ip netns exec … python -m
tests.support.netns_app …`); each prints "ready" once it listens.

- `echo NAME ADDRESS PORT`: the echo backend (tests/support/echo.py).
- `greet ADDRESS PORT`: a server-first protocol (SMTP's or MySQL's shape): it greets each
  client before reading, then echoes what it reads.
"""

from __future__ import annotations

import socket
import sys
import threading

from tests.support.echo import EchoServer


def _greet(address: str, port: int) -> None:
    server = socket.create_server((address, port), reuse_port=False)
    print("ready", flush=True)

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"220 greeter ready\r\n")
            while data := conn.recv(65536):
                conn.sendall(data)

    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main(argv: list[str]) -> None:
    if argv[0] == "echo":
        with EchoServer(argv[1], address=argv[2], port=int(argv[3])):
            print("ready", flush=True)
            threading.Event().wait()
    elif argv[0] == "greet":
        _greet(argv[1], int(argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
