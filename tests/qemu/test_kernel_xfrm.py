"""The kernel XFRM data path carrying real traffic, in a Debian kernel under QEMU (TCG).

The host kernel has no ESP, so this boots the Debian 6.1 kernel that scripts/install-qemu.sh
unpacked, ONCE per module, with the host filesystem as its root (virtme-ng), and runs
tests/qemu/guest_xfrm.py inside it: the lab with strongSwan on the AWS side using the
kernel's IPsec (kernel-netlink + xfrm interfaces), cgwd with ``datapath = "kernel"``,
directly (plain ESP, two tunnels, IKEv1) and behind NAT (IKEv2, ESP-in-UDP, UDP_ENCAP on cgwd's 4500
socket). The guest writes every check with what the kernel printed (keys redacted); the
tests below assert on groups of them and print the guest's logs and console on failure.

Skips (with the reason) only when QEMU, virtme-ng or the guest kernel are not installed.
Run alone: ``.venv/bin/python -m pytest tests/qemu -m qemu -s``.
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

# The guest run is the first test's fixture setup: pytest-timeout must allow for all of it.
pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(2000)]

# About 5 minutes on an idle 2-core machine (boot ~35 s, probe, direct ~175 s, nat ~85 s, TCG);
# on a loaded one (other labs running) 13 minutes were seen for boot and direct alone
# (direct: 555 s; a Python start-up in the guest took over a minute), so allow six times
# that. The bound kills the QEMU process group.
GUEST_TIMEOUT = 1800
# the static VPN scenario (about 10 minutes of TCG on a loaded machine) runs with
# CGWD_QEMU_FULL=1; the interop tier runs static VPNs on the userspace path in CI
SCENARIOS = ("probe", "direct", "nat") + (("static",) if os.environ.get("CGWD_QEMU_FULL") == "1" else ())


@pytest.fixture(scope="module")
def guest(request):
    reason = qemu_vm.skip_reason()
    if reason:
        pytest.skip(reason)
    # shared read-write with the guest; kept (and named in the failure report) when a test fails
    out = Path(tempfile.mkdtemp(prefix="cgwd-qemu-xfrm-"))
    script = os.path.join(qemu_vm.REPO, "tests", "qemu", "guest_xfrm.py")
    py = os.path.join(qemu_vm.VENV_BIN, "python")
    cmd = (f"cd {shlex.quote(qemu_vm.REPO)} && {shlex.quote(py)} {shlex.quote(script)} "
           f"--out {shlex.quote(str(out))} --scenarios {','.join(SCENARIOS)} --prefix q{os.getpid() % 1000}")
    run = qemu_vm.run_in_guest(cmd, timeout=GUEST_TIMEOUT, rwdir=str(out), log_path=str(out / "console.log"))
    results = {}
    path = out / "results.json"
    if path.exists():
        results = json.loads(path.read_text())
    print(f"\nqemu guest: {run.seconds:.0f}s in all (exit {run.returncode}, timed out: {run.timed_out}); "
          f"timings {results.get('timings')}; figures {results.get('figures')}")
    failed_before = request.session.testsfailed
    yield run, results
    if request.session.testsfailed == failed_before:
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"\nqemu guest output kept in {out} (console.log, results.json)")


def _console(run) -> str:
    lines = run.output.splitlines()
    return "\n".join(lines[-80:])


def _report(run, results, scen: str | None = None, names=None) -> str:
    parts = [f"guest exit {run.returncode}, {run.seconds:.0f}s, timed out: {run.timed_out}"]
    if results.get("fatal"):
        parts.append(f"fatal: {results['fatal']}")
    s = results.get("scenarios", {}).get(scen) if scen else None
    if s:
        if s.get("error"):
            parts.append(f"scenario {scen} raised:\n{s['error']}")
        for name, c in s["checks"].items():
            if (names is None or name in names) and not c["ok"]:
                parts.append(f"FAILED {name}:\n{c['detail']}")
        for name, text in s.get("logs", {}).items():
            parts.append(f"----- {name}\n{text}")
    parts.append("----- guest console (last 80 lines)\n" + _console(run))
    return "\n".join(parts)


GROUPS = {
    # checks are put in the first group whose keyword they contain
    "probe": ("probe:",),
    "rekey": ("rekey",),
    "restart": ("restart", "SIGKILL"),
    "failover": ("failover",),
    "cleanup": ("SIGTERM", "traceback", "PSK", "torn down"),
    "kernel_state": ("xfrm states", "outer addresses", "algorithms", "replay window", "reqid", "encap",
                     "plain ESP", "AWS side", "strongSwan child", "policies", "xfrm interface", "datapath_is_kernel"),
    "traffic": ("BGP", "VPC route", "ping", "counters", "cgwd up", "TCP MSS"),
}


def group_of(check: str) -> str:
    for group, words in GROUPS.items():
        if any(w in check for w in words):
            return group
    return "unassigned"


EXPECTED = {"probe": ("probe",), "direct": ("kernel_state", "traffic", "rekey", "restart", "cleanup"),
            "nat": ("kernel_state", "traffic", "cleanup"),
            "static": ("kernel_state", "traffic", "failover", "cleanup")}
CASES = [(s, g) for s in SCENARIOS for g in EXPECTED[s]]


def test_guest_boots_with_esp(guest):
    run, results = guest
    assert results, "the guest wrote no results:\n" + _report(run, results)
    mods = results.get("modules", {})
    assert mods.get("esp4") == "ok" and mods.get("xfrm_interface") == "ok", _report(run, results)
    assert results.get("done"), "the guest script did not finish:\n" + _report(run, results)
    assert not run.timed_out


@pytest.mark.parametrize("scen,group", CASES, ids=[f"{s}-{g}" for s, g in CASES])
def test_kernel_xfrm(guest, scen, group):
    run, results = guest
    s = results.get("scenarios", {}).get(scen)
    assert s is not None, f"scenario {scen} did not run:\n" + _report(run, results)
    names = [n for n in s["checks"] if group_of(n) == group]
    failed = [n for n in names if not s["checks"][n]["ok"]]
    assert not s.get("error") and names and not failed, (
        f"{scen}/{group}: {len(names)} checks, failed {failed}\n" + _report(run, results, scen, names))


def test_every_check_belongs_to_a_group(guest):
    _run, results = guest
    stray = [(sc, n) for sc, s in results.get("scenarios", {}).items() for n in s["checks"]
             if group_of(n) == "unassigned"]
    assert not stray
