"""One schedule of deadlines per engine: (deadline, action) entries that the timer handler pops.

An engine never keeps "what is due" anywhere else: ``get_timer()`` is
:meth:`Schedule.next_deadline` and ``handle_timer(now)`` is :meth:`Schedule.run`, which pops
every entry due at ``now`` and hands it to the engine's dispatcher. A popped entry is gone
whatever its action decides (do the work, re-arm itself later, or find nothing to do), so an
engine cannot ask to be woken for work it will not do: after ``run(now)`` the earliest
deadline is None or later than ``now``.

Entries are keyed by ``(action, owner)``: an action (an enum member of the engine) and the
object it belongs to (an SA, an exchange, a child; None for the engine itself). Setting an
entry replaces the previous deadline of the same key; removing an owner cancels its entries.
Ties are broken by insertion order, so a run is deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator
from typing import Any

log = logging.getLogger("cgwd.ike")

Key = tuple[Hashable, Any]

MAX_RUN = 10000  # entries one run may pop (a handler re-arming itself at `now` forever is a bug)
OVERRUN_DELAY = 1.0  # where such entries go after MAX_RUN pops, so the loop cannot spin


class Schedule:
    """Deadlines (monotonic seconds) by (action, owner)."""

    def __init__(self) -> None:
        self._entries: dict[Key, tuple[float, int]] = {}
        self._seq = 0
        self.overruns = 0

    # ------------------------------------------------------------------ entries

    def set(self, action: Hashable, deadline: float, owner: Any = None) -> None:
        """Arm (or move) the entry of ``(action, owner)`` to ``deadline``."""
        self._seq += 1
        self._entries[(action, owner)] = (float(deadline), self._seq)

    def set_earliest(self, action: Hashable, deadline: float, owner: Any = None) -> None:
        """Arm the entry at ``deadline`` unless it is already armed earlier."""
        cur = self.get(action, owner)
        if cur is None or deadline < cur:
            self.set(action, deadline, owner)

    def cancel(self, action: Hashable, owner: Any = None) -> None:
        self._entries.pop((action, owner), None)

    def cancel_owner(self, owner: Any) -> None:
        """Drop every entry of ``owner`` (it is gone)."""
        for key in [k for k in self._entries if k[1] is owner]:
            del self._entries[key]

    def get(self, action: Hashable, owner: Any = None) -> float | None:
        e = self._entries.get((action, owner))
        return e[0] if e else None

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[float, Hashable, Any]]:
        for (action, owner), (deadline, _) in sorted(self._entries.items(), key=lambda kv: kv[1]):
            yield deadline, action, owner

    def clear(self) -> None:
        self._entries.clear()

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        if not self._entries:
            return None
        return min(self._entries.values())[0]

    def pop_due(self, now: float) -> Key | None:
        """Remove and return the earliest entry due at ``now`` (deadline <= now), or None."""
        if not self._entries:
            return None
        key, (deadline, _) = min(self._entries.items(), key=lambda kv: kv[1])
        if deadline > now:
            return None
        del self._entries[key]
        return key

    def run(self, now: float, dispatch: Callable[[Hashable, Any, float], None]) -> int:
        """Pop every entry due at ``now`` (including those a handler arms at or before
        ``now``) and call ``dispatch(action, owner, now)`` for each. Returns how many ran.

        Afterwards the earliest deadline is None or later than ``now``: should handlers keep
        re-arming at ``now`` beyond MAX_RUN pops, the remaining due entries are moved
        OVERRUN_DELAY seconds on (counted in ``overruns``, logged) instead of spinning.
        """
        n = 0
        while (key := self.pop_due(now)) is not None:
            dispatch(key[0], key[1], now)
            n += 1
            if n >= MAX_RUN:
                due = [k for k, (d, _) in self._entries.items() if d <= now]
                for k in due:
                    self.set(k[0], now + OVERRUN_DELAY, k[1])
                if due:
                    self.overruns += 1
                    log.warning("schedule: %d entries still due after %d runs, deferred", len(due), n)
                break
        return n
