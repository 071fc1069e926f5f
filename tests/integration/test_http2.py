"""HTTP/2 downstream: curl, nghttp and h2load against the edge, h2c and over TLS."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
import trio

from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge

needs = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("nghttp") and shutil.which("h2load")),
    reason="curl, nghttp and h2load are needed (make test installs them)",
)


@pytest.fixture
def echo() -> AsyncIterator[EchoServer]:
    with EchoServer("echo") as server:
        yield server


async def _run(*cmd: str) -> tuple[int, str, str]:
    proc = await trio.run_process(list(cmd), capture_stdout=True, capture_stderr=True, check=False)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode()


@needs
async def test_curl_prior_knowledge_get_post_head(tmp_path: Path, echo: EchoServer) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: more than every flow-control window
    (tmp_path / "body").write_bytes(body)
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"e": echo.port}, [("r", "/", "e")])
        )
        url = f"http://127.0.0.1:{port}/p?q=1"
        get = await _run("curl", "-sS", "-v", "--http2-prior-knowledge", "-H", "Cookie: a=1",
                         "-H", "Cookie: b=2", url)  # fmt: skip
        post = await _run("curl", "-sS", "--http2-prior-knowledge", "--data-binary",
                          f"@{tmp_path / 'body'}", url)  # fmt: skip
        head = await _run("curl", "-sS", "-I", "--http2-prior-knowledge", url)
        nursery.cancel_scope.cancel()
    assert get[0] == 0, get
    assert "< HTTP/2 200" in get[2]
    seen = json.loads(get[1])
    assert seen["path"] == "/p?q=1" and seen["method"] == "GET"
    assert seen["headers"]["cookie"] == ["a=1; b=2"]  # split cookies joined for HTTP/1.1
    assert seen["headers"]["x-forwarded-proto"] == ["http"]
    got = json.loads(post[1])
    assert got["body_length"] == len(body)
    assert got["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert head[0] == 0 and head[1].startswith("HTTP/2 200") and "content-length:" in head[1]


@needs
async def test_many_concurrent_streams_with_h2load_and_nghttp(
    tmp_path: Path, echo: EchoServer
) -> None:
    async with trio.open_nursery() as nursery:
        server, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"e": echo.port}, [("r", "/", "e")])
        )
        url = f"http://127.0.0.1:{port}/x"
        load = await _run("h2load", "-n", "400", "-c", "2", "-m", "50", url)
        ng = await _run("nghttp", "-n", "-s", "-m", "20", url)
        metrics = server.metrics.render()
        nursery.cancel_scope.cancel()
    assert "400 succeeded, 0 failed, 0 errored" in load[1], load
    assert "Application protocol: h2c" in load[1]
    assert ng[0] == 0, ng
    assert 'code="200"} 420' in metrics


@needs
async def test_errors_the_proxy_answers_travel_as_http2(tmp_path: Path, echo: EchoServer) -> None:
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"e": echo.port}, [("r", "/api", "e")])
        )
        missing = await _run("curl", "-sS", "-i", "--http2-prior-knowledge",
                             f"http://127.0.0.1:{port}/nowhere")  # fmt: skip
        nursery.cancel_scope.cancel()
    assert missing[1].startswith("HTTP/2 404"), missing
    assert missing[1].endswith("no route\n")


async def test_client_reset_and_bad_frames(tmp_path: Path, echo: EchoServer) -> None:
    """A raw h2 client: RST_STREAM mid-upload frees the stream; garbage gets GOAWAY."""
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"e": echo.port}, [("r", "/", "e")])
        )
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        head = [(":method", "POST"), (":path", "/up"), (":scheme", "http"),
                (":authority", "t")]  # fmt: skip
        client.send_headers(1, head)
        client.send_data(1, b"x" * 1000)
        client.reset_stream(1)
        client.send_headers(3, [(":method", "GET"), (":path", "/after"), (":scheme", "http"),
                                (":authority", "t")], end_stream=True)  # fmt: skip
        await stream.send_all(client.data_to_send())
        status = None
        with trio.fail_after(10):
            while status is None:
                data = await stream.receive_some(65536)
                assert data
                for ev in client.receive_data(data):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 3:
                        status = dict(ev.headers)[b":status"]
                await stream.send_all(client.data_to_send())
        # Now break the protocol: DATA on stream 0 is a connection error.
        await stream.send_all(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        goaway = None
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                for ev in client.receive_data(data):
                    if isinstance(ev, h2.events.ConnectionTerminated):
                        goaway = ev
        nursery.cancel_scope.cancel()
    assert status == b"200"
    assert goaway is not None and goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert not any(r["path"] == "/up" for r in echo.received if r["body_length"] == 1000)


async def test_a_client_that_stops_reading_stops_the_upstream(
    tmp_path: Path, echo: EchoServer
) -> None:
    """Flow control end to end: the client's window stays closed, so the proxy stops
    reading the upstream; the backend stalls with a bounded amount in flight, and resumes
    when the client opens its window."""
    total = 64 * 1024 * 1024
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(
            nursery, tmp_path / "c.yaml", config({"e": echo.port}, [("r", "/", "e")])
        )
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":path", f"/bytes/{total}"),
                                (":scheme", "http"), (":authority", "t")], end_stream=True)  # fmt: skip
        await stream.send_all(client.data_to_send())
        # Read frames but never acknowledge DATA: the 64 KiB windows close and stay closed.
        received = unacked = 0
        with trio.move_on_after(0.5):
            while True:
                for ev in client.receive_data(await stream.receive_some(65536)):
                    if isinstance(ev, h2.events.DataReceived):
                        received += len(ev.data)
                        unacked += ev.flow_controlled_length
        stalled_at = -1
        with trio.fail_after(20):
            while echo.streamed != stalled_at:  # the backend stops when buffers fill
                stalled_at = echo.streamed
                await trio.sleep(0.3)
        # Now read everything, acknowledging as we go (and what came before).
        client.acknowledge_received_data(unacked, 1)
        await stream.send_all(client.data_to_send())
        with trio.fail_after(60):
            while received < total:
                data = await stream.receive_some(1 << 20)
                assert data
                for ev in client.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        received += len(ev.data)
                        client.acknowledge_received_data(ev.flow_controlled_length, 1)
                await stream.send_all(client.data_to_send())
        nursery.cancel_scope.cancel()
    assert stalled_at < 24 * 1024 * 1024  # socket buffers + windows, not the whole body
    assert received == total


async def test_an_answer_before_the_body_ends_the_stream_without_a_reset(
    tmp_path: Path, echo: EchoServer
) -> None:
    """A request refused before its body was read (no route: 404) while the client still
    sends the body: the small rest is read and dropped, so the stream ends cleanly instead
    of with RST_STREAM (which curl reports as an error after the answer)."""
    from tests.support.h2raw import Answer, RawH2, get

    text = config({"api": echo.port}, [("api", "/api", "api")])
    async with trio.open_nursery() as nursery:
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        client = await RawH2.connect(port)
        sid = client.h2.get_next_available_stream_id()
        client.h2.send_headers(sid, get(b"/nowhere", method=b"POST"), end_stream=False)
        client.answers[sid] = Answer()
        await client.flush()
        [refused] = await client.wait(sid)
        assert refused.status == 404 and refused.reset is None
        client.h2.send_data(sid, b"the rest of the body", end_stream=True)
        await client.flush()
        after = await client.request(get(b"/api/x"))
        [ok] = await client.wait(after)  # frames are ordered: a reset would be here by now
        assert ok.status == 200
        assert client.answers[sid].reset is None
        await client.aclose()
        nursery.cancel_scope.cancel()
