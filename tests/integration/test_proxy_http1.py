"""The HTTP/1.1 proxy over real sockets: curl and raw clients, echo and misbehaving backends."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from sidecar.config.model import Limits
from tests.support.echo import EchoServer
from tests.support.edge import config, raw_exchange, start_edge
from tests.support.net import free_port

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(
    CURL is None, reason="curl is not installed (make test installs it)"
)


@pytest.fixture
def echo() -> AsyncIterator[EchoServer]:
    with EchoServer("echo") as server:
        yield server


async def _curl(*args: str) -> tuple[int, str]:
    assert CURL is not None
    proc = await trio.run_process([CURL, "-sS", *args], capture_stdout=True, check=False)
    return proc.returncode, proc.stdout.decode()


def _json_body(response: bytes) -> dict[str, object]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


async def test_forwarding_headers_and_hop_by_hop_removal(tmp_path: Path, echo: EchoServer) -> None:
    text = config({"echo": echo.port}, [("r", "/", "echo")])
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        resp = await raw_exchange(
            port,
            b"GET /a?b=c HTTP/1.1\r\nHost: shop.test\r\nConnection: keep-alive, X-Private\r\n"
            b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
            b"X-Forwarded-For: 192.0.2.1\r\nUpgrade: h2c\r\nConnection: close\r\n"
            b"X-Forwarded-Client-Cert: URI=spiffe://weft.local/ns/default/svc/admin\r\n\r\n",
        )
        nursery.cancel_scope.cancel()
    assert resp.startswith(b"HTTP/1.1 200 ")
    got = _json_body(resp)
    headers = got["headers"]
    assert isinstance(headers, dict)
    for gone in ("x-private", "keep-alive", "te", "upgrade", "x-forwarded-client-cert"):
        assert gone not in headers, gone
    assert headers["x-forwarded-for"] == ["192.0.2.1, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["shop.test"]
    assert len(headers["x-request-id"][0]) == 36
    assert got["host"] == "shop.test" and got["path"] == "/a?b=c"


async def test_keepalive_and_pipelining_answer_in_order(tmp_path: Path, echo: EchoServer) -> None:
    text = config({"echo": echo.port}, [("r", "/", "echo")])
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        reqs = b"".join(
            b"GET /%d HTTP/1.1\r\nHost: h\r\nX-Request-Id: id-%d\r\n\r\n" % (i, i) for i in range(5)
        )
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(reqs + b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
        nursery.cancel_scope.cancel()
    bodies = [p for p in data.split(b"HTTP/1.1 200 OK") if p]
    assert len(bodies) == 6
    order = [json.loads(b[b.index(b"{") : b.rindex(b"}") + 1])["path"] for b in bodies]
    assert order == ["/0", "/1", "/2", "/3", "/4", "/last"]
    assert b"id-3" in bodies[3]


@needs_curl
async def test_chunked_upload_and_expect_continue_with_curl(
    tmp_path: Path, echo: EchoServer
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    text = config({"echo": echo.port}, [("r", "/", "echo")])
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        url = f"http://127.0.0.1:{port}/up"
        code, out = await _curl(
            "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{payload}", url
        )
        assert code == 0, out
        chunked = json.loads(out)
        code, out = await _curl(
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{payload}",
            "-w",
            "\n%{http_code}",
            url,
        )
        assert code == 0, out
        nursery.cancel_scope.cancel()
    want = hashlib.sha256(payload.read_bytes()).hexdigest()
    assert chunked["body_length"] == payload.stat().st_size
    assert chunked["body_sha256"] == want
    assert chunked["headers"]["transfer-encoding"] == ["chunked"]
    body, status = out.rsplit("\n", 1)
    assert status == "200"
    expect = json.loads(body)
    assert expect["body_sha256"] == want and "expect" not in expect["headers"]


MALFORMED = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two_lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "bad_chunk": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n",
    "obs_fold": b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "nul": b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\n\r\n",
    "relative_target": b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_requests_get_400_and_close_and_never_reach_the_backend(
    tmp_path: Path, echo: EchoServer, raw: bytes
) -> None:
    text = config({"echo": echo.port}, [("r", "/", "echo")])
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        resp = await raw_exchange(port, raw)  # returns only once the proxy closed
        nursery.cancel_scope.cancel()
    assert resp.startswith(b"HTTP/1.1 400 "), resp
    assert b"connection: close" in resp.lower()
    assert echo.received == []


async def test_limits_give_431_and_413(tmp_path: Path, echo: EchoServer) -> None:
    text = config({"echo": echo.port}, [("r", "/", "echo")])
    limits = Limits(max_header_bytes=2048, max_request_body_bytes=1000)
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text, limits=limits)
        big_head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 4096 + b"\r\n\r\n"
        assert (await raw_exchange(port, big_head)).startswith(b"HTTP/1.1 431 ")
        declared = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n"
        assert (await raw_exchange(port, declared)).startswith(b"HTTP/1.1 413 ")
        chunked = (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"y" * 1024
            + b"\r\n0\r\n\r\n"
        )
        assert (await raw_exchange(port, chunked)).startswith(b"HTTP/1.1 413 ")
        ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789"
        assert (await raw_exchange(port, ok)).startswith(b"HTTP/1.1 200 ")
        nursery.cancel_scope.cancel()


async def _silent_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accepts, reads, never answers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some(65536):
                pass

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(hold, listeners)


async def _garbage_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def garbage(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(b"SMTP ready, not HTTP\r\n\r\n")

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(garbage, listeners)


async def test_errors_are_distinct(tmp_path: Path, echo: EchoServer) -> None:
    async with trio.open_nursery() as nursery:
        silent = await nursery.start(_silent_server)
        garbage = await nursery.start(_garbage_server)
        text = config(
            {"echo": echo.port, "silent": silent, "garbage": garbage, "dead": free_port()},
            [("a", "/echo", "echo"), ("b", "/dead", "dead"), ("c", "/garbage", "garbage"),
             ("d", "/missing", "nope")],
        )  # fmt: skip
        text += """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /silent}}]
    backendRefs: [{name: silent, port: 80}]
    timeouts: {request: 300ms}
"""
        server, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            codes = {p: (await client.get(p)).status_code for p in
                     ("/echo", "/nothing", "/dead", "/garbage", "/silent", "/missing")}  # fmt: skip
        nursery.cancel_scope.cancel()
    assert codes == {
        "/echo": 200, "/nothing": 404, "/dead": 503, "/garbage": 502, "/silent": 504, "/missing": 500,
    }  # fmt: skip
    metrics = server.metrics.render()
    assert 'route="default/slow",code_class="5xx",code="504"' in metrics


async def test_reload_keeps_established_connections(tmp_path: Path) -> None:
    with EchoServer("old") as old, EchoServer("new") as new:
        path = tmp_path / "c.yaml"
        async with trio.open_nursery() as nursery:
            server, port = await start_edge(
                nursery, path, config({"old": old.port}, [("r", "/", "old")])
            )
            keep = await trio.open_tcp_stream("127.0.0.1", port)
            await keep.send_all(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
            first = await _read_response(keep)
            assert b'"pod": "old"' in first
            # A bad file is refused and changes nothing.
            path.write_text("kind: [broken")
            assert not server.reload()
            assert "invalid YAML" in server.last_error
            # Now move the route to the other backend and the listener to another port.
            path.write_text(config({"new": new.port}, [("r", "/", "new")], port=81))
            assert server.reload()
            await keep.send_all(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
            second = await _read_response(keep)
            with trio.fail_after(5):
                assert await keep.receive_some(100) == b""  # closed after draining
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            new_port = server.bound_port("127.0.0.1", 81)
            fresh = await raw_exchange(
                new_port, b"GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            nursery.cancel_scope.cancel()
    # The connection whose listener went away is still served on its own configuration,
    # told to close, and new connections see the new configuration.
    assert second.startswith(b"HTTP/1.1 200 ") and b'"pod": "old"' in second
    assert b"connection: close" in second.lower()
    assert b'"pod": "new"' in fresh


async def _read_response(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while True:
            data += await stream.receive_some(65536)
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    return data


async def test_idle_and_header_timeouts_close_connections(tmp_path: Path, echo: EchoServer) -> None:
    text = config({"echo": echo.port}, [("r", "/", "echo")])
    limits = Limits(idle_timeout_s=0.3, header_timeout_s=0.2)
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text, limits=limits)
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await idle.receive_some(100) == b""  # closed by the proxy, nothing sent
        slow = await trio.open_tcp_stream("127.0.0.1", port)
        await slow.send_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        with trio.fail_after(5):
            reply = b""
            while chunk := await slow.receive_some(1000):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408 ")
        nursery.cancel_scope.cancel()


async def test_http10_client_gets_close_delimited_body(tmp_path: Path, echo: EchoServer) -> None:
    text = config({"echo": echo.port}, [("r", "/", "echo")])
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        resp = await raw_exchange(port, b"GET /old HTTP/1.0\r\nHost: h\r\n\r\n")
        head_resp = await raw_exchange(
            port, b"HEAD /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        nursery.cancel_scope.cancel()
    assert resp.startswith(b"HTTP/1.1 200 ") and b'"path": "/old"' in resp
    assert b"transfer-encoding" not in resp.lower()
    assert head_resp.startswith(b"HTTP/1.1 200 ") and head_resp.endswith(b"\r\n\r\n")
    assert b"content-length: " in head_resp.lower()


async def test_http10_keepalive_client_is_told_to_keep_the_connection(
    tmp_path: Path, echo: EchoServer
) -> None:
    text = config({"echo": echo.port}, [("r", "/e", "echo")])
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        replies = []
        for path in (b"/e/1", b"/nope", b"/e/2"):
            await stream.send_all(b"GET %b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % path)
            replies.append(await _read_response(stream))
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert [r.split(b" ", 2)[1] for r in replies] == [b"200", b"404", b"200"]
    assert all(b"connection: keep-alive" in r.lower() for r in replies)


async def test_download_in_flight_survives_a_reload_that_removes_its_route(tmp_path: Path) -> None:
    half_sent = trio.Event()
    finish = trio.Event()

    async def slow_backend(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

        async def serve(stream: trio.SocketStream) -> None:
            async with stream:
                await stream.receive_some(65536)
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + b"a" * 100000
                )
                half_sent.set()
                await finish.wait()
                await stream.send_all(b"b" * 100000)

        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(serve, listeners)

    async with trio.open_nursery() as nursery:
        backend_port = await nursery.start(slow_backend)
        path = tmp_path / "c.yaml"
        server, port = await start_edge(
            nursery, path, config({"slow": backend_port}, [("r", "/", "slow")])
        )
        body = b""

        async def download() -> None:
            nonlocal body
            async with (
                httpx.AsyncClient(timeout=10) as client,
                client.stream("GET", f"http://127.0.0.1:{port}/big") as resp,
            ):
                async for piece in resp.aiter_bytes():
                    body += piece

        async with trio.open_nursery() as inner:
            inner.start_soon(download)
            await half_sent.wait()
            path.write_text(config({}, []))  # the route and its backend are gone
            assert server.reload()
            assert server.snapshot is not None and not server.snapshot.clusters
            finish.set()
        nursery.cancel_scope.cancel()
    assert body == b"a" * 100000 + b"b" * 100000


async def test_stale_pooled_connection_replays_get_but_never_post(tmp_path: Path) -> None:
    """The backend answers the first request of each connection and drops the connection
    on reading the second: what a pooled connection looks like when the upstream closed it."""
    seen: list[bytes] = []

    async def flaky(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

        async def serve(stream: trio.SocketStream) -> None:
            async with stream:
                for n in range(2):
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    seen.append(data.split(b" ", 2)[0] + b" %d" % n)
                    if n == 1:
                        return  # read it, then close without a word
                    await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(serve, listeners)

    async with trio.open_nursery() as nursery:
        port_b = await nursery.start(flaky)
        _, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"b": port_b}, [("r", "/", "b")])
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert (await client.get("/1")).status_code == 200
            assert (await client.get("/2")).status_code == 200  # replayed on a new connection
            assert (await client.post("/3", content=b"pay")).status_code == 502
        nursery.cancel_scope.cancel()
    assert seen == [b"GET 0", b"GET 1", b"GET 0", b"POST 1"]
