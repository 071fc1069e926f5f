"""Response compression at the edge, with real peers: nginx serving the files, curl
(`--compressed`, HTTP/1.1 and HTTP/2) asking for them; every body is decoded and compared
with the file nginx has."""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path

import brotli
import pytest
import trio
import zstandard

from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.net import free_port
from tests.support.nginx import NGINX, nginx

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test does)")

POLICY = """---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: {name}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {route}}}]
  compression: [{{type: Gzip}}, {{type: Brotli}}, {{type: Zstd}}]
{extra}"""

DECODE = {
    "gzip": gzip.decompress,
    "br": brotli.decompress,
    "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
}


def _files(tmp: Path) -> bytes:
    site = tmp / "site"
    (site / "pre").mkdir(parents=True)
    doc = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(1600)])
    data = doc.encode()
    assert len(data) > 60_000
    for where in (site / "big.json", site / "pre" / "big.json"):
        where.write_bytes(data)
    (site / "small.json").write_bytes(b'{"ok": true}')
    (site / "logo.png").write_bytes(bytes(range(256)) * 64)
    return data


def _nginx_conf(tmp: Path, port: int) -> str:
    return f"""
  types {{ application/json json; image/png png; }}
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    root {tmp}/site;
    location /pre/ {{ gzip on; gzip_types application/json; gzip_min_length 0; }}
  }}"""


async def _curl(tmp: Path, *args: str) -> tuple[dict[str, list[str]], bytes]:
    """curl's view: the final response's fields (lower-case names) and the body as it
    came (decoded when `--compressed` is among `args`)."""
    head, body = tmp / "curl.head", tmp / "curl.body"
    body.unlink(missing_ok=True)  # curl writes no file for an empty body
    await trio.run_process(["curl", "-sS", "-D", str(head), "-o", str(body), *args])
    block = [b for b in head.read_bytes().decode("latin-1").split("\r\n\r\n") if b][-1]
    lines = block.split("\r\n")
    fields: dict[str, list[str]] = {":status": [lines[0].split()[1]]}  # the last answer's
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields, body.read_bytes() if body.exists() else b""


async def test_codings_by_accept_encoding_over_http1_and_http2(tmp_path: Path) -> None:
    data = _files(tmp_path)
    port = free_port()
    async with nginx(tmp_path, _nginx_conf(tmp_path, port)), trio.open_nursery() as nursery:
        text = config({"site": port}, [("site", "/", "site")])
        text += POLICY.format(name="squeeze", route="site", extra="")
        _, edge = await start_edge(nursery, tmp_path / "c.yaml", text)
        url = f"http://127.0.0.1:{edge}"
        for proto in ("--http1.1", "--http2-prior-knowledge"):
            for accept, coding in [
                ("gzip", "gzip"), ("br", "br"), ("zstd", "zstd"),
                ("gzip;q=0.5, br;q=0.9, zstd;q=0.1", "br"),
                ("x-gzip", "gzip"), ("*", "gzip"), ("zstd, gzip", "gzip"),  # ties: the policy's order
                ("deflate, br;q=0.2", "br"),
            ]:  # fmt: skip
                fields, body = await _curl(tmp_path, proto, "-H", f"Accept-Encoding: {accept}",
                                           url + "/big.json")  # fmt: skip
                assert fields["content-encoding"] == [coding], (proto, accept)
                assert DECODE[coding](body) == data
                assert len(body) < len(data) // 4
                assert "content-length" not in fields  # the length changed: chunked / DATA
                assert fields["vary"] == ["accept-encoding"]
                assert fields["etag"][0].startswith('W/"')  # nginx's strong ETag, weakened
            # curl's own decoding, asking for everything it supports
            fields, body = await _curl(tmp_path, proto, "--compressed", url + "/big.json")
            assert body == data and fields["content-encoding"] == ["gzip"]

        for accept in ("identity", "gzip;q=0, br;q=0, zstd;q=0", "*;q=0", "compress"):
            fields, body = await _curl(tmp_path, "-H", f"Accept-Encoding: {accept}",
                                       url + "/big.json")  # fmt: skip
            assert body == data and "content-encoding" not in fields, accept
            assert fields["content-length"] == [str(len(data))]
            assert fields["vary"] == ["accept-encoding"]  # another client may get it encoded
            assert not fields["etag"][0].startswith("W/")
        fields, body = await _curl(tmp_path, url + "/big.json")  # no Accept-Encoding
        assert body == data and "content-encoding" not in fields

        # Too small, or not a type the policy compresses: as the upstream sent it.
        fields, body = await _curl(tmp_path, "-H", "Accept-Encoding: gzip", url + "/small.json")
        assert body == b'{"ok": true}' and "content-encoding" not in fields
        assert fields["content-length"] == ["12"]
        fields, body = await _curl(tmp_path, "-H", "Accept-Encoding: gzip", url + "/logo.png")
        assert body == bytes(range(256)) * 64 and "content-encoding" not in fields
        assert "vary" not in fields

        # Already encoded by the upstream (nginx's own gzip): never twice.
        fields, body = await _curl(tmp_path, "-H", "Accept-Encoding: gzip", url + "/pre/big.json")
        assert fields["content-encoding"] == ["gzip"]
        assert gzip.decompress(body) == data

        # HEAD: no body to compress, the length of the identity body.
        fields, _ = await _curl(tmp_path, "-I", "-H", "Accept-Encoding: gzip", url + "/big.json")
        assert "content-encoding" not in fields
        assert fields["vary"] == ["accept-encoding"]
        nursery.cancel_scope.cancel()


async def test_no_transform_and_the_policys_own_knobs(tmp_path: Path) -> None:
    extra = """  compressionOptions:
    minContentLength: 0
    contentTypes: [application/*]
    gzipLevel: 1
"""
    with EchoServer("echo") as echo:
        text = config({"echo": echo.port}, [("echo", "/", "echo")])
        text += POLICY.format(name="squeeze", route="echo", extra=extra)
        async with trio.open_nursery() as nursery:
            _, edge = await start_edge(nursery, tmp_path / "c.yaml", text)
            url = f"http://127.0.0.1:{edge}/x"
            fields, body = await _curl(tmp_path, "-H", "Accept-Encoding: gzip", url)
            assert fields["content-encoding"] == ["gzip"]  # a small JSON answer: minimum 0
            assert json.loads(gzip.decompress(body))["path"] == "/x"
            fields, body = await _curl(
                tmp_path, "-H", "Accept-Encoding: gzip",
                "-H", "X-Echo-Set-Header: Cache-Control: no-transform", url,
            )  # fmt: skip
            assert "content-encoding" not in fields
            assert json.loads(body)["path"] == "/x"
            fields, body = await _curl(
                tmp_path, "-H", "Accept-Encoding: gzip",
                "-H", "X-Echo-Set-Header: Vary: Origin", url,
            )  # fmt: skip
            assert fields["vary"] == ["Origin, accept-encoding"]
            fields, _ = await _curl(
                tmp_path, "-H", "Accept-Encoding: gzip", url.replace("/x", "/status/204/x")
            )
            assert "content-encoding" not in fields
            nursery.cancel_scope.cancel()


async def test_a_streamed_answer_streams_compressed(tmp_path: Path) -> None:
    """Each chunk the upstream sends reaches the client compressed and decodable at once:
    the upstream sends its second event only after the client has decoded the first."""
    decoded_first = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
                              b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
        first = b"data: one\n\n" * 40
        await stream.send_all(b"%x\r\n%b\r\n" % (len(first), first))
        await decoded_first.wait()
        last = b"data: two\n\n"
        await stream.send_all(b"%x\r\n%b\r\n0\r\n\r\n" % (len(last), last))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, upstream, 0)
        app_port = listeners[0].socket.getsockname()[1]
        text = config({"events": app_port}, [("events", "/", "events")])
        text += POLICY.format(name="squeeze", route="events", extra="")
        _, edge = await start_edge(nursery, tmp_path / "c.yaml", text)
        client = await trio.open_tcp_stream("127.0.0.1", edge)
        await client.send_all(b"GET /events HTTP/1.1\r\nhost: x\r\naccept-encoding: gzip\r\n\r\n")
        inflate = zlib.decompressobj(31)
        raw = plain = b""
        with trio.fail_after(10):
            while plain != b"data: one\n\n" * 40:
                raw += await client.receive_some(65536)
                head, sep, body = raw.partition(b"\r\n\r\n")
                if sep:
                    plain = inflate.decompress(_unchunk(body)) if body else b""
                    inflate = zlib.decompressobj(31)
            assert b"content-encoding: gzip" in head.lower()
            decoded_first.set()
            while not raw.endswith(b"0\r\n\r\n"):
                raw += await client.receive_some(65536)
        body = _unchunk(raw.partition(b"\r\n\r\n")[2])
        assert gzip.decompress(body) == b"data: one\n\n" * 40 + b"data: two\n\n"
        await client.aclose()
        nursery.cancel_scope.cancel()


def _unchunk(body: bytes) -> bytes:
    """The data of a chunked body, as far as whole chunks have arrived."""
    out = b""
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return out
        size = int(size_line, 16)
        if size == 0 or len(rest) < size + 2:
            return out
        out += rest[:size]
        body = rest[size + 2 :]


DECOMPRESS = """---
apiVersion: weft.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: inflate}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: echo}]
  requestDecompression: {maxInflatedBytes: 100000}
"""


async def test_request_bodies_are_inflated_within_a_limit(tmp_path: Path) -> None:
    """curl sends encoded bodies; the upstream (EchoServer) reports what it received."""
    plain = b'{"order": "' + b"x" * 50_000 + b'"}'
    bomb = b"\0" * 20_000_000  # 20 MB of zeros: 19 KB gzipped
    bodies = {
        "plain": (plain, None),
        "gzip": (gzip.compress(plain), "gzip"),
        "br": (brotli.compress(plain), "br"),
        "zstd": (zstandard.ZstdCompressor().compress(plain), "zstd"),
        "bomb": (gzip.compress(bomb), "gzip"),
        "bomb-br": (brotli.compress(bomb, quality=4), "br"),
        "truncated": (gzip.compress(plain)[:-9], "gzip"),
        "garbage": (b"not gzip at all", "gzip"),
        "stacked": (gzip.compress(gzip.compress(plain)), "gzip, gzip"),
        "unknown": (plain, "compress"),
    }
    with EchoServer("echo") as echo:
        text = config({"echo": echo.port}, [("echo", "/", "echo")]) + DECOMPRESS
        async with trio.open_nursery() as nursery:
            _, edge = await start_edge(nursery, tmp_path / "c.yaml", text)
            seen = {}
            for name, (body, coding) in bodies.items():
                (tmp_path / "body").write_bytes(body)
                args = ["-X", "POST", "--data-binary", f"@{tmp_path / 'body'}"]
                if coding:
                    args += ["-H", f"Content-Encoding: {coding}"]
                if name == "zstd":
                    args += ["-H", "Transfer-Encoding: chunked"]  # a streamed upload too
                for proto in ("--http1.1", "--http2-prior-knowledge"):
                    url = f"http://127.0.0.1:{edge}/{name}"
                    seen[name, proto] = await _curl(tmp_path, proto, *args, url)
            nursery.cancel_scope.cancel()
    want = {"plain": 200, "gzip": 200, "br": 200, "zstd": 200, "bomb": 413, "bomb-br": 413,
            "truncated": 400, "garbage": 400, "stacked": 415, "unknown": 415}  # fmt: skip
    for (name, proto), (fields, answer) in seen.items():
        assert fields[":status"] == [str(want[name])], (name, proto, answer)
        if want[name] == 200:
            got = json.loads(answer)
            assert got["body_length"] == len(plain), (name, proto)
            assert got["body_sha256"] == hashlib.sha256(plain).hexdigest()
            assert "content-encoding" not in got["headers"]
    upstream_paths = [r["path"] for r in echo.received]
    assert sorted(set(upstream_paths)) == ["/br", "/gzip", "/plain", "/zstd"]  # nothing else
