"""A step of the wall clock changes nothing cgwd does: every timer runs on the monotonic clock.

Read from the source (ast), so that a new use of the wall clock cannot slip in: the wall
clock (time.time, datetime.now, CLOCK_REALTIME, ...) is read only where a time is shown to
the operator, converted from the monotonic clock at the moment it is shown; the sans-IO
protocol cores read no clock at all (``now`` comes in). The running daemon under a stepped
wall clock: tests/interop/test_faults.py::test_wall_clock_steps_change_nothing.
"""

from __future__ import annotations

import ast
import asyncio
import os
import time

import cgwd

ROOT = os.path.dirname(cgwd.__file__)
WALL = {("time", "time"), ("time", "time_ns"), ("time", "localtime"), ("time", "gmtime"), ("time", "ctime"),
        ("time", "strftime"), ("time", "CLOCK_REALTIME"), ("datetime", "now"), ("datetime", "utcnow"),
        ("datetime", "today"), ("date", "today"), ("datetime", "fromtimestamp")}

# where the wall clock may be read: turning monotonic times into Unix times for the status
# and metrics, the status screen, the data path's per-SA statistics, and the HA record of
# keepalived transitions (ha.json: written by one notify process, read by later ones and by
# `cgwctl ha status`, kept across reboots; no timer of the daemon reads it)
ALLOWED = {
    ("ha/notify.py", "run_notify"),
    ("ha/cli.py", "_status"),
    ("status.py", "mono_to_wall"),
    ("status.py", "build_status"),
    ("status_format.py", "hints_for_tunnel"),
    ("status_format.py", "format_status"),
    ("tunnel/bgp_part.py", "_wall"),
    ("esp/sa.py", "SaPair.__init__"),
}

# the sans-IO cores: bytes and `now` in, so no clock of any kind
CORES = ["ike/session.py", "ike/schedule.py", "ike/retransmit.py", "bgp/session.py", "bgp/message.py",
         "routing/rib.py"] + [f"ike/v2/{n}" for n in sorted(os.listdir(os.path.join(ROOT, "ike", "v2")))
                              if n.endswith(".py")]


def _sources():
    for d, _dirs, files in os.walk(ROOT):
        rel = os.path.relpath(d, ROOT)
        if rel.split(os.sep)[0] == "lab":  # the lab's tooling, not the daemon
            continue
        for n in files:
            if n.endswith(".py"):
                path = os.path.join(d, n)
                yield os.path.relpath(path, ROOT), ast.parse(open(path).read(), path)


def _wall_reads(tree: ast.AST) -> list[tuple[str, int, str]]:
    """(enclosing function, line, what) of every wall-clock read, including `from time import time`."""
    found = []

    def walk(node, scope):
        for child in ast.iter_child_nodes(node):
            name = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) \
                    and (child.value.id, child.attr) in WALL:
                found.append((scope, child.lineno, f"{child.value.id}.{child.attr}"))
            if isinstance(child, ast.ImportFrom) and child.module in ("time", "datetime"):
                for a in child.names:
                    if (child.module, a.name) in WALL or (child.module == "datetime" and a.name in ("datetime", "date")):
                        found.append((scope, child.lineno, f"from {child.module} import {a.name}"))
            walk(child, name)

    walk(tree, "")
    return found


def test_the_wall_clock_is_read_only_to_show_times():
    seen = set()
    stray = []
    for rel, tree in _sources():
        for scope, line, what in _wall_reads(tree):
            key = (rel, scope)
            if key in ALLOWED:
                seen.add(key)
            else:
                stray.append(f"cgwd/{rel}:{line} {scope or '<module>'}: {what}")
    assert not stray, "the wall clock read where a timer could depend on it:\n" + "\n".join(stray)
    assert seen == ALLOWED, f"allowed but no longer reading the wall clock (drop them): {ALLOWED - seen}"


def test_sans_io_cores_read_no_clock():
    bad = []
    for rel in CORES:
        tree = ast.parse(open(os.path.join(ROOT, rel)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad += [f"cgwd/{rel}:{node.lineno} imports {n}" for n in names if n in ("time", "datetime", "asyncio")]
    assert not bad, bad


def test_times_shown_follow_the_monotonic_clock_across_a_wall_clock_step(monkeypatch):
    # what the status shows as "up since" is converted at the time it is shown: after the wall
    # clock jumps a year, now - since is still the monotonic time elapsed
    from cgwd.status import mono_to_wall
    from cgwd.tunnel.bgp_part import _wall

    async def main():
        loop = asyncio.get_running_loop()
        since = loop.time() - 42.0
        real = time.time
        for step in (0.0, 365 * 86400.0, -10 * 365 * 86400.0):
            monkeypatch.setattr(time, "time", lambda: real() + step)
            now = time.time()
            for conv in (mono_to_wall, _wall):
                assert abs(now - conv(since) - 42.0) < 0.5, (conv, step)
        assert mono_to_wall(None) is None and _wall(None) is None

    asyncio.run(main())
