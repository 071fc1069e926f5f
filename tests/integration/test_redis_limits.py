"""The global rate limit against a real redis-server: the trio client (AUTH, SELECT,
EVALSHA falling back to EVAL, a server that goes away), the sliding-window script's
exactness under concurrent clients, and two edges sharing one limit."""

from __future__ import annotations

import bisect
from pathlib import Path

import httpx
import pytest
import trio

from sidecar.filters.global_ratelimit import SCRIPT
from sidecar.filters.redis_client import RedisClient, RedisError, RedisTarget, ReplyError
from tests.support.echo import EchoServer
from tests.support.edge import config, start_edge
from tests.support.redis_server import RedisServer


def test_urls_are_checked_and_never_print_the_password() -> None:
    t = RedisTarget.parse("rediss://app:s3cret@cache.internal:6380/2")
    assert (t.host, t.port, t.db, t.username, t.password, t.tls) == (
        "cache.internal", 6380, 2, "app", "s3cret", True)  # fmt: skip
    assert "s3cret" not in str(t)
    for bad in ("http://h:1", "redis://h:1/x", "redis://:pw@h:99999"):
        with pytest.raises(ValueError) as info:
            RedisTarget.parse(bad)
        assert "pw" not in str(info.value) or ":***@" in str(info.value)


async def test_client_auth_select_scripts_and_a_server_that_goes_away(tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="pw") as server:
        client = RedisClient(RedisTarget.parse(server.url + "/3"))
        assert await client.command("SET", "k", "v") == b"OK"
        assert await client.command("GET", "k") == b"v"
        wrong = RedisClient(RedisTarget.parse(f"redis://:nope@127.0.0.1:{server.port}"))
        with pytest.raises(RedisError, match=r"WRONGPASS|invalid password"):
            await wrong.command("PING")
        with pytest.raises(ReplyError):  # a command error keeps the connection usable
            await client.command("INCR", "k")
        assert await client.command("GET", "k") == b"v"
        # db 3 is where SELECT put us
        other = RedisClient(RedisTarget.parse(server.url))
        assert await other.command("GET", "k") is None
        # EVALSHA, after the server forgot its scripts: EVAL again
        assert await client.run_script("return 7", [], []) == 7
        await client.command("SCRIPT", "FLUSH")
        assert await client.run_script("return 7", [], []) == 7
        server.stop()
        with pytest.raises(RedisError):
            await client.command("GET", "k")
        await client.aclose()


async def test_the_window_is_exact_under_concurrent_clients(tmp_path: Path) -> None:
    """Two clients (two edges) hammer one key: in every window of the rule's length the
    script admits at most the limit, and over the run it admits the limit per window."""
    limit, window_us = 20, 500_000
    admitted: list[float] = []
    with RedisServer(tmp_path) as server:
        clients = [RedisClient(RedisTarget.parse(server.url)) for _ in range(2)]
        serial = iter(range(10**9))
        first: list[float] = []  # when the first request was admitted (trio's clock)

        async def hammer(client: RedisClient) -> None:
            while not first or trio.current_time() - first[0] < 1.25:  # 2.5 windows
                reply = await client.run_script(
                    SCRIPT, ["w"], [f"m{next(serial)}", window_us, limit]
                )
                if reply[0] == 0:
                    first[:] = first or [trio.current_time()]
                    seconds, micros = await client.command("TIME")
                    admitted.append(int(seconds) + int(micros) / 1e6)

        with trio.fail_after(20):  # bounded, however slow the machine
            async with trio.open_nursery() as nursery:
                for c in clients:
                    for _ in range(4):
                        nursery.start_soon(hammer, c)
    admitted.sort()
    # 1.25 s of saturation from the first admission, 0.5 s windows: three windows' worth
    assert len(admitted) == 3 * limit, len(admitted)
    # never more than the limit in any window (times read just after admission: a few
    # ms late at most, so windows are checked slightly shorter than the rule's)
    for i, t in enumerate(admitted):
        inside = bisect.bisect_left(admitted, t + window_us / 1e6 - 0.02) - i
        assert inside <= limit, (i, inside)


POLICY = """---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: BackendTrafficPolicy
metadata: {name: shared}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]
  rateLimit:
    type: Global
    global:
      rules:
      - clientSelectors: [{headers: [{name: x-user, type: Distinct}]}]
        limit: {requests: 15, unit: Second}
"""


async def test_two_edges_share_one_limit_and_redis_down_fails_open_or_closed(
    tmp_path: Path,
) -> None:
    from sidecar.filters.global_ratelimit import global_limits

    with RedisServer(tmp_path) as server, EchoServer("api") as api:
        text = config({"api": api.port}, [("api", "/", "api")]) + POLICY
        async with trio.open_nursery() as nursery:
            ports = []
            for i, closed in enumerate((False, True)):
                edge, port = await start_edge(
                    nursery, tmp_path / f"e{i}.yaml", text,
                    ratelimit=global_limits(server.url, fail_closed=closed),
                )  # fmt: skip
                ports.append(port)
            statuses: dict[str, list[int]] = {"alice": [], "bob": []}
            async with httpx.AsyncClient(timeout=10) as http:
                first: list[float] = []  # when the first request was admitted

                async def load(user: str, port: int) -> None:
                    while not first or trio.current_time() - first[0] < 1.5:  # 1.5 windows
                        r = await http.get(f"http://127.0.0.1:{port}/", headers={"x-user": user})
                        statuses[user].append(r.status_code)
                        if r.status_code == 200:
                            first[:] = first or [trio.current_time()]

                with trio.fail_after(30):  # bounded, however slow the machine
                    async with trio.open_nursery() as users:
                        for port in ports:
                            for _ in range(3):
                                users.start_soon(load, "alice", port)
                        users.start_soon(load, "bob", ports[0])
                refused = await http.get(
                    f"http://127.0.0.1:{ports[0]}/", headers={"x-user": "alice"}
                )
                server.stop()  # Redis goes away: edge 0 fails open, edge 1 closed
                opened = await http.get(
                    f"http://127.0.0.1:{ports[0]}/", headers={"x-user": "carol"}
                )
                closed_ = await http.get(
                    f"http://127.0.0.1:{ports[1]}/", headers={"x-user": "carol"}
                )
                metrics = (await http.get(f"http://127.0.0.1:{edge.admin_bound_port}/metrics")).text
            nursery.cancel_scope.cancel()
    # 1.5 s with a 1 s window: two windows' worth for alice across both edges; bob apart
    assert statuses["alice"].count(200) == 30, statuses["alice"].count(200)
    assert 15 <= statuses["bob"].count(200) <= 30
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert (
        refused.headers["ratelimit-limit"] == "15" and refused.headers["ratelimit-remaining"] == "0"
    )
    assert opened.status_code == 200 and closed_.status_code == 503
    assert 'weft_ratelimit_redis_errors_total{policy="default/shared"} 1' in metrics
    users = [r["headers"]["x-user"][0] for r in api.received]
    assert users.count("alice") == 30 and users.count("carol") == 1


def test_a_global_limit_without_redis_is_refused(tmp_path: Path) -> None:
    from sidecar.errors import ConfigError
    from sidecar.modes.edge import EdgeServer

    path = tmp_path / "c.yaml"
    path.write_text(config({"api": 1}, [("api", "/", "api")]) + POLICY)
    with pytest.raises(
        ConfigError,
        match=r"a Global rate limit counts in Redis: give meshctl edge --ratelimit-redis",
    ):
        EdgeServer([str(path)], admin_port=None)._load(1)
