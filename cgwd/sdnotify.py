"""sd_notify(3) without libsystemd: READY/STATUS/WATCHDOG/STOPPING/RELOADING.

Messages go to $NOTIFY_SOCKET (a path, or an abstract socket written '@name').  Without
$NOTIFY_SOCKET (not started by systemd) every call is a no-op returning False.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["SdNotifier", "notify", "watchdog_interval"]


def _address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def notify(message: str, sock_path: str | None = None) -> bool:
    """Send ``message`` ("READY=1\\nSTATUS=...") to the notify socket; False if none or failed."""
    path = sock_path if sock_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if not (path.startswith("/") or path.startswith("@")):
        return False  # vsock and other schemes are not supported
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(_address(path))
            s.sendall(message.encode("utf-8", "replace"))
        return True
    except OSError:
        return False


def watchdog_interval(env: dict | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None if no watchdog is armed."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        n = int(usec)
    except ValueError:
        return None
    if n <= 0:
        return None
    return n / 1e6 / 2


class SdNotifier:
    """Convenience wrapper; ``sock_path`` defaults to $NOTIFY_SOCKET at construction."""

    def __init__(self, sock_path: str | None = None):
        self.sock_path = sock_path if sock_path is not None else os.environ.get("NOTIFY_SOCKET")

    @property
    def enabled(self) -> bool:
        return bool(self.sock_path)

    def send(self, *lines: str) -> bool:
        if not self.sock_path:
            return False
        return notify("\n".join(lines), self.sock_path)

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def reloading(self, status: str | None = None) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) match the reload
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog_interval(self) -> float | None:
        return watchdog_interval()


def _one_line(s: str) -> str:
    return " ".join(str(s).split())
