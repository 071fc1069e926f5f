"""Apps a test runs inside a network namespace it made (`ip netns exec … python -m
tests.support.netns_app …`); each prints "ready" once it listens.

- `echo NAME ADDRESS PORT`: the echo backend (tests/support/echo.py).
- `greet ADDRESS PORT`: a server-first protocol (SMTP's or MySQL's shape): it greets each
  client before reading, then echoes what it reads.
- `grpc ADDRESS PORT`: a gRPC server (grpcio) whose `/weft.test.Echo/Say` answers
  "echo: " and the request.
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
    elif argv[0] == "grpc":
        _grpc(argv[1], int(argv[2]))


def _grpc(address: str, port: int) -> None:
    from concurrent import futures

    import grpc

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"echo: " + request

    handler = grpc.method_handlers_generic_handler(
        "weft.test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"{address}:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(sys.argv[1:])
