"""Coverage-guided fuzzing of the HTTP/2 core and its HPACK decoder.

Two oracles. HPACK: a header block decodes with Weft's decoder exactly when it decodes with
the `hpack` package (an independent implementation of the same RFC), to the same list, over
two blocks sharing the dynamic table. Frames: whatever bytes follow the client preface, the
server core either returns events or raises H2ConnectionError having queued a GOAWAY with
that code, never anything else; HEADERS events come on odd, increasing stream ids; a DATA
event never exceeds the window the core advertised; nothing is reported after a GOAWAY.

    python -m fuzz.h2_core [libFuzzer flags]
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    import hpack
    from hpack.exceptions import HPACKError

    from sidecar.protocol import h2core
    from sidecar.protocol.hpackcodec import Decoder, HeaderListTooLarge, HpackError

SETTINGS = b"\0\0\0\x04\0\0\0\0\0"


def _hpack(blocks: list[bytes]) -> None:
    ours, theirs = Decoder(), hpack.Decoder(max_header_list_size=1 << 30)
    for block in blocks:
        try:
            mine: list[tuple[bytes, bytes]] | None = ours.decode(block)
        except (HpackError, HeaderListTooLarge):
            mine = None
        try:
            other: list[tuple[bytes, bytes]] | None = [
                (bytes(n), bytes(v)) for n, v in theirs.decode(block, raw=True)
            ]
        except (HPACKError, ValueError, IndexError):
            other = None
        assert mine == other, (block, mine, other)
        if mine is None:
            return


def _frames(data: bytes) -> None:
    core = h2core.H2Core(client=False, max_concurrent_streams=4, max_header_list_size=4096)
    core.initiate_connection(1 << 20)
    core.data_to_send()
    last = 0
    try:
        events = core.receive_data(h2core.PREFACE + SETTINGS + data)
    except h2core.H2ConnectionError as exc:
        out = core.data_to_send()
        goaway = out.rfind(b"\x07\0\0\0\0\0")  # type GOAWAY, no flags, stream 0
        assert goaway >= 3 and int.from_bytes(out[goaway + 10 : goaway + 14], "big") == exc.code
        assert core.receive_data(b"\0\0\0\x04\0\0\0\0\0") == []
        return
    for event in events:
        if event.kind == h2core.Event.HEADERS:
            assert event.stream_id % 2 == 1 and event.stream_id > last
            last = event.stream_id
        elif event.kind == h2core.Event.DATA:
            assert event.flow <= 1 << 20 and len(event.data) <= event.flow


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():
        _hpack([fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)) for _ in range(2)])
    else:
        _frames(fdp.ConsumeBytes(fdp.remaining_bytes()))


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
