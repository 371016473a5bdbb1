"""IPv6 VPN connections through cgwd with the kernel XFRM data path, in a Debian kernel under
QEMU (TCG): an IPv6 VPN over IPv4 outside addresses and over IPv6 ones (ESP over IPv6), the
AWS side strongSwan with the kernel's IPsec. One boot per module runs
tests/qemu/guest_ipv6.py; the tests below assert on groups of its checks.

Skips (with the reason) only when QEMU, virtme-ng or the guest kernel are not installed.
Run alone: ``.venv/bin/python -m pytest tests/qemu/test_kernel_ipv6_vpn.py -m qemu -s``.
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

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(2100)]

# boot (35 s idle, 150 s loaded) + two scenarios: a few minutes each under TCG on an idle host,
# 12 minutes for both on a loaded one (charon's start alone took over 80 s there)
GUEST_TIMEOUT = 1900
SCENARIOS = ("v6-in-v4", "v6-in-v6")
GROUPS = {
    "kernel_state": ("policies", "state pair", "xfrm interface", "datapath"),
    "bgp_routes": ("BGP", "IPv6 route"),
    "traffic": ("ping6", "TCP", "counters"),
    "cleanup": ("SIGTERM", "traceback", "torn down"),
}
CASES = [(s, g) for s in SCENARIOS for g in GROUPS]


@pytest.fixture(scope="module")
def guest(request):
    reason = qemu_vm.skip_reason()
    if reason:
        pytest.skip(reason)
    out = Path(tempfile.mkdtemp(prefix="cgwd-qemu-ipv6-"))
    script = os.path.join(qemu_vm.REPO, "tests", "qemu", "guest_ipv6.py")
    py = os.path.join(qemu_vm.VENV_BIN, "python")
    cmd = (f"cd {shlex.quote(qemu_vm.REPO)} && {shlex.quote(py)} {shlex.quote(script)} "
           f"--out {shlex.quote(str(out))} --scenarios {','.join(SCENARIOS)} --prefix q6{os.getpid() % 1000}")
    run = qemu_vm.run_in_guest(cmd, timeout=GUEST_TIMEOUT, rwdir=str(out), log_path=str(out / "console.log"))
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    print(f"\nqemu guest (IPv6): {run.seconds:.0f}s in all (exit {run.returncode}, timed out: {run.timed_out}); "
          f"timings {results.get('timings')}")
    failed_before = request.session.testsfailed
    yield run, results
    if request.session.testsfailed == failed_before:
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"\nqemu guest output kept in {out} (console.log, results.json)")


def group_of(check: str) -> str:
    for group, words in GROUPS.items():
        if any(w in check for w in words):
            return group
    return "unassigned"


def _report(run, results, scen=None, names=None) -> str:
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
    parts.append("----- guest console (last 80 lines)\n" + "\n".join(run.output.splitlines()[-80:]))
    return "\n".join(parts)


def test_guest_boots_with_esp_for_both_families(guest):
    run, results = guest
    assert results, "the guest wrote no results:\n" + _report(run, results)
    mods = results.get("modules", {})
    assert all(mods.get(m) == "ok" for m in ("esp4", "esp6", "xfrm_interface")), _report(run, results)
    assert results.get("done") and not run.timed_out, _report(run, results)


@pytest.mark.parametrize("scen,group", CASES, ids=[f"{s}-{g}" for s, g in CASES])
def test_ipv6_vpn_on_the_kernel_data_path(guest, scen, group):
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
