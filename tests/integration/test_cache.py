"""The edge's response cache against a real origin (nginx: ETag, Last-Modified, 304s,
Cache-Control as configured) and curl; nginx's access log is the oracle for what reached
the origin."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.test_compression import _curl
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.net import free_port
from tests.support.nginx import NGINX, nginx

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test does)")

CACHE = """---
apiVersion: weft.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: {name}}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {route}}}]
  cache: {{maxBodyBytes: 200000}}
{extra}"""

LOCATIONS = {
    "fresh": 'add_header Cache-Control "max-age=60";',
    "validate": 'add_header Cache-Control "no-cache";',
    "private": 'add_header Cache-Control "private, max-age=60";',
    "cookie": 'add_header Cache-Control "max-age=60"; add_header Set-Cookie "s=1";',
    "public-cookie": 'add_header Cache-Control "public, max-age=60"; add_header Set-Cookie "s=1";',
    "swr": 'add_header Cache-Control "max-age=0, stale-while-revalidate=60";',
    "nostore": 'add_header Cache-Control "no-store";',
    "plain": "",  # Last-Modified only: the heuristic lifetime
    "big": 'add_header Cache-Control "max-age=60";',
}


def _site(tmp: Path, port: int) -> str:
    site = tmp / "site"
    site.mkdir()
    for name in LOCATIONS:
        size = 300_000 if name == "big" else 2000
        (site / f"{name}.json").write_text(json.dumps({"name": name, "pad": "x" * size}))
    import os

    os.utime(site / "plain.json", (1_600_000_000, 1_600_000_000))  # modified long ago
    blocks = "\n".join(f"    location = /{n}.json {{ {rule} }}" for n, rule in LOCATIONS.items())
    return f"""
  types {{ application/json json; }}
  log_format origin '$request_uri $status';
  access_log {tmp}/origin.log origin;
  server {{
    listen 127.0.0.1:{port};
    root {tmp}/site;
{blocks}
  }}"""


def _origin(tmp: Path) -> list[str]:
    path = tmp / "origin.log"
    return path.read_text().splitlines() if path.exists() else []


async def test_what_is_stored_served_and_revalidated(tmp_path: Path) -> None:
    port = free_port()
    async with nginx(tmp_path, _site(tmp_path, port)), trio.open_nursery() as nursery:
        text = config({"site": port}, [("site", "/", "site")])
        # one policy for both (the most specific policy applies whole)
        text += CACHE.format(name="cache", route="site", extra="  compression: [{type: Gzip}]\n")
        edge, eport = await start_edge(nursery, tmp_path / "c.yaml", text)
        url = f"http://127.0.0.1:{eport}"

        async def get(path: str, *args: str) -> tuple[dict[str, list[str]], bytes]:
            return await _curl(tmp_path, *args, url + path)

        first, body = await get("/fresh.json")
        assert first["x-cache"] == ["MISS"] and json.loads(body)["name"] == "fresh"
        second, again = await get("/fresh.json")
        assert second["x-cache"] == ["HIT"] and again == body
        assert second["cache-status"][0].startswith("weft; hit; ttl=")
        assert int(second["age"][0]) >= 0
        assert second["etag"] == first["etag"]
        # The client's own validator matches what is stored: 304 from the cache.
        cond, empty = await get("/fresh.json", "-H", f"If-None-Match: {first['etag'][0]}")
        assert cond[":status"] == ["304"], cond
        assert empty == b"", empty
        assert cond["x-cache"] == ["HIT"], cond
        # A browser's reload (Chrome, Firefox): max-age=0 with its validators. The cache asks
        # the origin with the stored validators; the origin's 304 becomes the client's 304.
        before = len(_origin(tmp_path))
        reload, empty = await get("/fresh.json", "-H", "Cache-Control: max-age=0",
                                  "-H", f"If-None-Match: {first['etag'][0]}",
                                  "-H", f"If-Modified-Since: {first['last-modified'][0]}")  # fmt: skip
        assert reload[":status"] == ["304"] and empty == b""
        assert reload["x-cache"] == ["REVALIDATED"]
        assert _origin(tmp_path)[before:] == ["/fresh.json 304"]
        # A hard reload: no validators, no-cache and Pragma; the stored body comes back
        # after the origin's 304.
        hard, again = await get("/fresh.json", "-H", "Cache-Control: no-cache",
                                "-H", "Pragma: no-cache")  # fmt: skip
        assert hard[":status"] == ["200"] and again == body
        assert hard["x-cache"] == ["REVALIDATED"]
        assert _origin(tmp_path)[before + 1 :] == ["/fresh.json 304"]
        # A query is another URL; no-cache from the client goes to the origin.
        assert (await get("/fresh.json?v=2"))[0]["x-cache"] == ["MISS"]
        assert (await get("/fresh.json", "-H", "Cache-Control: no-cache"))[0]["x-cache"] != ["HIT"]
        # Compression's Vary: a gzip variant beside the identity one, each a hit in turn.
        gz1, _ = await get("/fresh.json", "-H", "Accept-Encoding: gzip")
        gz2, zipped2 = await get("/fresh.json", "-H", "Accept-Encoding: gzip")
        assert gz1["x-cache"] == ["MISS"] and gz2["x-cache"] == ["HIT"]
        assert gz2["content-encoding"] == ["gzip"] and gzip.decompress(zipped2) == body
        assert (await get("/fresh.json"))[0]["x-cache"] == ["HIT"]

        # no-cache: stored, validated every time; nginx answers 304, the client gets 200.
        for _ in range(3):
            fields, body = await get("/validate.json")
            assert fields[":status"] == ["200"] and json.loads(body)["name"] == "validate"
        assert fields["x-cache"] == ["REVALIDATED"]
        assert [line for line in _origin(tmp_path) if line.startswith("/validate")] == [
            "/validate.json 200", "/validate.json 304", "/validate.json 304"]  # fmt: skip

        # Not shared: private, Set-Cookie (unless public), no-store, too large a body.
        for name in ("private", "cookie", "nostore", "big"):
            for _ in range(2):
                fields, _ = await get(f"/{name}.json")
                assert fields["x-cache"] == ["MISS"], name
        assert (await get("/public-cookie.json"))[0]["x-cache"] == ["MISS"]
        assert (await get("/public-cookie.json"))[0]["x-cache"] == ["HIT"]
        # Authorization: not shared unless the answer says so.
        for _ in range(2):
            fields, _ = await get("/plain.json", "-H", "Authorization: Bearer x")
            assert fields["x-cache"] == ["MISS"]
        # Last-Modified long ago and nothing else: a heuristic lifetime.
        assert (await get("/plain.json"))[0]["x-cache"] == ["MISS"]
        assert (await get("/plain.json"))[0]["x-cache"] == ["HIT"]

        # stale-while-revalidate: the stale copy at once, one validation behind it.
        await get("/swr.json")
        fields, body = await get("/swr.json")
        assert fields["x-cache"] == ["STALE"] and json.loads(body)["name"] == "swr"
        store = edge.cache_state.stores["default/cache"]
        with trio.fail_after(10):
            while store.revalidating:  # the background validation, until it has its answer
                await store.validated.wait()
        assert [x for x in _origin(tmp_path) if x.startswith("/swr")] == [
            "/swr.json 200", "/swr.json 304"]  # fmt: skip
        assert (await get("/swr.json"))[0]["x-cache"] == ["STALE"]  # validated, stale again

        # Unsafe methods invalidate; the admin port purges by URL and by prefix.
        await get("/fresh.json", "-X", "POST")
        assert (await get("/fresh.json"))[0]["x-cache"] == ["MISS"]
        admin = f"http://127.0.0.1:{edge.admin_bound_port}"
        async with httpx.AsyncClient() as http:
            purged = await http.post(admin + "/cache/purge", params={"url": url + "/fresh.json"})
            assert purged.json() == {"purged": 1}
            assert (await get("/fresh.json"))[0]["x-cache"] == ["MISS"]
            purged = await http.post(admin + "/cache/purge", params={"prefix": "127.0.0.1/"})
            assert purged.json()["purged"] >= 3
            assert (await get("/fresh.json"))[0]["x-cache"] == ["MISS"]
            metrics = (await http.get(admin + "/metrics")).text
        assert 'weft_cache_hits_total{policy="default/cache",result="hit"}' in metrics
        assert "weft_cache_misses_total" in metrics and "weft_cache_stored_total" in metrics
        nursery.cancel_scope.cancel()


# EchoServer splits its header list at commas: two Cache-Control fields, joined by the cache
SLOW = [("x-echo-set-header", "Cache-Control: max-age=60"),
        ("x-echo-set-header", "Cache-Control: stale-if-error=60")]  # fmt: skip


async def test_concurrent_misses_make_one_fetch_and_errors_get_the_stale_copy(
    tmp_path: Path,
) -> None:
    with EchoServer("app") as app:
        text = config({"app": app.port}, [("app", "/", "app")])
        text += CACHE.format(name="cache", route="app", extra="")
        async with trio.open_nursery() as nursery:
            edge, eport = await start_edge(nursery, tmp_path / "c.yaml", text)
            url = f"http://127.0.0.1:{eport}"
            answers: list[httpx.Response] = []
            async with httpx.AsyncClient(timeout=10) as http:

                async def one() -> None:
                    answers.append(await http.get(url + "/delay/300/item", headers=SLOW))

                async with trio.open_nursery() as clients:
                    for _ in range(10):
                        clients.start_soon(one)
            assert [a.status_code for a in answers] == [200] * 10
            assert len([r for r in app.received if r["path"] == "/delay/300/item"]) == 1
            assert sorted(a.headers["x-cache"] for a in answers) == ["HIT"] * 9 + ["MISS"]

            # The origin goes away: within stale-if-error, the stored answer (made stale
            # here by a request that refuses anything older than 0 s).
            dead = free_port()
            (tmp_path / "c.yaml").write_text(
                text.replace(f"port: {app.port}}}", f"port: {dead}}}"))  # fmt: skip
            assert edge.reload()
            async with httpx.AsyncClient(timeout=10) as http:
                stale = await http.get(url + "/delay/300/item",
                                       headers={"cache-control": "max-age=0"})  # fmt: skip
                fresh_only = await http.get(url + "/delay/300/other")
            assert stale.status_code == 200 and stale.headers["x-cache"] == "STALE"
            assert "upstream-error" in stale.headers["cache-status"]
            assert fresh_only.status_code == 503  # nothing stored for it: the connect error
            nursery.cancel_scope.cancel()
