"""The per-request choice among a rule's weighted backends (traffic splitting)."""

from __future__ import annotations

from collections.abc import Sequence


class SmoothWeighted:
    """A weighted split, picked by nginx's smooth weighted round robin: each pick adds every
    weight to its running value, takes the largest and subtracts the total from it. 90/10
    gives exactly 9 and 1 in every 10 picks, spread out (not 9 in a row), so a canary gets
    its share over small windows, not just on average. A zero weight is never picked.

    `usable` masks choices that cannot take traffic now (a version with no healthy
    endpoint): they are left out of the pick, so their share goes to the others in
    proportion to their weights, and they rejoin where they left off."""

    __slots__ = ("current", "skipped", "total", "weights")

    def __init__(self, weights: tuple[int, ...]) -> None:
        self.weights = weights
        self.total = sum(weights)
        self.current = [0] * len(weights)
        self.skipped: frozenset[int] = frozenset()  # masked at the last pick, for logs

    def pick(self, usable: Sequence[bool] | None = None) -> int:
        """The index of the next choice; -1 when none is usable."""
        current = self.current
        best = -1
        total = 0
        for i, w in enumerate(self.weights):
            if w == 0 or (usable is not None and not usable[i]):
                continue
            current[i] += w
            total += w
            if best < 0 or current[i] > current[best]:
                best = i
        if best >= 0:
            current[best] -= total
        return best
