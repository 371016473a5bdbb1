"""A Debian 12 container with systemd as PID 1 (systemd-nspawn --boot), for tests/systemd.

The image is the root file system that scripts/install-systemd-tier.sh built with mmdebstrap
(cached under /var/lib/cgwd-systemd/current/root). It boots with ``--volatile=overlay``: every
write goes to a tmpfs laid over the image, so the cached tree is never changed and nothing
is left when the container stops. The container joins an existing network namespace (the
lab's customer namespace) with ``--network-namespace-path``, and keeps CAP_NET_ADMIN there.

PID 1 of this machine is not systemd, so there is no machined: the container is not
registered (``--register=no --keep-unit``) and commands run inside it through ``nsenter``
into all of its leader's namespaces. The container gets the unified cgroup hierarchy
(cgroup v2) and may call bpf(): nspawn's own system-call filter refuses bpf() otherwise, and
then systemd in the container silently cannot attach the BPF device filter behind
DevicePolicy=/DeviceAllow= (a unit's "closed" device policy would not be enforced).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time

IMAGE_DIR = os.environ.get("CGWD_SYSTEMD_IMAGE_DIR", "/var/lib/cgwd-systemd")
IMAGE = os.path.join(IMAGE_DIR, "current", "root")
SRC = "/usr/local/src/cgwd"  # where the tests copy the checkout inside the container
CONFIG = "/etc/cgwd/cgwd.toml"  # the README's paths
UNIT = "/etc/systemd/system/cgwd.service"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    pass


def skip_reason() -> str | None:
    """Why this machine cannot run the tier (None: it can)."""
    if os.geteuid() != 0:
        return "the systemd tier needs root (systemd-nspawn, network namespaces)"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (bash scripts/install-systemd-tier.sh)"
    if shutil.which("nsenter") is None:
        return "nsenter is not installed (util-linux)"
    if not os.path.isfile(os.path.join(IMAGE, "usr", "lib", "systemd", "systemd")):
        return f"no container image at {IMAGE} (build it: bash scripts/install-systemd-tier.sh)"
    try:
        with open("/proc/filesystems") as f:
            if "overlay" not in f.read().split():
                return "the kernel has no overlayfs: the container boots with --volatile=overlay"
    except OSError:
        pass
    if not _cgroup2_available():
        return "no cgroup v2 hierarchy on this machine: systemd in the container needs one"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing: cgwd's userspace data path needs it"
    return None


def _cgroup2_available() -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(" - cgroup2 " in line for line in f)
    except OSError:
        return False


class Container:
    """One booted container: ``boot()``, ``run()`` inside, ``poweroff()``."""

    def __init__(self, name: str, *, netns_path: str, log_path: str, image: str = IMAGE):
        self.name = name
        self.netns_path = netns_path
        self.log_path = log_path
        self.image = image
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.boot_seconds: float | None = None

    @property
    def root(self) -> str:
        """The container's file system, seen from the host (its leader's root)."""
        return f"/proc/{self.leader}/root"

    def boot(self, timeout: float = 90) -> None:
        cmd = ["systemd-nspawn", "--quiet", "--directory", self.image, "--boot", "--volatile=overlay",
               "--register=no", "--keep-unit", "--machine", self.name, "--console=pipe",
               f"--network-namespace-path={self.netns_path}", "--capability=CAP_NET_ADMIN",
               "--system-call-filter=bpf"]
        env = {"PATH": os.environ.get("PATH", CONTAINER_PATH), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
               "SYSTEMD_LOG_COLOR": "0"}
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        deadline = t0 + timeout
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.console()}")
            if self.leader is None:
                self.leader = self._find_leader()
            if self.leader is not None:
                state = self.run(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
                if state in ("running", "degraded"):
                    self.boot_seconds = time.monotonic() - t0
                    return
            time.sleep(0.3)
        raise ContainerError(f"the container did not finish booting in {timeout:.0f}s (state {state!r}):\n"
                             f"{self.console()}")

    def _find_leader(self) -> int | None:
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            return None
        for pid in kids:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == "systemd":
                        return pid
            except OSError:
                continue
        return None

    def console(self, lines: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no console log)"

    def command(self, args: list[str]) -> list[str]:
        if self.leader is None:
            raise ContainerError("the container is not running")
        return ["nsenter", "--target", str(self.leader), "--all", "--", "env", "-i", f"PATH={CONTAINER_PATH}",
                "LANG=C.UTF-8", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", *args]

    def run(self, args: list[str] | str, *, check: bool = True, timeout: float = 60, input: str | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
        """Run a command inside the container (as root, in all of its namespaces)."""
        if isinstance(args, str):
            args = ["sh", "-c", args]
        if cwd:
            args = ["sh", "-c", f"cd {shlex.quote(cwd)} && exec \"$@\"", "sh", *args]
        try:
            p = subprocess.run(self.command(args), capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            raise ContainerError(f"timed out after {timeout}s in the container: {shlex.join(args)}") from None
        if check and p.returncode != 0:
            raise ContainerError(f"failed ({p.returncode}) in the container: {shlex.join(args)}\n"
                                 f"{p.stdout}{p.stderr}".rstrip())
        return p

    def copy_in(self, src: str, dest: str, ignore=None) -> None:
        """Copy a host directory tree to ``dest`` inside the container (its overlay)."""
        shutil.copytree(src, self.root + dest, ignore=ignore, symlinks=True)

    def write(self, dest: str, text: str, mode: int = 0o600) -> None:
        path = self.root + dest
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    def read(self, path: str) -> str:
        with open(self.root + path) as f:
            return f.read()

    def poweroff(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None and self.leader is not None:
            try:
                os.kill(self.leader, signal.SIGRTMIN + 4)  # systemd: "poweroff"
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        # nspawn cannot remove its propagation directory when /run is not a tmpfs
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
        self.leader = None
