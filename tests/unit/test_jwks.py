"""Remote JWKS scheduling, on trio's autojump clock: the first fetch at once, refetches
every cache duration, backoff after failures with the last good keys kept, kid-miss
refetches at most once per interval, and cells kept across snapshots."""

from __future__ import annotations

import json

import jwt
import pytest
import trio
import trio.testing

from sidecar.filters import jwks
from sidecar.filters.jwks import JwksState, KeyCell, RemoteJwks
from sidecar.filters.jwt_auth import Provider, load_jwks
from tests.support.tokens import EC, RSA, jwk

KEYS_A = load_jwks(json.dumps({"keys": [jwk(RSA, "a")]}))
KEYS_B = load_jwks(json.dumps({"keys": [jwk(EC, "b")]}))


def test_failures_back_off_and_keep_the_keys() -> None:
    cell = KeyCell("https://idp/jwks", cache_s=300.0)
    cell.succeeded(KEYS_A, now=0.0)
    assert cell.next_due == 300.0
    waits = []
    for i in range(8):
        cell.failed("down", now=1000.0 + i)
        waits.append(cell.next_due - (1000.0 + i))
    assert waits == [1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 60.0, 60.0]
    assert cell.keys == tuple(KEYS_A) and cell.error == "down"
    short = KeyCell("u", cache_s=4.0)
    short.failed("x", 0.0), short.failed("x", 0.0), short.failed("x", 0.0)
    assert short.next_due == 4.0  # never later than the cache duration
    cell.succeeded(KEYS_B, now=2000.0)
    assert cell.failures == 0 and cell.next_due == 2300.0


def test_kid_misses_refetch_once_per_interval() -> None:
    cell = KeyCell("u", 300.0)
    assert cell.may_refetch_for_miss(100.0)
    assert not cell.may_refetch_for_miss(100.0 + jwks.MISS_INTERVAL_S - 0.1)
    assert cell.may_refetch_for_miss(100.0 + jwks.MISS_INTERVAL_S)


def test_cells_outlive_snapshots() -> None:
    state = JwksState()
    first = RemoteJwks("https://idp/jwks", 300.0)
    state.sync([first])
    first.cell.succeeded(KEYS_A, 0.0)
    same, other = RemoteJwks("https://idp/jwks", 300.0), RemoteJwks("https://idp/jwks", 60.0)
    state.sync([same, other, RemoteJwks("https://idp/jwks", 300.0)])
    assert same.cell is first.cell and same.cell.keys == tuple(KEYS_A)
    assert other.cell is not first.cell and len(state.cells) == 2
    state.sync([])
    assert state.cells == {}


async def test_fetch_schedule(autojump_clock: trio.testing.MockClock) -> None:
    remote = RemoteJwks("https://idp/jwks", 300.0)
    answers: list[list[jwt.PyJWK] | Exception] = [KEYS_A, OSError("down"), OSError("down"),
                                                  KEYS_B]  # fmt: skip
    fetched_at: list[float] = []

    async def get(uri: str) -> list[jwt.PyJWK]:
        fetched_at.append(trio.current_time())
        await trio.sleep(0.5)  # the endpoint's latency
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    state = JwksState(clock=trio.current_time, get=get)
    t0 = trio.current_time()
    state.sync([remote])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(state.run)
        await trio.testing.wait_all_tasks_blocked()
        provider = Provider("idp", remote=remote)
        assert provider.may_refetch()  # before the first answer: wait for it
        await state.wait_for(remote.cell)
        assert remote.cell.keys == tuple(KEYS_A)
        await trio.sleep(300.5 + 1 + 0.5 + 2 + 0.5 + 1)
        assert remote.cell.keys == tuple(KEYS_B)  # kept A through two failures
        nursery.cancel_scope.cancel()
    offsets = [round(t - t0, 1) for t in fetched_at]
    assert offsets == [0.0, 300.5, 302.0, 304.5]


async def test_a_request_waits_at_most_wait_s(autojump_clock: trio.testing.MockClock) -> None:
    remote = RemoteJwks("https://idp/jwks", 300.0)

    async def hang(uri: str) -> list[jwt.PyJWK]:
        await trio.sleep_forever()
        raise AssertionError

    state = JwksState(clock=trio.current_time, get=hang)
    state.sync([remote])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(state.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await state.wait_for(remote.cell)
        assert trio.current_time() - start == pytest.approx(jwks.WAIT_S)
        nursery.cancel_scope.cancel()
