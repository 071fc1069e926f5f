"""Resilience end to end: backends are separate processes on 127.0.0.1 that are killed or
fail on purpose, the edge serves real clients (httpx), loops are bounded in count and time."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import trio
import trio.testing

from sidecar.modes.edge import EdgeServer
from tests.support.edge import GATEWAY, start_edge

ROOT = Path(__file__).resolve().parents[2]


class Backend:
    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.counting_backend", "--name", name, *args],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def count(self) -> int:
        r = httpx.get(f"http://127.0.0.1:{self.port}/__count", timeout=5)
        return int(r.json()["count"])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


@contextmanager
def backends(*specs: tuple[str, ...]) -> Iterator[list[Backend]]:
    started: list[Backend] = []
    try:
        for name, *args in specs:
            started.append(Backend(name, *args))
        yield started
    finally:
        for b in started:
            b.kill()


def config(endpoints: list[Backend], policy: str = "", split: dict[str, int] | None = None) -> str:
    """One Service `app` over `endpoints`, a route to it (with `split`: version -> weight,
    each backend's name being its version) and, if given, a BackendTrafficPolicy."""
    version = (lambda b: f", version: {b.name}") if split else (lambda b: "")
    eps = ", ".join(f"{{address: 127.0.0.1, port: {b.port}{version(b)}}}" for b in endpoints)
    refs = ", ".join(
        f"{{name: app, port: 80, version: {v}, weight: {w}}}" for v, w in (split or {}).items()
    )
    text = (
        GATEWAY.format(port=80)
        + f"""---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {{name: app}}
spec:
  ports: [{{port: 80}}]
  endpoints: [{eps}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{refs or "{name: app, port: 80}"}]
"""
    )
    if policy:
        text += f"""---
apiVersion: weft.dev/v1alpha1
kind: BackendTrafficPolicy
metadata: {{name: app}}
spec:
  targetRef: {{kind: Service, name: app}}
{policy}"""
    return text


def retries(server: EdgeServer) -> dict[str, float]:
    return {
        dict(labels)["reason"]: n
        for (name, labels), n in server.metrics.counters.items()
        if name == "weft_retries_total"
    }


async def test_killed_instance_is_invisible_to_gets_and_posts_are_never_duplicated(
    tmp_path: Path,
) -> None:
    receipts = tmp_path / "receipts"
    specs = [(n, "--receipts", str(receipts)) for n in ("a", "b", "c")]
    with backends(*specs) as procs:
        async with trio.open_nursery() as nursery:
            server, port = await start_edge(nursery, tmp_path / "c.yaml", config(procs))
            gets: list[int] = []
            posts: dict[str, int] = {}
            halfway = trio.Event()
            url = f"http://127.0.0.1:{port}/"
            async with httpx.AsyncClient(timeout=10) as http:

                async def getter() -> None:
                    for _ in range(300):
                        gets.append((await http.get(url)).status_code)
                        if len(gets) >= 300:
                            halfway.set()

                async def poster(k: int) -> None:
                    for i in range(150):
                        rid = f"{k}-{i}"
                        try:
                            r = await http.post(url, content=b"pay 1", headers={"x-id": rid})
                            posts[rid] = r.status_code
                        except httpx.HTTPError:
                            posts[rid] = 0

                async def killer() -> None:
                    await halfway.wait()
                    procs[0].kill()  # SIGKILL under load: in-flight requests are reset

                with trio.fail_after(60):
                    async with trio.open_nursery() as load:
                        for _ in range(3):
                            load.start_soon(getter)
                        load.start_soon(poster, 1)
                        load.start_soon(poster, 2)
                        load.start_soon(killer)
            assert procs[0].proc.returncode is not None
            assert len(gets) == 900 and collections.Counter(gets) == {200: 900}
            seen = collections.Counter(
                line.split()[0] for line in receipts.read_text().splitlines()
            )
            assert seen and max(seen.values()) == 1, [k for k, v in seen.items() if v > 1]
            assert {rid for rid, s in posts.items() if s == 200} <= set(seen)
            # posts that were refused never reached an app: those too were retried elsewhere
            assert sum(1 for s in posts.values() if s == 200) >= 290
            assert retries(server).get("connect_failure", 0) >= 1
            # the dead instance's breaker opened (one of three may be ejected at 50%)
            assert _open(server) == 1
            nursery.cancel_scope.cancel()


async def test_breaker_opens_on_a_failing_backend_and_recovers(tmp_path: Path) -> None:
    """A backend answers 503 for 30 s. The breaker opens (requests are answered at once
    instead of reaching it), a trial every few seconds finds it still failing, and after
    the 30 s traffic flows again; retries never add more than the budget allows. (Its
    only endpoint out is a panic by default, which would send to it anyway: the policy
    turns panic off, as one shielding a single backend does.)"""
    policy = """  retry: {attempts: 2, codes: [503]}
  outlierDetection: {consecutiveGatewayErrors: 5, baseEjectionTime: 2s, maxEjectionTime: 4s}
  healthCheck: {panicThreshold: 0}
"""
    with backends(("a", "--fail-for", "30")) as procs:
        async with trio.open_nursery() as nursery:
            server, port = await start_edge(nursery, tmp_path / "c.yaml", config(procs, policy))
            url = f"http://127.0.0.1:{port}/"
            statuses: list[int] = []
            open_seen = 0
            async with httpx.AsyncClient(timeout=10) as http:

                async def client() -> None:
                    nonlocal open_seen
                    for _ in range(5000):  # paced: ~100 requests per second per client
                        statuses.append((await http.get(url)).status_code)
                        open_seen = max(open_seen, _open(server))
                        if len(statuses) > 40 and statuses[-40:] == [200] * 40:
                            return
                        await trio.sleep(0.01)

                with trio.fail_after(60):
                    async with trio.open_nursery() as load:
                        load.start_soon(client)
                        load.start_soon(client)
            received = procs[0].count()
            assert open_seen == 1
            assert _open(server) == 0  # recovered: closed again
            assert statuses.count(503) > 0 and statuses[-40:] == [200] * 40
            assert received <= 1.25 * len(statuses), (received, len(statuses))
            nursery.cancel_scope.cancel()


def _open(server: EdgeServer) -> int:
    return dict(server.clusters.circuit_open(time.perf_counter())).get("default/app:80", 0)


async def test_retry_budget_caps_extra_load_on_a_failing_service(tmp_path: Path) -> None:
    """Outlier detection off, every answer 503, three retries wanted per request: the
    budget (20% of requests plus one per second) keeps the backend's load under 1.25x."""
    policy = """  retry:
    attempts: 3
    codes: [503]
    backoff: {baseInterval: 1ms, maxInterval: 2ms}
    budget: {percent: 20, minRetriesPerSecond: 1, window: 10s}
  outlierDetection: {enabled: false}
"""
    with backends(("a", "--fail-for", "600")) as procs:
        async with trio.open_nursery() as nursery:
            server, port = await start_edge(nursery, tmp_path / "c.yaml", config(procs, policy))
            sent = 0
            async with httpx.AsyncClient(timeout=10) as http:

                async def client() -> None:
                    nonlocal sent
                    for _ in range(400):
                        r = await http.get(f"http://127.0.0.1:{port}/")
                        assert r.status_code == 503
                        sent += 1

                with trio.fail_after(60):
                    async with trio.open_nursery() as load:
                        for _ in range(2):
                            load.start_soon(client)
            received = procs[0].count()
            made = retries(server).get("status", 0)
            assert received == sent + made
            assert made > 0.1 * sent  # it did retry ...
            assert received <= 1.25 * sent, (received, sent)  # ... within the budget
            nursery.cancel_scope.cancel()


async def test_limits_answer_503_at_once_naming_the_limit(tmp_path: Path) -> None:
    policy = "  circuitBreaker: {maxRequests: 2}\n"
    with backends(("a",)) as procs:
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", config(procs, policy))
            slow_done = trio.Event()
            results: list[tuple[int, str, bool]] = []
            async with httpx.AsyncClient(timeout=10) as http:

                async def call(path: str) -> None:
                    r = await http.get(f"http://127.0.0.1:{port}{path}")
                    results.append((r.status_code, r.headers.get("x-weft-overload", ""),
                                     slow_done.is_set()))  # fmt: skip

                with trio.fail_after(20):
                    async with trio.open_nursery() as slow:
                        slow.start_soon(call, "/slow")
                        slow.start_soon(call, "/slow")
                        await trio.testing.wait_all_tasks_blocked(0.05)  # both in flight
                        async with trio.open_nursery() as fast:
                            for _ in range(4):
                                fast.start_soon(call, "/fast")
                        overloads = list(results)
                    slow_done.set()
            assert overloads == [(503, "max_requests", False)] * 4  # before the slow ones
            assert sorted(r[0] for r in results) == [200, 200, 503, 503, 503, 503]
            nursery.cancel_scope.cancel()


async def test_active_health_checks_take_an_endpoint_out_and_back(tmp_path: Path) -> None:
    flag = tmp_path / "a-unhealthy"
    policy = """  healthCheck:
    type: HTTP
    http: {path: /healthz}
    interval: 50ms
    timeout: 1s
    unhealthyThreshold: 2
    healthyThreshold: 1
"""
    with backends(("a", "--health-fail-file", str(flag)), ("b",)) as procs:
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", config(procs, policy))
            async with httpx.AsyncClient(timeout=10) as http:

                async def names(n: int) -> set[str]:
                    out = set()
                    for _ in range(n):
                        r = await http.get(f"http://127.0.0.1:{port}/")
                        out.add(r.json()["name"])
                    return out

                assert await names(20) == {"a", "b"}
                flag.write_text("")
                with trio.fail_after(10):  # until requests reach only b
                    while await names(20) != {"b"}:
                        pass
                flag.unlink()
                with trio.fail_after(10):
                    while "a" not in await names(20):
                        pass
            nursery.cancel_scope.cancel()


async def test_a_version_with_no_healthy_endpoint_gets_no_traffic(tmp_path: Path) -> None:
    """A 90/10 split whose v2 instance dies: after its breaker opens, v2's share goes to v1."""
    with backends(("v1",), ("v2",)) as procs:
        v2 = procs[1]
        text = config(procs, split={"v1": 90, "v2": 10})
        async with trio.open_nursery() as nursery:
            _, port = await start_edge(nursery, tmp_path / "c.yaml", text)
            async with httpx.AsyncClient(timeout=10) as http:

                async def run(n: int) -> list[str]:
                    out = []
                    for _ in range(n):
                        r = await http.get(f"http://127.0.0.1:{port}/")
                        out.append(r.json()["name"] if r.status_code == 200 else str(r.status_code))
                    return out

                first = await run(1000)
                assert collections.Counter(first) == {"v1": 900, "v2": 100}
                assert all(5 <= first[i : i + 100].count("v2") <= 15 for i in range(901))
                v2.kill()
                after = await run(300)
            failed = [s for s in after if s not in ("v1", "v2")]
            assert len(failed) <= 2, collections.Counter(after)  # until the breaker opens
            assert after[-250:] == ["v1"] * 250
            nursery.cancel_scope.cancel()


async def test_in_the_mesh_a_dead_app_is_retried_elsewhere_even_for_posts(tmp_path: Path) -> None:
    """Two instances of orders behind their sidecars; one app is killed. Its sidecar answers
    503 marked `x-weft-error: connect_failure` (the request never reached an app), so the
    caller's sidecar retries even a POST on the other instance: no failure, no duplicate."""
    from tests.support.plane import mesh_sidecar, running_plane

    receipts = tmp_path / "receipts"
    with (
        running_plane(tmp_path / "plane") as plane,
        backends(("a", "--receipts", str(receipts)), ("b", "--receipts", str(receipts))) as (
            app_a,
            app_b,
        ),
    ):
        target = f"127.0.0.1:{plane.port}"
        async with trio.open_nursery() as nursery:
            for app in (app_a, app_b):
                await nursery.start(mesh_sidecar(plane.data_dir, target, "orders", app.port).run)
            web = await nursery.start(mesh_sidecar(plane.data_dir, target, "web", 1).run)
            url = f"http://127.0.0.1:{web.outbound_port}/"
            async with httpx.AsyncClient(timeout=10, headers={"Host": "orders"}) as http:
                with trio.fail_after(20):  # until both instances are endpoints of web's cluster
                    names: set[str] = set()
                    while names != {"a", "b"}:
                        r = await http.get(url)
                        names.add(r.json()["name"] if r.status_code == 200 else "")
                app_a.kill()
                statuses = collections.Counter()
                for i in range(60):
                    r = await http.post(url, content=b"pay", headers={"x-id": f"p{i}"})
                    ok = r.status_code == 200
                    statuses[(r.status_code, r.json()["name"] if ok else r.text)] += 1
            assert statuses == {(200, "b"): 60}, dict(statuses)
            seen = collections.Counter(
                line.split()[0] for line in receipts.read_text().splitlines()
            )
            assert set(seen) == {f"p{i}" for i in range(60)} and max(seen.values()) == 1
            nursery.cancel_scope.cancel()


async def test_http2_clients_get_status_retries_too(tmp_path: Path) -> None:
    """The retry gate sees every response head, whatever the downstream protocol: an
    HTTP/2 client's request answered 503 by one HTTP/1.1 instance is retried on the other,
    as an HTTP/1.1 client's is."""
    policy = """  retry: {attempts: 2, codes: [503], backoff: {baseInterval: 1ms, maxInterval: 2ms}}
  outlierDetection: {consecutiveGatewayErrors: 1000}
"""
    with backends(("bad", "--fail-for", "120"), ("good",)) as procs:
        async with trio.open_nursery() as nursery:
            server, port = await start_edge(nursery, tmp_path / "c.yaml", config(procs, policy))
            async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as http:
                with trio.fail_after(30):
                    answers = [await http.get(f"http://127.0.0.1:{port}/") for _ in range(20)]
            assert {r.http_version for r in answers} == {"HTTP/2"}
            assert [r.status_code for r in answers] == [200] * 20
            assert {r.json()["name"] for r in answers} == {"good"}
            assert procs[0].count() > 0  # the failing instance was tried and its 503 retried
            assert retries(server).get("status", 0) == procs[0].count()
            nursery.cancel_scope.cancel()
