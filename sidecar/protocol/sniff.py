"""What a connection speaks, from its first bytes (pure): TLS, HTTP/2, HTTP/1.x or opaque.

`detect` answers as soon as the bytes decide, or None when it needs more. It never waits
for a full request line: a method token and a space are HTTP/1.x, a TLS handshake record
header is TLS, the HTTP/2 preface (or a prefix of it) is HTTP/2, and anything else is opaque.
`client_hello_sni` reads the server name from a ClientHello for passthrough routing.
"""

from __future__ import annotations

import enum

from sidecar.protocol.http2 import PREFACE

MAX_METHOD = 20  # longer than any registered method; past it, not HTTP/1.x


class Detected(enum.Enum):
    TLS = "tls"
    HTTP2 = "http2"
    HTTP1 = "http1"
    OPAQUE = "opaque"


_TOKEN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")


def detect(prefix: bytes) -> Detected | None:
    """The protocol of a stream starting with `prefix`; None while undecided."""
    if not prefix:
        return None
    if prefix[0] == 0x16:  # TLS handshake record: 0x16, version 3.x
        if len(prefix) < 2:
            return None
        return Detected.TLS if prefix[1] == 0x03 else Detected.OPAQUE
    head = prefix[: len(PREFACE)]
    if PREFACE.startswith(head):
        return Detected.HTTP2 if len(head) == len(PREFACE) else None
    for i, byte in enumerate(prefix[: MAX_METHOD + 1]):
        if byte == 0x20:
            return Detected.HTTP1 if i > 0 else Detected.OPAQUE
        if byte not in _TOKEN:
            return Detected.OPAQUE
    return None if len(prefix) <= MAX_METHOD else Detected.OPAQUE


class NeedMore(Exception):
    """The ClientHello is not complete yet."""


def client_hello_sni(data: bytes) -> str | None:
    """The SNI host name of the ClientHello `data` starts with (lower case); None when it
    has none or is not a ClientHello; NeedMore while the record is incomplete."""
    if len(data) < 5:
        raise NeedMore
    if data[0] != 0x16:
        return None
    record_len = int.from_bytes(data[3:5], "big")
    if len(data) < 5 + record_len:
        if record_len > 1 << 14:
            return None
        raise NeedMore
    body = data[5 : 5 + record_len]
    try:
        return _sni(body)
    except IndexError:
        return None


def _sni(hs: bytes) -> str | None:
    if hs[0] != 0x01:  # ClientHello
        return None
    pos = 4 + 2 + 32  # handshake header, version, random
    pos += 1 + hs[pos]  # session id
    pos += 2 + int.from_bytes(hs[pos : pos + 2], "big")  # cipher suites
    pos += 1 + hs[pos]  # compression methods
    if pos + 2 > len(hs):
        return None
    end = pos + 2 + int.from_bytes(hs[pos : pos + 2], "big")
    pos += 2
    while pos + 4 <= end:
        ext_type = int.from_bytes(hs[pos : pos + 2], "big")
        ext_len = int.from_bytes(hs[pos + 2 : pos + 4], "big")
        pos += 4
        if ext_type == 0:  # server_name: list length, then (type, length, name)
            p = pos + 2
            if hs[p] == 0:
                n = int.from_bytes(hs[p + 1 : p + 3], "big")
                name = hs[p + 3 : p + 3 + n]
                if len(name) != n:
                    raise IndexError
                return name.decode("ascii", "replace").lower().rstrip(".")
            return None
        pos += ext_len
    return None
