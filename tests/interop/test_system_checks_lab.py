"""What a fresh box lacks, said plainly by the running daemon (issue 12 item 9): forwarding
off, a strict reverse-path filter on a tunnel interface. cgwd sets what it owns (loose
rp_filter on its own interfaces at creation) and reports the rest in status and metrics."""

from __future__ import annotations

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for
from cgwd.status_format import format_status

pytestmark = pytest.mark.interop


def _problems(lab) -> set[str]:
    return {f["name"] for f in cgwctl_status(lab, as_json=True).get("system", [])}


def test_forwarding_off_and_strict_rp_filter_are_reported_and_cleared(lab_factory):
    lab = lab_factory()
    proc = start_cgwd(lab, import_config(lab))
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 45, interval=0.3, what="tunnels up")
    st = cgwctl_status(lab, as_json=True)
    ifname = st["tunnels"][0]["ifname"]
    # what cgwd owns: its interfaces' reverse-path filter is loose from the start
    rp = lab.cgw.run(["sysctl", "-n", f"net.ipv4.conf.{ifname}.rp_filter"]).stdout.strip()
    assert rp == "2", rp
    assert _problems(lab) == set(), st.get("system")
    # what the box lacks: forwarding switched off, a strict filter set back by someone else
    lab.cgw.run(["sysctl", "-w", "net.ipv4.ip_forward=0"])
    lab.cgw.run(["sysctl", "-w", "net.ipv4.conf.all.rp_filter=1"])
    lab.cgw.run(["sysctl", "-w", f"net.ipv4.conf.{ifname}.rp_filter=1"])
    try:
        assert {"ip_forward_off", "rp_filter_strict"} <= _problems(lab)
        screen = format_status(cgwctl_status(lab, as_json=True))
        assert "This box lacks:" in screen and "sysctl -w net.ipv4.ip_forward=1" in screen
    finally:
        lab.cgw.run(["sysctl", "-w", "net.ipv4.ip_forward=1"])
        lab.cgw.run(["sysctl", "-w", f"net.ipv4.conf.{ifname}.rp_filter=2"])
    assert _problems(lab) == set()
    assert proc.poll() is None
