"""The edge's access log has a line for every request it answers, those it refuses before
routing too (CONNECT, malformed heads), over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from tests.support.echo import EchoServer
from tests.support.edge import config, raw_exchange, start_edge
from tests.support.h2raw import RawH2, get


async def test_refused_requests_are_in_the_access_log(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    with EchoServer("api") as api, log_path.open("w") as access_log:
        async with trio.open_nursery() as nursery:
            server, port = await start_edge(
                nursery, tmp_path / "c.yaml", config({"api": api.port}, [("api", "/", "api")]),
                access_log=access_log,
            )  # fmt: skip
            connect = await raw_exchange(
                port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
            )
            bad = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
            h2 = await RawH2.connect(port)
            sid = await h2.request([(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
            (answer,) = await h2.wait(sid)
            ok = await h2.request(get(b"/fine", b"a"))
            await h2.wait(ok)
            await h2.aclose()
            assert server.access_log is not None
            server.access_log.flush()
            nursery.cancel_scope.cancel()
    assert connect.startswith(b"HTTP/1.1 405 ") and bad.startswith(b"HTTP/1.1 400 ")
    assert answer.status == 405
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    got = [(x["method"], x["authority"], x["protocol"], x["status"], x["detail"]) for x in lines]
    assert got[0] == ("CONNECT", "example.com:443", "HTTP/1.1", 405,
                      "refused_connect_is_not_supported_here")  # fmt: skip
    assert got[1][0] == "-" and got[1][3] == 400 and got[1][4].startswith("refused_")
    assert got[2] == ("CONNECT", "example.com:443", "HTTP/2", 405,
                      "refused_connect_is_not_supported_here")  # fmt: skip
    assert got[3][:4] == ("GET", "a", "HTTP/2", 200)
    assert 'code="405"' in server.metrics.render()
