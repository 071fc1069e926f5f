"""Request smuggling and HTTP/2 downgrade attacks against the edge, end to end: a hostile
client on a raw socket, the edge, and a recording backend whose view is asserted (what it
parsed with llhttp, byte for byte)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from tests.support.edge import config, start_edge
from tests.support.h2raw import RawH2, get
from tests.support.recorder import Recorder

SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[tuple[int, Recorder]]:
    """An edge routing /api (only) to a recording backend."""
    async with trio.open_nursery() as nursery:
        backend: Recorder = await nursery.start(Recorder().run)
        text = config({"app": backend.port}, [("api", "/api", "app")])
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        yield port, backend
        nursery.cancel_scope.cancel()


async def _send(port: int, data: bytes, *, responses: int = 1) -> list[bytes]:
    """Send `data` on one connection; the responses (heads and bodies) it got back."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        got = b""
        with trio.move_on_after(2 if responses > 1 else 10):
            while got.count(b"HTTP/1.1 ") < responses or not _complete(got):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                got += chunk
    return [b"HTTP/1.1 " + r for r in got.split(b"HTTP/1.1 ")[1:]]


def _complete(data: bytes) -> bool:
    last = data.rsplit(b"HTTP/1.1 ", 1)[-1]
    head, sep, body = last.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return True


def _post(extra: bytes, lead: bytes = b"") -> bytes:
    return (
        lead + b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n" % len(SMUGGLED)
        + extra + b"\r\n" + SMUGGLED
    )  # fmt: skip


@pytest.mark.parametrize(
    "attack",
    [
        _post(b"Connection: Content-Length\r\n"),
        _post(b"Connection: close, content-length\r\n"),
        _post(b"", lead=b"\r\n"),
        _post(b"", lead=b"\n"),
        _post(b"Transfer_Encoding: chunked\r\n"),
    ],
    ids=["connection-cl", "connection-close-cl", "leading-crlf", "leading-lf", "underscore-te"],
)
async def test_a_body_never_becomes_a_second_request(
    edge: tuple[int, Recorder], attack: bytes
) -> None:
    port, backend = edge
    answers = await _send(port, attack)
    assert len(answers) == 1 and answers[0].startswith(b"HTTP/1.1 200 ")
    assert [(r.method, r.target, r.body) for r in backend.requests] == [
        (b"POST", b"/api", SMUGGLED)
    ]
    assert backend.requests[0].values(b"host") == [b"h"]
    assert not backend.errors


async def test_leading_empty_lines_in_the_middle_of_a_keepalive_connection(
    edge: tuple[int, Recorder],
) -> None:
    port, backend = edge
    first = b"GET /api/1 HTTP/1.1\r\nHost: h\r\n\r\n"
    answers = await _send(port, first + _post(b"", lead=b"\r\n\n"), responses=2)
    assert len(answers) == 2
    assert [(r.method, r.target) for r in backend.requests] == [
        (b"GET", b"/api/1"),
        (b"POST", b"/api"),
    ]
    assert backend.requests[1].body == SMUGGLED


async def test_response_queue_is_not_poisoned(edge: tuple[int, Recorder]) -> None:
    """An attacker's request followed by a victim's on another connection (the edge
    reuses its upstream connection): the victim gets its own answer."""
    port, backend = edge
    await _send(port, _post(b"Connection: Content-Length\r\n"))
    (victim,) = await _send(port, b"GET /api/victim HTTP/1.1\r\nHost: h\r\n\r\n")
    assert victim.endswith(b"\r\n\r\n/api/victim")
    assert backend.targets == ["/api", "/api/victim"]


async def test_absolute_form_without_a_path(edge: tuple[int, Recorder]) -> None:
    port, backend = edge
    (answer,) = await _send(port, b"GET http://h?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    # "/?x=1" has no route (only /api): 404 from the edge, nothing reaches the backend
    assert answer.startswith(b"HTTP/1.1 404 ")
    (answer,) = await _send(port, b"GET http://h/api?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert [(r.target, r.values(b"host")) for r in backend.requests] == [(b"/api?x=1", [b"h"])]


@pytest.mark.parametrize(
    ("target", "status"),
    [
        (b"/api/%2e%2e/admin", 404),  # is /admin: no route
        (b"/api/..\\admin", 404),
        (b"/api/..%2Fadmin", 400),
        (b"/api/%5c..%5cadmin", 400),
        (b"/api#x", 400),
    ],
)
async def test_paths_are_normalized_before_routing(
    edge: tuple[int, Recorder], target: bytes, status: int
) -> None:
    port, backend = edge
    (answer,) = await _send(port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 %d " % status)
    assert backend.requests == []


async def test_normalized_path_is_the_one_forwarded(edge: tuple[int, Recorder]) -> None:
    port, backend = edge
    (answer,) = await _send(port, b"GET /x/../api/%7e%41/./b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert backend.targets == ["/api/~A/b"]


async def test_transfer_codings_other_than_chunked_get_501(edge: tuple[int, Recorder]) -> None:
    port, backend = edge
    (answer,) = await _send(
        port,
        b"POST /api HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 501 ")
    assert backend.requests == []


H2_ATTACKS = {
    "space-in-method": get(method=b"GET /admin"),
    "tab-in-method": get(method=b"GET\t/admin"),
    "space-in-path": get(path=b"/api HTTP/1.1\r\nHost: h\r\n\r\nGET /admin"),
    "path-without-slash": get(path=b"api"),
    "absolute-path": get(path=b"http://h/api"),
    "space-in-authority": get(authority=b"h /admin"),
    "userinfo-in-authority": get(authority=b"user@h"),
    "ctl-in-value": [*get(b"/api"), (b"x-a", b"a\x01b")],
    "del-in-value": [*get(b"/api"), (b"x-a", b"a\x7fb")],
    "bad-name": [*get(b"/api"), (b"x(a)", b"1")],
    "name-with-slash": [*get(b"/api"), (b"x/a", b"1")],
    "fragment": get(path=b"/api#x"),
}


async def test_h2_fields_an_http1_client_could_not_send_are_refused(
    edge: tuple[int, Recorder],
) -> None:
    """Each on its own stream of one connection: a 400 for that stream only, the backend
    sees none of them, and a good request on the same connection still works."""
    port, backend = edge
    client = await RawH2.connect(port)
    sids = {name: await client.request(h) for name, h in H2_ATTACKS.items()}
    ok = await client.request(get(b"/api/ok"))
    answers = dict(zip(sids, await client.wait(*sids.values()), strict=True))
    (good,) = await client.wait(ok)
    await client.aclose()
    for name, answer in answers.items():
        assert answer.status == 400 or answer.reset is not None, (name, answer)
    assert good.status == 200 and good.body == b"/api/ok"
    assert client.goaway is None
    assert backend.targets == ["/api/ok"]


async def test_h2_malformed_path_in_the_handler_resets_only_its_stream(
    edge: tuple[int, Recorder],
) -> None:
    """A path that passes the field checks but is refused while routing (an encoded
    slash) answers 400 on its stream; the connection's other streams carry on."""
    port, backend = edge
    client = await RawH2.connect(port)
    bad = await client.request(get(b"/api/..%2Fadmin"))
    good = await client.request(get(b"/api/after"))
    bad_answer, good_answer = await client.wait(bad, good)
    await client.aclose()
    assert bad_answer.status == 400
    assert good_answer.status == 200 and client.goaway is None
    assert backend.targets == ["/api/after"]
