"""The task supervisor: a crash is logged once, counted, restarted with growing delay; a task
that must not be restarted stops the daemon; stop() removes the task."""

from __future__ import annotations

import asyncio
import logging

from cgwd.supervisor import Supervisor, TaskState


def test_crash_is_counted_logged_once_and_restarted_with_backoff(caplog):
    runs: list[float] = []

    async def scenario():
        loop = asyncio.get_running_loop()
        fatal: list = []
        sup = Supervisor(lambda n, r: fatal.append((n, r)), backoff_min=0.05, backoff_max=0.2)

        async def flaky():
            runs.append(loop.time())
            raise RuntimeError("boom")

        sup.spawn("flaky", flaky)
        await asyncio.sleep(0.6)
        st = sup.status()["flaky"]
        await sup.stop("flaky")
        return st, fatal, sup.names()

    with caplog.at_level(logging.ERROR, logger="cgwd.supervisor"):
        st, fatal, names = asyncio.run(scenario())
    assert st["crashes"] >= 3 and st["last_error"] == "RuntimeError: boom"
    assert st["state"] in (TaskState.RESTARTING.value, TaskState.RUNNING.value)
    gaps = [b - a for a, b in zip(runs, runs[1:])]
    assert gaps[1] > gaps[0] * 1.5, f"the delay grows: {gaps}"
    crash_lines = [r for r in caplog.records if "task-crashed" in r.getMessage()]
    assert len(crash_lines) == st["crashes"], "one log line per crash"
    assert fatal == [] and names == []


def test_a_task_that_cannot_restart_stops_the_daemon():
    async def scenario():
        fatal: list = []
        sup = Supervisor(lambda n, r: fatal.append((n, r)))

        async def once():
            raise OSError("socket gone")

        sup.spawn("control", once, restart=False)
        await asyncio.sleep(0.05)
        return fatal, sup.status()["control"]["state"]

    fatal, state = asyncio.run(scenario())
    assert fatal == [("control", "OSError: socket gone")] and state == "failed"


def test_a_long_lived_task_that_returns_counts_as_a_crash():
    async def scenario():
        sup = Supervisor(lambda n, r: None, backoff_min=10)

        async def quits():
            return None

        sup.spawn("quits", quits)
        await asyncio.sleep(0.05)
        st = sup.status()["quits"]
        await sup.stop_all()
        return st

    st = asyncio.run(scenario())
    assert st["crashes"] == 1 and "returned" in st["last_error"] and st["state"] == "restarting"
