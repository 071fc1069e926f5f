"""transport/signal.py: every waiter is woken by the next `set`, a cancelled waiter leaves
quietly, and a `set` with nobody waiting is not remembered."""

from __future__ import annotations

import trio
import trio.testing

from sidecar.transport.signal import Signal


async def test_set_wakes_every_waiter_and_a_cancelled_one_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signal = Signal()
    woken: list[str] = []

    async def waiter(name: str) -> None:
        await signal.wait()
        woken.append(name)

    with trio.fail_after(10):  # a waiter never woken fails the test, not hangs it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "heartbeats")
            nursery.start_soon(waiter, "acks")
            with trio.move_on_after(1):  # a third gives up before the set
                await signal.wait()
            await trio.testing.wait_all_tasks_blocked()
            signal.set()
    assert sorted(woken) == ["acks", "heartbeats"]


async def test_a_set_with_nobody_waiting_is_not_remembered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    signal = Signal()
    signal.set()
    with trio.move_on_after(5) as scope:
        await signal.wait()
    assert scope.cancelled_caught
