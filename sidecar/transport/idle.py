"""Idle and header timeouts for many connections without a timer per request.

Theory of operation. Moving a trio cancel scope's deadline re-sorts trio's deadline heap
and costs more than the rest of a small request's bookkeeping, so connections do not
move deadlines. Each `Conn` counts its reads and writes; one sweeper task looks at every
tracked connection a few times per timeout, and a connection whose count did not change
for longer than its limit is cancelled (the idle timeout). The header timeout is a
deadline for the whole head, counted from the first sweep that saw the head incomplete
and not moved by the bytes that arrive: a client trickling a head one byte at a time
is cut off like a silent one. Expiry is detected within one sweep interval of the limit
(two for the header timeout), which is the precision such timeouts need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio


@dataclass(slots=True, eq=False)
class Tracked:
    """One connection under watch. `activity` is the connection's I/O counter."""

    activity: Callable[[], int]
    in_head: Callable[[], bool]
    cancel: Callable[[], None]
    busy: Callable[[], bool] = lambda: True  # carrying a request now (drain waits for it)
    seen: int = -1
    quiet_since: float = 0.0
    head_since: float | None = None  # when a sweep first saw the current head incomplete


@dataclass(slots=True)
class IdleTracker:
    """Pure core: decides which connections are past their limits at `now`."""

    idle_timeout_s: float
    header_timeout_s: float
    tracked: set[Tracked] = field(default_factory=set)
    _empty: trio.Event | None = None

    def add(self, t: Tracked, now: float) -> None:
        t.seen = t.activity()
        t.quiet_since = now
        self.tracked.add(t)

    def discard(self, t: Tracked) -> None:
        self.tracked.discard(t)
        if not self.tracked and self._empty is not None:
            self._empty.set()

    def close_idle(self) -> None:
        """Cancel every connection that carries nothing right now (a drain begins)."""
        for t in [t for t in self.tracked if not t.busy()]:
            self.discard(t)
            t.cancel()

    async def wait_empty(self) -> None:
        """Until no connection is tracked (a draining process waits for this)."""
        while self.tracked:
            self._empty = trio.Event()
            await self._empty.wait()

    def expired(self, now: float) -> list[Tracked]:
        out = []
        for t in self.tracked:
            if t.in_head():
                if t.head_since is None:
                    t.head_since = now
                elif now - t.head_since >= self.header_timeout_s:
                    out.append(t)
                    continue
            else:
                t.head_since = None
            count = t.activity()
            if count != t.seen:
                t.seen = count
                t.quiet_since = now
            elif now - t.quiet_since >= self.idle_timeout_s:
                out.append(t)
        return out

    @property
    def interval_s(self) -> float:
        return max(0.05, min(self.idle_timeout_s, self.header_timeout_s) / 4)


async def run_sweeper(tracker: IdleTracker) -> None:
    """The I/O shell: sweep forever, cancelling what expired."""
    while True:
        await trio.sleep(tracker.interval_s)
        for t in tracker.expired(trio.current_time()):
            tracker.discard(t)
            t.cancel()
