"""Accept-Encoding negotiation (RFC 9110 §12.5.3) and the encoders' streamed output."""

from __future__ import annotations

import gzip

import brotli
import pytest
import zstandard

from sidecar.filters.compress import CompressionSpec, Encoder, negotiate

OFFERED = ("gzip", "br", "zstd")


@pytest.mark.parametrize(
    ("accept", "want"),
    [
        (b"", None),
        (b"gzip", "gzip"),
        (b"GZIP", "gzip"),
        (b"br;q=1.0, gzip;q=0.8", "br"),
        (b"gzip;q=0.8, br", "br"),
        (b"zstd;q=0.5, gzip;q=0.5", "gzip"),  # a tie: the policy's order
        (b"*", "gzip"),
        (b"*;q=0.1, br;q=0.2", "br"),
        (b"br;q=0, *", "gzip"),  # refused by name, the rest by wildcard
        (b"gzip;q=0, br;q=0, zstd;q=0", None),
        (b"*;q=0", None),
        (b"identity", None),
        (b"deflate, compress", None),
        (b"gzip;q=2", "gzip"),  # not a valid q: the default 1 stands
        (b"gzip; q = 0.5, br;q=0.4", "gzip"),
        (b"x-gzip", "gzip"),
        (b",,, ;q=1, br", "br"),
        (b"gzip;q=0.001", "gzip"),
        (b"br, " * 200, "br"),  # long values are parsed, not cached
    ],
)
def test_negotiation(accept: bytes, want: str | None) -> None:
    assert negotiate(accept, OFFERED) == want


def test_the_policys_codings_only() -> None:
    assert negotiate(b"br, gzip;q=0.5", ("gzip",)) == "gzip"
    assert negotiate(b"br", ("gzip",)) is None


@pytest.mark.parametrize("coding", OFFERED)
def test_what_a_pause_flushes_decodes_on_its_own(coding: str) -> None:
    """A reader holding only what was sent until a pause can decode all of it."""
    enc = Encoder(coding, CompressionSpec(codings=OFFERED))
    parts = [b"event %d\n" % i * 50 for i in range(5)]
    sent = b""
    for i, part in enumerate(parts):
        sent += enc.chunk(part) + enc.flush()  # what goes out when the upstream pauses
        if coding == "gzip":
            got = __import__("zlib").decompressobj(31).decompress(sent)
        elif coding == "br":
            got = brotli.Decompressor().process(sent)
        else:
            got = zstandard.ZstdDecompressor().decompressobj().decompress(sent)
        assert got == b"".join(parts[: i + 1])
    sent += enc.finish()
    whole = {"gzip": gzip.decompress, "br": brotli.decompress}.get(coding)
    if whole is not None:
        assert whole(sent) == b"".join(parts)
    assert enc.out == len(sent)
