"""Request decompression (BackendTrafficPolicy.requestDecompression, Weft's): a request
body the client sent gzip-, Brotli- or zstd-encoded reaches the upstream inflated, with
its new length and without Content-Encoding.

The body is read whole (its encoded size bounded by the route's or the listener's body
limit) and inflated into at most `max_inflated` bytes: a body that would inflate past it
is refused with 413 as soon as the limit is reached — a zip bomb costs the proxy the
limit, never its ratio. A body that does not decode is refused with 400. A coding Weft
does not decode, or several stacked, is refused with 415 (RFC 9110 §15.5.16) rather than
passed on as if it were plain.
"""

from __future__ import annotations

import zlib

from sidecar.config.headerops import HeaderOps
from sidecar.filters.chain import Exchange, LocalReply

_CODINGS = {b"gzip": "gzip", b"x-gzip": "gzip", b"br": "br", b"zstd": "zstd"}
_DROP_ENCODING = HeaderOps.build(remove=("content-encoding",))


class DecompressFilter:
    __slots__ = ("max_inflated",)

    def __init__(self, max_inflated: int) -> None:
        self.max_inflated = max_inflated

    def on_request(self, x: Exchange) -> LocalReply | None:
        value = x.header(b"content-encoding")
        if value is None:
            return None
        coding = value.strip().lower()
        if coding in (b"", b"identity"):
            return None
        name = _CODINGS.get(coding)
        if name is None:
            return UNSUPPORTED
        limit = self.max_inflated
        x.add_body_rewrite(lambda body: inflate(name, body, limit), first=True)
        x.request_ops.append(_DROP_ENCODING)
        return None

    def describe(self) -> str:
        return f"request decompression (gzip, br, zstd; at most {self.max_inflated} B inflated)"


UNSUPPORTED = LocalReply(
    415, b"unsupported content-encoding: one of gzip, br, zstd\n",
    ((b"accept-encoding", b"gzip, br, zstd"),), "unsupported_encoding",
)  # fmt: skip
TOO_LARGE = LocalReply(413, b"request body too large once decompressed\n", (), "inflated_too_large")
UNDECODABLE = LocalReply(400, b"request body does not decode as its content-encoding says\n",
                         (), "bad_encoding")  # fmt: skip


def inflate(coding: str, body: bytes, limit: int) -> bytes | LocalReply:
    """`body` decoded, at most `limit` bytes of it; a reply when it cannot be."""
    try:
        if coding == "gzip":
            out, done = _gunzip(body, limit)
        elif coding == "br":
            out, done = _unbrotli(body, limit)
        else:
            out, done = _unzstd(body, limit)
    except Exception:  # each library's own error type for a corrupt stream
        return UNDECODABLE
    if len(out) > limit:
        return TOO_LARGE
    return out if done else UNDECODABLE


def _gunzip(body: bytes, limit: int) -> tuple[bytes, bool]:
    d = zlib.decompressobj(31)
    out = d.decompress(body, limit + 1)
    return out, d.eof and not d.unused_data


def _unbrotli(body: bytes, limit: int) -> tuple[bytes, bool]:
    import brotli

    d = brotli.Decompressor()
    out = d.process(body, output_buffer_limit=limit + 1)
    return out, d.is_finished()


def _unzstd(body: bytes, limit: int) -> tuple[bytes, bool]:
    import io

    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body))
    out = reader.read(limit + 1)
    if len(out) > limit:
        return out, True
    # The reader ends quietly on a truncated frame; a decoder object says whether the
    # frame ended (bounded: it makes no more than the reader just did).
    d = zstandard.ZstdDecompressor().decompressobj()
    d.decompress(body)
    return out, d.eof and not d.unused_data
