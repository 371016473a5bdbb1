"""Small, explicit helpers around `ip netns` for the lab and the interop tests.

Everything the lab creates is named with a prefix so that teardown (and a later run after a
crash) can find and remove exactly what belongs to it and nothing else.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass


class LabError(RuntimeError):
    """A lab step failed; the message says which command and what it printed."""


def run(cmd: list[str] | str, *, check: bool = True, timeout: float = 60, env=None,
        input: str | None = None) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]}: not installed ({exc})") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {timeout}s: {shlex.join(cmd)}") from None
    if check and proc.returncode != 0:
        raise LabError(f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}".rstrip())
    return proc


def list_netns() -> list[str]:
    out = run(["ip", "-o", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@dataclass
class Netns:
    name: str

    def exists(self) -> bool:
        return self.name in list_netns()

    def create(self) -> "Netns":
        run(["ip", "netns", "add", self.name])
        self.ip("link set lo up")
        return self

    def delete(self) -> None:
        # Kill whatever still runs inside before removing the namespace.
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        run(["ip", "netns", "delete", self.name], check=False)

    def pids(self) -> list[int]:
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def cmd(self, args: list[str] | str) -> list[str]:
        if isinstance(args, str):
            args = shlex.split(args)
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, args: list[str] | str, **kw) -> subprocess.CompletedProcess:
        return run(self.cmd(args), **kw)

    def ip(self, args: str, **kw) -> subprocess.CompletedProcess:
        return run(["ip", "-n", self.name, *shlex.split(args)], **kw)

    def sysctl(self, key: str, value: str) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def popen(self, args: list[str], *, log_path: str | None = None, env=None) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            return subprocess.Popen(self.cmd(args), stdout=out, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if log_path:
                out.close()


def veth(ns_a: Netns, if_a: str, addr_a: str | None, ns_b: Netns, if_b: str, addr_b: str | None,
         mtu: int | None = None) -> None:
    """A veth pair between two namespaces, both ends up, with optional addresses (CIDR form)."""
    run(["ip", "link", "add", if_a, "netns", ns_a.name, "type", "veth", "peer", "name", if_b,
         "netns", ns_b.name])
    for ns, ifn, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
        if mtu:
            ns.ip(f"link set {ifn} mtu {mtu}")
        if addr:
            ns.ip(f"addr add {addr} dev {ifn}")
        ns.ip(f"link set {ifn} up")


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll predicate() until it returns a truthy value; raise LabError naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled probes may fail until ready
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
