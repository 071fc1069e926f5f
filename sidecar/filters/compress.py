"""Response compression (BackendTrafficPolicy.compression): gzip, Brotli and zstd, chosen
by the client's Accept-Encoding, streamed chunk by chunk.

Theory of operation. On the request the filter picks the coding (RFC 9110 §12.5.3: the
highest q-value among the codings the policy offers, ties going to the policy's order) and
adds a response stage (http/staged.py). When the answer's head arrives the stage decides:
a body it may compress — a type the policy lists, at least `min_length` bytes when the
length is known, not already encoded, not `no-transform`, not a 204/206/304 — loses its
Content-Length, gains Content-Encoding, and its strong ETag becomes weak (the bytes
differ; the resource does not). Each chunk the upstream sends is compressed as it comes,
and what the compressor holds is flushed whenever the upstream pauses (http/staged.py's
`pause`): a streamed answer (server-sent events, NDJSON) still streams, a body that keeps
coming is compressed in long runs, and memory stays at one chunk. Every answer of a type
the policy compresses says `Vary: Accept-Encoding`, compressed or not, so a cache never
gives one client's coding to another.
"""

from __future__ import annotations

import functools
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.filters.chain import ORDER_COMPRESS, Exchange
from sidecar.http.staged import pause

if TYPE_CHECKING:
    from sidecar.http.downstream import ResponseWriter
    from sidecar.observe.metrics import Metrics

Headers = list[tuple[bytes, bytes]]

# What Envoy compresses by default (its compressor filter's content_type list).
DEFAULT_TYPES = (
    "text/html", "text/plain", "text/css", "text/xml", "text/javascript",
    "application/javascript", "application/x-javascript", "application/json",
    "application/x-json", "application/xml", "application/xhtml+xml", "image/svg+xml",
)  # fmt: skip
CODINGS = {"Gzip": "gzip", "Brotli": "br", "Zstd": "zstd"}  # policy type -> coding


@dataclass(frozen=True, slots=True)
class CompressionSpec:
    """A policy's compression: codings in its order, and Weft's knobs beside them."""

    codings: tuple[str, ...]  # "gzip", "br", "zstd"
    min_length: int = 256  # bodies of known length below this go as they are
    content_types: tuple[str, ...] = DEFAULT_TYPES  # "type/*" matches a whole type
    gzip_level: int = 6
    brotli_quality: int = 4
    zstd_level: int = 3


class CompressFilter:
    """Adds the compression stage to the requests of the routes a policy covers."""

    __slots__ = ("exact", "prefixes", "spec")

    def __init__(self, spec: CompressionSpec) -> None:
        self.spec = spec
        self.exact = frozenset(t for t in spec.content_types if not t.endswith("/*"))
        self.prefixes = tuple(t[:-1] for t in spec.content_types if t.endswith("/*"))

    def on_request(self, x: Exchange) -> None:
        coding = negotiate(x.header(b"accept-encoding") or b"", self.spec.codings)
        metrics = x.ctx.metrics if x.ctx is not None else None
        x.add_stage(lambda writer: CompressWriter(writer, self, coding, metrics), ORDER_COMPRESS)

    def compressible(self, content_type: bytes) -> bool:
        kind = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
        return kind in self.exact or any(kind.startswith(p) for p in self.prefixes)

    def describe(self) -> str:
        return f"compression: {', '.join(self.spec.codings)} (min {self.spec.min_length} B)"


def negotiate(accept: bytes, offered: tuple[str, ...]) -> str | None:
    """The coding to answer in: the offered coding the client ranks highest (q > 0), the
    policy's order breaking ties; None for identity."""
    if not accept or not offered:
        return None
    if len(accept) > 256:  # rare and long: not worth a cache slot
        return _negotiate(accept, offered)
    return _negotiate_cached(accept, offered)


_Q = re.compile(r"^q=([01](?:\.\d{0,3})?)$")


def _negotiate(accept: bytes, offered: tuple[str, ...]) -> str | None:
    ranks: dict[str, float] = {}
    for item in accept.decode("latin-1").lower().split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip()
        if coding == "x-gzip":
            coding = "gzip"  # RFC 9110 §8.4.1.3
        q = 1.0
        for param in params.split(";") if params else ():
            m = _Q.match(param.strip().replace(" ", ""))
            if m is None:
                continue
            q = min(float(m.group(1)), 1.0)
        if coding:
            ranks[coding] = q
    wildcard = ranks.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in offered:
        q = ranks.get(coding, wildcard)
        if q > best_q:
            best, best_q = coding, q
    return best


_negotiate_cached = functools.lru_cache(maxsize=256)(_negotiate)


class CompressWriter:
    """The response stage: compresses what it may, streaming (see the module docstring)."""

    __slots__ = ("bytes_in", "coding", "encoder", "filter", "metrics", "next")

    def __init__(
        self, writer: ResponseWriter, owner: CompressFilter, coding: str | None,
        metrics: Metrics | None,
    ) -> None:  # fmt: skip
        self.next = writer
        self.filter = owner
        self.coding = coding
        self.metrics = metrics
        self.encoder: Encoder | None = None
        self.bytes_in = 0

    async def start(self, status: int, headers: Headers, *, end: bool) -> None:
        content_type = length = encoding = vary = etag = None
        no_transform = False
        for name, value in headers:
            key = name.lower()
            if key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key == b"content-encoding":
                encoding = value
            elif key == b"vary":
                vary = value if vary is None else vary + b"," + value
            elif key == b"etag":
                etag = value
            elif key == b"cache-control" and b"no-transform" in value.lower():
                no_transform = True
        owner = self.filter
        if content_type is None or not owner.compressible(content_type):
            await self.next.start(status, headers, end=end)
            return
        edited = [h for h in headers if h[0].lower() != b"vary"]
        if vary is None or not _lists(vary, b"accept-encoding"):
            vary = b"accept-encoding" if vary is None else vary + b", accept-encoding"
        edited.append((b"vary", vary))
        spec = owner.spec
        if (
            self.coding is not None
            and not end
            and not no_transform
            and status not in (204, 206, 304)
            and status >= 200
            and (encoding is None or encoding.strip().lower() == b"identity")
            and (length is None or not length.isdigit() or int(length) >= spec.min_length)
        ):
            drop = (b"content-length", b"content-encoding", b"etag", b"accept-ranges")
            edited = [h for h in edited if h[0].lower() not in drop]
            edited.append((b"content-encoding", self.coding.encode()))
            if etag is not None:
                edited.append((b"etag", etag if etag.startswith(b"W/") else b"W/" + etag))
            self.encoder = Encoder(self.coding, spec)
        await self.next.start(status, edited, end=end)

    async def data(self, data: bytes) -> None:
        encoder = self.encoder
        if encoder is None:
            await self.next.data(data)
            return
        self.bytes_in += len(data)
        out = encoder.chunk(data)
        if out:
            await self.next.data(out)

    async def pause(self) -> None:
        """The upstream paused: what the compressor holds goes out, decodable."""
        if self.encoder is not None:
            out = self.encoder.flush()
            if out:
                await self.next.data(out)
        await pause(self.next)

    async def end(self, trailers: Headers | None) -> None:
        encoder = self.encoder
        if encoder is not None:
            tail = encoder.finish()
            if tail:
                await self.next.data(tail)
            if self.metrics is not None:
                labels = (("encoding", encoder.coding),)
                self.metrics.inc("weft_compressed_responses_total", labels)
                self.metrics.inc("weft_compressed_bytes_in_total", labels, self.bytes_in)
                self.metrics.inc("weft_compressed_bytes_out_total", labels, encoder.out)
        await self.next.end(trailers)


def _lists(value: bytes, token: bytes) -> bool:
    """Does a list-valued field hold `token` (or `*`)?"""
    items = {item.strip().lower() for item in value.split(b",")}
    return token in items or b"*" in items


class Encoder:
    """One body's compressor."""

    __slots__ = ("coding", "impl", "out")

    def __init__(self, coding: str, spec: CompressionSpec) -> None:
        self.coding = coding
        self.out = 0  # bytes produced
        impl: Any
        if coding == "gzip":
            impl = zlib.compressobj(spec.gzip_level, zlib.DEFLATED, 31)  # 31: gzip framing
        elif coding == "br":
            import brotli

            impl = brotli.Compressor(quality=spec.brotli_quality)
        else:
            import zstandard

            impl = zstandard.ZstdCompressor(level=spec.zstd_level).compressobj()
        self.impl = impl

    def chunk(self, data: bytes) -> bytes:
        """What the compressor gives for `data` now (it may hold some until `flush`)."""
        impl = self.impl
        out = impl.process(data) if self.coding == "br" else impl.compress(data)
        self.out += len(out)
        return bytes(out)

    def flush(self) -> bytes:
        """Everything held so far, in a form a reader can decode (a sync flush)."""
        impl = self.impl
        if self.coding == "gzip":
            out = impl.flush(zlib.Z_SYNC_FLUSH)
        elif self.coding == "br":
            out = impl.flush()
        else:
            import zstandard

            out = impl.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self.out += len(out)
        return bytes(out)

    def finish(self) -> bytes:
        impl = self.impl
        out = impl.finish() if self.coding == "br" else impl.flush()
        self.out += len(out)
        return bytes(out)
