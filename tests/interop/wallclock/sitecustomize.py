"""A wall clock of its own for one process, stepped by a test while the process runs.

Python imports this module at start-up when this directory is on PYTHONPATH. It does nothing
unless CGWD_FAKE_WALL_CLOCK names a file of 8 bytes: then time.time(), time.time_ns() and
time.clock_gettime(_ns)(CLOCK_REALTIME) return the real wall clock plus the offset in that
file (seconds, a native double), read through a shared mapping at every call, so that a
test steps the process's wall clock (forwards, backwards, by years) without touching the
machine's. The monotonic clocks, which every timer must use, are left alone.
"""

import os

_path = os.environ.get("CGWD_FAKE_WALL_CLOCK")
if _path:
    import mmap
    import struct
    import time

    with open(_path, "r+b") as _f:
        _map = mmap.mmap(_f.fileno(), 8)
    _offset = struct.Struct("d").unpack_from
    _time, _time_ns = time.time, time.time_ns
    _gettime, _gettime_ns = time.clock_gettime, time.clock_gettime_ns

    def _time_fake() -> float:
        return _time() + _offset(_map, 0)[0]

    def _time_ns_fake() -> int:
        return _time_ns() + int(_offset(_map, 0)[0] * 1e9)

    def _gettime_fake(clock: int) -> float:
        return _gettime(clock) + (_offset(_map, 0)[0] if clock == time.CLOCK_REALTIME else 0.0)

    def _gettime_ns_fake(clock: int) -> int:
        return _gettime_ns(clock) + (int(_offset(_map, 0)[0] * 1e9) if clock == time.CLOCK_REALTIME else 0)

    time.time, time.time_ns = _time_fake, _time_ns_fake
    time.clock_gettime, time.clock_gettime_ns = _gettime_fake, _gettime_ns_fake
