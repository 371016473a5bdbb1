"""The daemon's task supervisor: every long-lived task is named, its crash is logged once
with the reason and counted, and it is restarted with backoff, or, when it cannot be
restarted safely, the daemon is told to stop with an error (systemd restarts it).

strongSwan's processor supervises its jobs the same way; asyncio would otherwise keep a
dead task's exception until garbage collection and say nothing.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

log = logging.getLogger("cgwd.supervisor")

BACKOFF_MIN = 1.0
BACKOFF_MAX = 60.0
#: a task that ran this long before crashing starts again from the shortest delay
STABLE_AFTER = 60.0


class TaskState(str, enum.Enum):
    RUNNING = "running"
    RESTARTING = "restarting"  # crashed, waiting for its backoff delay
    FAILED = "failed"  # crashed and not restartable: the daemon is stopping
    STOPPED = "stopped"


@dataclass
class _Task:
    name: str
    factory: Callable[[], Awaitable[None]]
    restart: bool
    state: TaskState = TaskState.RUNNING
    crashes: int = 0
    last_error: str | None = None
    started_at: float = 0.0
    delay: float = BACKOFF_MIN
    task: asyncio.Task | None = field(default=None, repr=False)


class Supervisor:
    def __init__(self, on_fatal: Callable[[str, str], None], *, clock: Callable[[], float] = time.monotonic,
                 backoff_min: float = BACKOFF_MIN, backoff_max: float = BACKOFF_MAX) -> None:
        self._on_fatal = on_fatal
        self._clock = clock
        self._min = backoff_min
        self._max = backoff_max
        self._tasks: dict[str, _Task] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]], *, restart: bool = True) -> None:
        """Run ``factory()`` as the task ``name`` (replacing a stopped one of that name).

        ``restart=False``: a crash stops the daemon (``on_fatal(name, reason)``)."""
        old = self._tasks.get(name)
        if old is not None and old.state in (TaskState.RUNNING, TaskState.RESTARTING):
            raise ValueError(f"task {name!r} is already supervised")
        t = _Task(name, factory, restart, delay=self._min)
        self._tasks[name] = t
        self._run(t)

    def _run(self, t: _Task) -> None:
        t.state = TaskState.RUNNING
        t.started_at = self._clock()
        t.task = asyncio.ensure_future(self._guard(t))

    async def _guard(self, t: _Task) -> None:
        try:
            await t.factory()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - this is the one place a task's crash is handled
            self._crashed(t, f"{type(exc).__name__}: {exc}")
            return
        if t.state is TaskState.RUNNING:
            self._crashed(t, "returned (a long-lived task must not end)")

    def _crashed(self, t: _Task, reason: str) -> None:
        t.crashes += 1
        t.last_error = reason
        ran = self._clock() - t.started_at
        if not t.restart:
            t.state = TaskState.FAILED
            log.error("event=task-failed task=%s reason=%s action=daemon-exit", t.name, reason)
            self._on_fatal(t.name, reason)
            return
        if ran >= STABLE_AFTER:
            t.delay = self._min
        delay = t.delay
        t.delay = min(t.delay * 2, self._max)
        t.state = TaskState.RESTARTING
        log.error("event=task-crashed task=%s reason=%s crashes=%d restart_in=%.0fs", t.name, reason,
                  t.crashes, delay)
        t.task = asyncio.ensure_future(self._restart_later(t, delay))

    async def _restart_later(self, t: _Task, delay: float) -> None:
        await asyncio.sleep(delay)
        if t.state is TaskState.RESTARTING:
            self._run(t)

    async def stop(self, name: str) -> None:
        t = self._tasks.get(name)
        if t is None:
            return
        t.state = TaskState.STOPPED
        if t.task is not None and not t.task.done():
            t.task.cancel()
            try:
                await t.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - it is being stopped
                pass
        del self._tasks[name]

    async def stop_all(self) -> None:
        for name in list(self._tasks):
            await self.stop(name)

    def names(self) -> list[str]:
        return list(self._tasks)

    def status(self) -> dict[str, dict]:
        return {t.name: {"state": t.state.value, "crashes": t.crashes, "last_error": t.last_error}
                for t in self._tasks.values()}

    def crash_counts(self) -> dict[str, int]:
        return {t.name: t.crashes for t in self._tasks.values()}
