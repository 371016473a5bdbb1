"""The kernel XFRM data path at its edges, in a Debian kernel under QEMU (TCG): IPv6 inner
and outer (policies ::/0 on the xfrm interface, ESP over IPv6, plain and ESP-in-UDP)
against cgwd's userspace ESP and against itself, the MTU following the transform, the
sequence-number limits as events, stale-state replacement, unique tags, the sweep of a
crashed run's state, the capability probe. One boot per module runs
tests/qemu/guest_datapath.py; the tests below assert on groups of its checks.

Skips (with the reason) only when QEMU, virtme-ng or the guest kernel are not installed.
Run alone: ``.venv/bin/python -m pytest tests/qemu/test_kernel_datapath.py -m qemu -s``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest

import qemu_vm

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(1200)]

GUEST_TIMEOUT = 1000  # boot (35 s idle, 150 s on a loaded machine) + checks (about 5 minutes under TCG)

GROUPS = {
    "capabilities": ("capabilities:",),
    "v4-in-v4": ("v4-in-v4",),
    "v6-in-v4": ("v6-in-v4",),
    "v6-in-v6-userspace": ("v6-in-v6 plain ESP aes128-sha256 vs userspace",),
    "v4-in-v6": ("v4-in-v6",),
    "v6-in-v6-kernel": ("v6-in-v6 plain ESP aes128gcm16 vs kernel",),
    "limits": ("limits:",),
    "eexist": ("eexist:",),
    "tags": ("tags:",),
    "sweep": ("sweep:",),
}


@pytest.fixture(scope="module")
def guest(request):
    reason = qemu_vm.skip_reason()
    if reason:
        pytest.skip(reason)
    out = Path(tempfile.mkdtemp(prefix="cgwd-qemu-dp-"))
    script = os.path.join(qemu_vm.REPO, "tests", "qemu", "guest_datapath.py")
    py = os.path.join(qemu_vm.VENV_BIN, "python")
    cmd = (f"cd {shlex.quote(qemu_vm.REPO)} && {shlex.quote(py)} {shlex.quote(script)} "
           f"--out {shlex.quote(str(out))} --prefix q{os.getpid() % 1000}")
    run = qemu_vm.run_in_guest(cmd, timeout=GUEST_TIMEOUT, rwdir=str(out), log_path=str(out / "console.log"))
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    print(f"\nqemu guest: {run.seconds:.0f}s (exit {run.returncode}, timed out: {run.timed_out}); "
          f"timings {results.get('timings')}")
    failed_before = request.session.testsfailed
    yield run, results
    if request.session.testsfailed == failed_before:
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"\nqemu guest output kept in {out} (console.log, results.json)")


def _report(run, results, names=()) -> str:
    parts = [f"guest exit {run.returncode}, {run.seconds:.0f}s, timed out: {run.timed_out}"]
    for step, err in results.get("errors", {}).items():
        parts.append(f"step {step} raised:\n{err}")
    for n in names:
        c = results["checks"][n]
        if not c["ok"]:
            parts.append(f"FAILED {n}:\n{c['detail']}")
    parts.append("----- guest console (last 60 lines)\n" + "\n".join(run.output.splitlines()[-60:]))
    return "\n".join(parts)


def test_guest_ran_everything(guest):
    run, results = guest
    assert results.get("done") and not run.timed_out, _report(run, results)
    assert results["modules"].get("esp4") == "ok" and results["modules"].get("esp6") == "ok", results["modules"]
    assert not results.get("errors"), _report(run, results)


@pytest.mark.parametrize("group", list(GROUPS))
def test_kernel_datapath(guest, group):
    run, results = guest
    checks = results.get("checks", {})
    names = [n for n in checks if any(n.startswith(w) for w in GROUPS[group])]
    failed = [n for n in names if not checks[n]["ok"]]
    assert names and not failed, f"{group}: {len(names)} checks, failed {failed}\n" + _report(run, results, names)


def test_every_check_belongs_to_a_group(guest):
    _run, results = guest
    stray = [n for n in results.get("checks", {}) if not any(n.startswith(w) for ws in GROUPS.values() for w in ws)]
    assert not stray
