"""Malformed HTTP/2 frame sequences against a live edge, generated from a seed: random
frame types, flags, stream ids, lengths and header blocks (valid, mutated or junk),
interleaved with valid requests. The oracle: the edge never raises out of a connection
(nothing logged at ERROR), keeps serving (a fresh client is answered after every batch),
and the recording backend only ever receives requests llhttp accepts with an origin-form
target. `make fuzz` runs many more sequences (WEFT_H2_SEQUENCES, WEFT_H2_SEED)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import hpack
import pytest
import trio
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from sidecar.protocol.http2 import PREFACE
from tests.support.edge import config, start_edge
from tests.support.h2raw import RawH2, get
from tests.support.recorder import Recorder

SEQUENCES = int(os.environ.get("WEFT_H2_SEQUENCES", "150"))
SEED = int(os.environ.get("WEFT_H2_SEED", "17"))
_FIELDS = [
    (b":method", b"GET"), (b":method", b"POST"), (b":method", b"GET /admin"),
    (b":scheme", b"http"), (b":authority", b"h"), (b":authority", b"h /x"),
    (b":path", b"/api/x"), (b":path", b"api"), (b":path", b"/api/%2e%2e/admin"),
    (b":status", b"200"), (b"content-length", b"5"), (b"content-length", b"x"),
    (b"te", b"trailers"), (b"te", b"gzip"), (b"connection", b"close"), (b"Host", b"h"),
    (b"x-a", b"a\x01b"), (b"x-a", b" v"), (b"cookie", b"a=1"), (b"", b"v"),
    (b"x-forwarded-client-cert", b"URI=spiffe://x"), (b"transfer_encoding", b"chunked"),
]  # fmt: skip


_VALID = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"h"),
          (b":path", b"/api/f")]  # fmt: skip


def _block(rng: random.Random, encoder: hpack.Encoder) -> bytes:
    """A header block: a valid request with hostile fields added, or fields at random;
    sometimes a byte changed or the block cut short."""
    fields = [rng.choice(_FIELDS) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.6:
        fields = [*_VALID, *fields]
    block = bytearray(encoder.encode(fields))
    if rng.random() < 0.15 and block:
        if rng.random() < 0.5:
            block[rng.randrange(len(block))] = rng.randrange(256)
        else:
            del block[rng.randrange(len(block)) :]
    return bytes(block)


def _frames(rng: random.Random) -> bytes:
    """A connection: valid requests (half the frames) among frames of every kind, with
    odd flags, stream ids and payloads."""
    out = bytearray(PREFACE + SettingsFrame(0).serialize())
    encoder = hpack.Encoder()  # the connection's HPACK context, as a client keeps it
    sid = 1
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(16)
        stream = sid if rng.random() < 0.8 else rng.choice([0, sid + 2, rng.randrange(1, 1 << 31)])
        flags = {f for f in ("END_STREAM", "END_HEADERS") if rng.random() < 0.3}
        try:
            if kind < 8:  # a request: valid fields, or with something hostile among them
                fields = _VALID if kind < 5 else [*_VALID, rng.choice(_FIELDS)]
                frame = HeadersFrame(
                    sid, encoder.encode(fields), flags=["END_STREAM", "END_HEADERS"]
                ).serialize()
                sid += 2
            elif kind == 8:
                f = HeadersFrame(stream or 1, _block(rng, encoder))
                f.flags.update(flags)
                frame = f.serialize()
                sid += 2
            elif kind == 9:
                frame = ContinuationFrame(stream or 1, _block(rng, encoder)).serialize()
            elif kind == 10:
                f = DataFrame(stream or 1, rng.randbytes(rng.randint(0, 300)))
                f.flags.update(flags & {"END_STREAM"})
                frame = f.serialize()
            elif kind == 11:
                frame = RstStreamFrame(stream or 1, error_code=rng.randrange(16)).serialize()
            elif kind == 12:
                frame = SettingsFrame(
                    0, settings={rng.randrange(1, 9): rng.randrange(1 << 31)}
                ).serialize()
            elif kind == 13:
                frame = WindowUpdateFrame(
                    stream, window_increment=rng.choice([0, 1, (1 << 31) - 1])
                ).serialize()
            elif kind == 14:
                frame = PriorityFrame(stream or 1, depends_on=rng.randrange(8)).serialize()
            else:
                frame = _junk(rng, stream)
        except Exception:  # hyperframe refuses to build this one
            frame = _junk(rng, stream)
        out += frame
    if rng.random() < 0.2:
        out += GoAwayFrame(0, error_code=0).serialize()
    return bytes(out)


def _junk(rng: random.Random, stream: int) -> bytes:
    """A frame of any type and flags with a random payload (its length field is true, so
    the sequence stays framed and the settling PING is read as a frame)."""
    payload = rng.randbytes(rng.randint(0, 40))
    head = bytes([rng.randrange(256), rng.randrange(256)])
    return len(payload).to_bytes(3, "big") + head + stream.to_bytes(4, "big") + payload


async def _send_and_settle(port: int, data: bytes) -> None:
    """Send one sequence, then a PING. After its ACK, answers to the sequence's requests
    are read until the connection is quiet for 50 ms (the requests are being forwarded
    meanwhile), then the client leaves; a close from the edge ends it at once."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        marker = PingFrame(0, opaque_data=b"settled!").serialize()
        try:
            await stream.send_all(data + marker)
            got = b""
            with trio.fail_after(10):
                while b"settled!" not in got:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    got += chunk
                quiet = False
                while not quiet:
                    with trio.move_on_after(0.05) as cs:
                        if not await stream.receive_some(65536):
                            return
                    quiet = cs.cancelled_caught
        except trio.BrokenResourceError:
            return


@pytest.mark.slow
async def test_malformed_frame_sequences(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(SEED)
    caplog.set_level(logging.ERROR)
    async with trio.open_nursery() as nursery:
        backend: Recorder = await nursery.start(Recorder().run)
        text = config({"app": backend.port}, [("api", "/api", "app")])
        _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
        for i in range(SEQUENCES):
            await _send_and_settle(port, _frames(rng))
            if i % 25 == 24:
                client = await RawH2.connect(port)
                (answer,) = await client.wait(await client.request(get(b"/api/alive")))
                await client.aclose()
                assert answer.status == 200, i
        nursery.cancel_scope.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()
    assert not backend.errors
    for r in backend.requests:
        assert r.target.startswith(b"/api") and b" " not in r.method
        assert not r.values(b"x-forwarded-client-cert") and not r.values(b"transfer_encoding")
    assert any(r.target == b"/api/f" for r in backend.requests)  # valid requests got through
