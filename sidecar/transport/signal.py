"""`Signal`: wake the one task that waits, again and again, for something to change.

A stream's reader waits for body or an end, its sender for a window, a connection's writer
for frames. trio.Event serves these with a new Event per wait and a set of waiters per
Event; a Signal is one slot: `wait` parks the current task until `set`, and `set` with
nobody waiting costs an attribute read. A `set` before the `wait` is not remembered, so a
waiter checks its condition (data queued, window open) first and waits only while it does
not hold: in trio's single thread nothing can change between that check and the park.
"""

from __future__ import annotations

import trio


class Signal:
    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None

    def set(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Until the next `set` (a cancellation point: cancelled, it stops waiting)."""
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED
