"""The HPACK codec against an independent implementation (the `hpack` package) both ways:
what Weft encodes, hpack decodes to the same list, and the other way round, over many
blocks on one connection (the dynamic tables must stay in step), with table size changes."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.protocol.hpackcodec import Decoder, Encoder, HeaderListTooLarge, HpackError

NAMES = [b":status", b":path", b"content-type", b"x-a", b"x-b", b"cookie", b"date",
         b"content-length", b"grpc-status", b"server", b"x-long-name-" * 3]  # fmt: skip
field = st.tuples(
    st.one_of(st.sampled_from(NAMES), st.from_regex(rb"\A[a-z][a-z0-9-]{0,20}\Z")),
    st.one_of(st.sampled_from([b"", b"200", b"0", b"text/html", b"x" * 300]),
              st.binary(max_size=60).map(lambda b: bytes(c % 94 + 33 for c in b))),
)  # fmt: skip
blocks = st.lists(st.lists(field, max_size=12), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(blocks, st.lists(st.sampled_from([0, 64, 256, 4096, 100_000]), max_size=3))
def test_weft_encodes_what_hpack_decodes(messages: list, sizes: list[int]) -> None:
    enc, dec = Encoder(), hpack.Decoder()
    for i, headers in enumerate(messages):
        if i < len(sizes):  # the peer's SETTINGS_HEADER_TABLE_SIZE changes between blocks
            enc.set_max_size(sizes[i])
        assert dec.decode(enc.encode(headers), raw=True) == headers


@settings(max_examples=300, deadline=None)
@given(blocks, st.booleans())
def test_weft_decodes_what_hpack_encodes(messages: list, huffman: bool) -> None:
    enc, dec = hpack.Encoder(), Decoder()
    for headers in messages:
        assert dec.decode(enc.encode(headers, huffman=huffman)) == headers


def test_repeated_fields_are_indexed_and_volatile_ones_are_not() -> None:
    enc = Encoder()
    headers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
               (b"date", b"Sat, 05 Dec 2026 01:00:00 GMT")]  # fmt: skip
    first = enc.encode(headers)
    second = enc.encode(headers)
    assert len(second) < len(first)
    assert b"application/grpc" not in second  # now an index into the dynamic table
    assert b"GMT" in second  # the date is sent again, never indexed


def test_credentials_are_never_indexed() -> None:
    block = Encoder().encode([(b"authorization", b"Bearer x")])
    assert block[0] & 0xF0 == 0x10  # literal never indexed (RFC 7541 §6.2.3)


@pytest.mark.parametrize(
    "block, why",
    [
        (b"\x80", "index 0"),
        (b"\xff\x00", "past the tables"),  # index 127
        (b"\x3f\xe2\x1f", "table size update"),  # size 4097 > 4096
        (b"\x82\x20", "after a field"),
        (b"\x0f\xff\xff\xff\xff\xff\xff", "integer"),
        (b"\x00\x85abc", "past the block"),
        (b"\x00\x81\xff\x81\xff", "Huffman"),  # name: an EOS-padded Huffman string
    ],
)
def test_malformed_blocks_are_refused(block: bytes, why: str) -> None:
    with pytest.raises(HpackError, match=why):
        Decoder().decode(block)


def test_a_header_list_over_the_limit_is_refused_while_decoding() -> None:
    block = hpack.Encoder().encode([(b"x-big", b"v" * 200)] * 10)
    assert len(Decoder(4096).decode(block)) == 10
    with pytest.raises(HeaderListTooLarge):
        Decoder(1000).decode(block)
