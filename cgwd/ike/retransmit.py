"""Retransmission with backoff for a request awaiting its answer (both IKE versions).

The deadline lives in the engine's :class:`cgwd.ike.schedule.Schedule`; this object only
holds what to resend and how many tries are spent. Intervals double: with a first timeout of
2 s the tries go out at 2, 6, 14, 30, 62 s after the first send.
"""

from __future__ import annotations

from dataclasses import dataclass

from .events import Datagram


@dataclass
class Retransmission:
    datagram: Datagram
    interval: float  # seconds until the next try (doubles at every try)
    tries: int = 0

    def next_try(self, now: float, max_tries: int) -> float | None:
        """Spend one try: the deadline after it, or None when every try is spent."""
        if self.tries >= max_tries:
            return None
        self.tries += 1
        self.interval *= 2
        return now + self.interval


def backoff(failures: int, first: float, cap: float) -> float:
    """Delay before attempt ``failures + 1`` after ``failures`` consecutive failures (>= 1):
    ``first``, then doubling, at most ``cap``."""
    return min(first * 2 ** max(0, failures - 1), cap)
