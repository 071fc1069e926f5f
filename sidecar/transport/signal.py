"""`Signal`: wake the tasks that wait, again and again, for something to change.

A stream's reader waits for body or an end, its senders for a window, a connection's writer
for frames. trio.Event serves these with a new Event per wait; a Signal is reused: `wait`
parks the current task until the next `set`, and `set` with nobody waiting costs an
attribute read. A `set` before the `wait` is not remembered, so a waiter checks its
condition (data queued, window open) first and waits only while it does not hold: in
trio's single thread nothing can change between that check and the park. Usually one task
waits; more may (a watch's heartbeats and its ACKs share a stream's window), and `set`
wakes them all.
"""

from __future__ import annotations

import trio


class Signal:
    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[trio.lowlevel.Task] = []

    def set(self) -> None:
        if self._tasks:
            tasks, self._tasks = self._tasks, []
            for task in tasks:
                trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        """Until the next `set` (a cancellation point: cancelled, it stops waiting)."""
        task = trio.lowlevel.current_task()
        self._tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
