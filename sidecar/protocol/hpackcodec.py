"""HPACK (RFC 7541) for the HTTP/2 core: a strict decoder and a cheap encoder (pure).

Decoder. Every representation of RFC 7541 §6, with the checks h2spec's HPACK group makes:
index 0 or past the tables, a dynamic table size update above our SETTINGS_HEADER_TABLE_SIZE
or after the first field, integers past 2^32 or longer than the block, and Huffman strings
with bad padding or EOS (the nibble automaton of the `hpack` package, run here compiled)
are `HpackError`s,
which the connection reports as COMPRESSION_ERROR. The header list's size (names, values and
32 octets each, RFC 9113 §6.5.2) is counted while decoding, so a list over the limit is
refused before it is built in full (`HeaderListTooLarge`).

Encoder. Fields in the static table are indexed; other fields are added to the dynamic table
and indexed on their next use, except for values that change per message (`VOLATILE`: dates,
lengths, ids), which are sent as literals without indexing, and credentials, sent as
never-indexed literals (§7.1.3). Strings go out without Huffman coding: a few more octets,
no per-byte work. A header table size the peer lowers is announced at the start of the next
block (§4.2).
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import HUFFMAN_TABLE
from hpack.table import HeaderTable

Headers = list[tuple[bytes, bytes]]

STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
STATIC_LEN = len(STATIC)  # 61
DEFAULT_TABLE_SIZE = 4096
ENTRY_OVERHEAD = 32  # RFC 7541 §4.1

_STATIC_FIELD: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(STATIC, 1):
    _STATIC_FIELD.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)

# Sent as literals without indexing: a new value nearly every time
VOLATILE = frozenset({
    b":path", b"content-length", b"date", b"etag", b"last-modified", b"expires", b"age",
    b"x-request-id", b"traceparent", b"tracestate", b"x-b3-traceid", b"x-b3-spanid",
    b"x-b3-parentspanid", b"b3", b"grpc-timeout", b"x-envoy-expected-rq-timeout-ms",
    b"x-forwarded-for", b"x-forwarded-client-cert", b"location", b"content-range",
})  # fmt: skip
# Never indexed, by any hop (RFC 7541 §7.1.3)
SENSITIVE = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-api-key"}
)


class HpackError(Exception):
    """A header block that cannot be decoded (COMPRESSION_ERROR)."""


class HeaderListTooLarge(Exception):
    """A header list over the advertised SETTINGS_MAX_HEADER_LIST_SIZE."""


def _integer(out: bytearray, value: int, prefix_bits: int, first: int) -> None:
    """Append `value` with an N-bit prefix (§5.1); `first` holds the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        out.append(first | value)
        return
    out.append(first | limit)
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


_SMALL = [bytes([b]) for b in range(256)]


def _prefixed(value: int, prefix_bits: int, first: int) -> bytes:
    """An integer with an N-bit prefix as bytes; one byte from a table when it fits."""
    if value < (1 << prefix_bits) - 1:
        return _SMALL[first | value]
    out = bytearray()
    _integer(out, value, prefix_bits, first)
    return bytes(out)


def _string(out: bytearray, data: bytes) -> None:
    n = len(data)
    if n < 0x7F:
        out.append(n)
    else:
        _integer(out, n, 7, 0)
    out += data


# How a field name starts a literal (the representation's first bytes up to the value),
# and whether the field then joins the dynamic table: by name, computed once each.
_LITERALS: dict[bytes, tuple[bytes, bool]] = {}
LITERALS_KEPT = 512


def _literal(name: bytes) -> tuple[bytes, bool]:
    out = bytearray()
    name_at = _STATIC_NAME.get(name, 0)
    indexed = name not in SENSITIVE and name not in VOLATILE
    if indexed:
        _integer(out, name_at, 6, 0x40)
    else:
        _integer(out, name_at, 4, 0x10 if name in SENSITIVE else 0)
    if not name_at:
        _string(out, name)
    if len(_LITERALS) >= LITERALS_KEPT:
        _LITERALS.clear()
    literal = (bytes(out), indexed)
    _LITERALS[name] = literal
    return literal


class Encoder:
    """The sending side's HPACK state (one per connection)."""

    __slots__ = ("entries", "index", "max_size", "pending_sizes", "seq", "size")

    def __init__(self) -> None:
        self.entries: deque[tuple[bytes, bytes, int]] = deque()  # newest first; (n, v, seq)
        self.index: dict[tuple[bytes, bytes], int] = {}  # field -> seq of its newest entry
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE
        self.seq = 0  # entries inserted so far
        self.pending_sizes: list[int] = []  # size updates to announce (§4.2)

    def set_max_size(self, size: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed; we use at most 4096."""
        size = min(size, DEFAULT_TABLE_SIZE)
        if size != self.max_size:
            self.max_size = size
            self.pending_sizes.append(size)
            self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            n, v, seq = self.entries.pop()
            self.size -= len(n) + len(v) + ENTRY_OVERHEAD
            if self.index.get((n, v)) == seq:
                del self.index[(n, v)]

    def encode(self, headers: Headers) -> bytes:
        parts: list[bytes] = []  # joined once: cheaper than growing a bytearray
        if self.pending_sizes:  # the smallest the table went to, then where it is now
            out = bytearray()
            low, now = min(self.pending_sizes), self.pending_sizes[-1]
            if low < now:
                _integer(out, low, 5, 0x20)
            _integer(out, now, 5, 0x20)
            parts.append(bytes(out))
            self.pending_sizes = []
        for name, value in headers:
            field = (name, value)
            at = _STATIC_FIELD.get(field, 0)
            if at:
                parts.append(_SMALL[0x80 | at])
                continue
            seq = self.index.get(field, -1)
            if seq >= 0:
                parts.append(_prefixed(STATIC_LEN + 1 + self.seq - seq, 7, 0x80))
                continue
            literal = _LITERALS.get(name)
            if literal is None:
                literal = _literal(name)
            parts.append(literal[0])
            parts.append(_prefixed(len(value), 7, 0))
            parts.append(value)
            if not literal[1]:
                continue
            size = len(name) + len(value) + ENTRY_OVERHEAD
            if size > self.max_size:  # an entry larger than the table empties it (§4.4)
                self.entries.clear()
                self.index.clear()
                self.size = 0
                continue
            self.seq += 1
            self.entries.appendleft((name, value, self.seq))
            self.index[field] = self.seq
            self.size += size
            self._evict()
        return b"".join(parts)


class Decoder:
    """The receiving side's HPACK state (one per connection)."""

    __slots__ = ("entries", "max_allowed", "max_list_size", "max_size", "size")

    def __init__(self, max_list_size: int = 0) -> None:
        self.entries: deque[tuple[bytes, bytes]] = deque()  # newest first
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE  # the table's current limit (size updates)
        self.max_allowed = DEFAULT_TABLE_SIZE  # our SETTINGS_HEADER_TABLE_SIZE
        self.max_list_size = max_list_size  # 0: unlimited

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + ENTRY_OVERHEAD
        if size > self.max_size:
            self.entries.clear()
            self.size = 0
            return
        self.entries.appendleft((name, value))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            n, v = self.entries.pop()
            self.size -= len(n) + len(v) + ENTRY_OVERHEAD

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if index <= 0:
            raise HpackError("index 0")
        if index <= STATIC_LEN:
            return STATIC[index - 1]
        at = index - STATIC_LEN - 1
        if at >= len(self.entries):
            raise HpackError(f"index {index} past the tables")
        return self.entries[at]

    def _literal(self, block: bytes, pos: int, prefix_bits: int) -> tuple[bytes, bytes, int]:
        """A literal field: its name by index or as a string, then its value."""
        index, pos = _read_integer(block, pos, prefix_bits)
        if index:
            name = self._field(index)[0]
        else:
            name, pos = _read_string(block, pos)
        value, pos = _read_string(block, pos)
        return name, value, pos

    def decode(self, block: bytes) -> Headers:
        headers: Headers = []
        pos = 0
        end = len(block)
        list_size = 0
        limit = self.max_list_size
        fields_seen = False
        while pos < end:
            b = block[pos]
            if b & 0x80:  # indexed field (§6.1)
                index, pos = _read_integer(block, pos, 7)
                name, value = self._field(index)
            elif b & 0x40:  # literal with incremental indexing (§6.2.1)
                name, value, pos = self._literal(block, pos, 6)
                self._add(name, value)
            elif b & 0x20:  # dynamic table size update (§6.3)
                if fields_seen:
                    raise HpackError("table size update after a field")
                size, pos = _read_integer(block, pos, 5)
                if size > self.max_allowed:
                    raise HpackError(f"table size update to {size} over {self.max_allowed}")
                self.max_size = size
                self._evict()
                continue
            else:  # literal without indexing / never indexed (§6.2.2, §6.2.3)
                name, value, pos = self._literal(block, pos, 4)
            fields_seen = True
            list_size += len(name) + len(value) + ENTRY_OVERHEAD
            if limit and list_size > limit:
                raise HeaderListTooLarge(f"header list over {limit} octets")
            headers.append((name, value))
        return headers


def _read_integer(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    limit = (1 << prefix_bits) - 1
    value = block[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(block):
            raise HpackError("integer runs past the block")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:  # nothing in a header block needs more than 2^32
            raise HpackError("integer too large")


def _read_string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise HpackError("string runs past the block")
    huffman = block[pos] & 0x80
    length, pos = _read_integer(block, pos, 7)
    end = pos + length
    if end > len(block):
        raise HpackError("string runs past the block")
    data = block[pos:end]
    return (_huffman(data) if huffman else data), end


# hpack's Huffman automaton: 16 transitions (one per nibble) for each of 256 states, each
# packed here as next state | flags << 8 | symbol << 16
_HUFFMAN: list[int] = [state | flags << 8 | symbol << 16 for state, flags, symbol in HUFFMAN_TABLE]
_COMPLETE, _EMIT, _FAIL = 1, 2, 4


def _huffman(data: bytes) -> bytes:
    """A Huffman-coded string (RFC 7541 §5.2, Appendix B) decoded."""
    out = bytearray()
    table = _HUFFMAN
    state = 0
    flags = _COMPLETE
    for byte in data:  # the high nibble, then the low, unrolled: a loop over the two
        # shifts measured +1-2% instructions per HTTP/2 request (nghttpd's dates are coded)
        entry = table[state * 16 + (byte >> 4)]
        flags = entry >> 8 & 0xFF
        if flags & _FAIL:
            raise HpackError("invalid Huffman string")
        if flags & _EMIT:
            out.append(entry >> 16)
        state = entry & 0xFF
        entry = table[state * 16 + (byte & 0x0F)]
        flags = entry >> 8 & 0xFF
        if flags & _FAIL:
            raise HpackError("invalid Huffman string")
        if flags & _EMIT:
            out.append(entry >> 16)
        state = entry & 0xFF
    if not flags & _COMPLETE:
        raise HpackError("incomplete Huffman string (padding)")
    return bytes(out)
