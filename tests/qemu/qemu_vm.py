"""Boot the Debian kernel that scripts/install-qemu.sh unpacked, under QEMU (TCG), with the
host's filesystem as the guest's root (virtme-ng), run one command in it, bounded in time.

Used by tests/qemu (the kernel XFRM tier) and bench/kernel_throughput.py. The host kernel has
no ESP; the guest's has (esp4, xfrm_interface, ip_vti as modules). KVM is present on these
machines but hangs at boot, hence ``--disable-kvm``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
KERNEL_DIR = os.environ.get("CGWD_QEMU_KERNEL_DIR", "/var/lib/cgwd-qemu")


def kernel_image() -> tuple[str, str] | None:
    """(vmlinuz path, version) of the installed guest kernel, or None."""
    cur = os.path.join(KERNEL_DIR, "current")
    if not os.path.isfile(os.path.join(cur, "vmlinuz")):
        return None
    version = os.path.basename(os.path.realpath(cur))
    return os.path.join(cur, "vmlinuz"), version


def skip_reason() -> str | None:
    """None when a guest can be booted here, else why not (in plain words)."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return "the qemu tier needs an x86_64 Linux host"
    if os.geteuid() != 0:
        return "the qemu tier needs root (the guest runs network namespaces as the host's root)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (run scripts/install-qemu.sh)"
    if not os.access(os.path.join(VENV_BIN, "vng"), os.X_OK):
        return "virtme-ng (vng) is not installed in .venv (run scripts/install-qemu.sh)"
    k = kernel_image()
    if k is None:
        return f"no guest kernel in {KERNEL_DIR}/current (run scripts/install-qemu.sh)"
    if not glob.glob(f"/lib/modules/{k[1]}/modules.dep"):
        return f"/lib/modules/{k[1]} is missing (run scripts/install-qemu.sh)"
    if not os.path.exists("/bin/busybox") and shutil.which("busybox") is None:
        return "busybox is not installed (apt-get install busybox-static)"
    return None


@dataclass
class GuestRun:
    returncode: int | None  # None: killed at the deadline
    output: str  # the guest console and the command's output
    seconds: float
    timed_out: bool


def precompile() -> None:
    """Byte-compile cgwd and the guest scripts on the host, as `pip install` leaves a package:
    this machine's shell sets PYTHONDONTWRITEBYTECODE, so every Python start in the guest
    (cgwd, each `cgwctl status`) would compile the package again under TCG. The bytecode
    lands in the checkout's git-ignored __pycache__ directories, which the guest reads."""
    for d in ("cgwd", os.path.join("tests", "qemu")):
        subprocess.run([os.path.join(VENV_BIN, "python"), "-m", "compileall", "-q", d], cwd=REPO, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_in_guest(command: str, *, timeout: float, rwdir: str, memory: str = "2G", cpus: int = 2,
                 log_path: str | None = None) -> GuestRun:
    """Boot, run ``command`` (a shell command line) as root in the guest, power off.

    ``rwdir`` is shared read-write with the guest (results come back through it); the rest of
    the host filesystem is the guest's root, copy-on-write in memory. The whole run is killed
    (the QEMU process group this function started) after ``timeout`` seconds.
    """
    k = kernel_image()
    assert k is not None, "no guest kernel"
    precompile()
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    cmd = [os.path.join(VENV_BIN, "vng"), "--disable-kvm", "--run", k[0], "--memory", memory,
           "--cpus", str(cpus), "--rwdir", rwdir, "--exec", command]
    log = open(log_path, "w+b") if log_path else subprocess.PIPE
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=REPO, start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # the vng/qemu process group started here
        out, _ = proc.communicate()
    seconds = time.monotonic() - t0
    if log_path:
        log.seek(0)
        out = log.read()
        log.close()
    text = (out or b"").decode(errors="replace")
    return GuestRun(None if timed_out else proc.returncode, text, seconds, timed_out)
