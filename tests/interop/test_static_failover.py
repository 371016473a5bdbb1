"""A static VPN connection's failover on a silent endpoint death, measured in the lab.

Tunnel 1's endpoint vanishes (its packets dropped both ways on the WAN: no Delete, no ICMP),
with AWS's DPD defaults (10 s x 3), with 2 s x 3 (direct and behind NAT), and with the ICMP
health check AWS advises for static VPNs (every 1 s, DPD at AWS's defaults). The figures are printed (run with ``-s``):
when the detector said so in the log, when the kernel's route moved to tunnel 2
(`ip monitor route`), when pings from on-prem to the VPC came back and how many were lost;
then, when the endpoint returns, when the tunnel is back and when the routes move back (after
the hold-down). What is asserted is what detected the death (the log), that the route moved
once to tunnel 2 and back once after the hold-down, and that no plaintext left the gateway;
no time is asserted (the machine is shared: speed is measured, never asserted).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for
from test_static_lab import (LogWatch, Pinger, RouteMonitor, count_plaintext, cut, mend, moves, plaintext,
                             replace_gaps, set_options, static_state, via)

pytestmark = pytest.mark.interop

HOLD_DOWN = 15

# case -> (dpd_interval, dpd_retries, health_check, what must detect the death, behind NAT)
CASES = {
    "aws-dpd-defaults": (10, 3, None, "dpd", False),
    "dpd-2s": (2, 3, None, "dpd", False),
    "dpd-2s-behind-nat": (2, 3, None, "dpd", True),
    "health-check-1s": (10, 3, 1, "health", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_failover_on_a_silent_endpoint_death_measured(lab_factory, case, record_property):
    dpd_interval, dpd_retries, health, detector, nat = CASES[case]
    lab = lab_factory(static=True, nat=nat)
    t1, t2 = lab.tunnels
    count_plaintext(lab)
    config = import_config(lab)
    keys = {"static_hold_down": HOLD_DOWN, "dpd_interval": dpd_interval, "dpd_retries": dpd_retries}
    if health:
        keys["health_check"] = health
    set_options(config, **keys)
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5, what="both tunnels, static routes")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    st = cgwctl_status(lab, as_json=True)
    name1 = st["tunnels"][0]["name"]
    assert [t["dpd"]["interval"] for t in st["tunnels"]] == [dpd_interval] * 2
    assert bool(st["tunnels"][0]["static"]["health_check"]) == bool(health)
    assert via(lab) == t1.aws_inside
    wait_for(lambda: lab.aws_return_via == "aws2", 20, what="AWS's side to route on-prem via tunnel 2")
    lab.wait_ping(20)
    if health:
        wait_for(lambda: (cgwctl_status(lab, as_json=True)["tunnels"][0]["static"]["health_check"] or {})
                 .get("last_reply"), 20, what="a health-check reply on tunnel 1")

    watch = LogWatch(lab, {"dpd": rf"tunnel={name1} event=peer-dead",
                           "health": rf"tunnel={name1} event=health-check-failed",
                           "down": rf"tunnel={name1} event=tunnel-down"})
    routes = RouteMonitor(lab)
    pinger = Pinger(lab)
    try:
        time.sleep(2)
        t_cut = time.time()
        cut(lab, t1)
        wait_for(lambda: via(lab) == t2.aws_inside, 120, interval=0.1, what="the static route to move to tunnel 2")
        wait_for(lambda: pinger.outage_after(t_cut)[1], 30, interval=0.2, what="pings answered over tunnel 2")
        lost, back = pinger.outage_after(t_cut)
        moved = next(ts for ts, hop in routes.changes() if ts >= t_cut and hop == t2.aws_inside)
        # what detected it, from the log (the watch polls it: under load it may read the lines
        # after the route has moved)
        wait_for(lambda: detector in watch.seen and "down" in watch.seen, 10, interval=0.1,
                 what=f"{detector} detection and tunnel-down in the log")
        assert detector in watch.seen, f"no {detector} detection in the log: {watch.lines}"
        other = "health" if detector == "dpd" else "dpd"
        assert watch.seen.get(other, float("inf")) > watch.seen["down"], (
            f"{other} declared the death first: {watch.lines}")
        why = "DPD: peer dead" if detector == "dpd" else "health check: no echo reply"
        assert why in watch.lines["down"], watch.lines["down"]
        assert static_state(lab, 0) == "down"

        # the endpoint returns: tunnel 1 back at once, the routes only after the hold-down
        t_mend = time.time()
        mend(lab, t1)
        wait_for(lambda: static_state(lab, 0) in ("hold-down", "up"), 180, interval=0.2, what="tunnel 1 back")
        t_back = time.time()
        held = 0
        while static_state(lab, 0) == "hold-down":
            r = via(lab)
            if static_state(lab, 0) == "hold-down":
                assert r == t2.aws_inside, "routes moved to the returning tunnel during its hold-down"
                held += 1
        assert held >= 1, "the returning tunnel never went through its hold-down"
        wait_for(lambda: via(lab) == t1.aws_inside, 30, interval=0.1, what="routes back on tunnel 1")
        time.sleep(2)
    finally:
        pinger.stop()
        routes.stop()
        watch.stop()
    changes = [(ts, hop) for ts, hop in routes.changes() if ts >= t_cut]
    assert moves(changes) == [t2.aws_inside, t1.aws_inside], (
        f"the route moved other than once there and once back: {changes}")
    moved_back = next(ts for ts, hop in changes if hop == t1.aws_inside)
    lost_back = pinger.lost_between(moved_back - 1, moved_back + 1)
    assert plaintext(lab) == 0, "plaintext for the VPC left the gateway"
    figures = {
        "detected_by": detector, "detection_s": round(watch.seen[detector] - t_cut, 1),
        "route_moved_s": round(moved - t_cut, 2), "traffic_back_s": round(back - t_cut, 2),
        "pings_lost": lost, "tunnel_back_after_mend_s": round(t_back - t_mend, 1),
        "routes_back_after_tunnel_s": round(moved_back - t_back, 1), "pings_lost_moving_back": lost_back,
        "route_delete_add_gaps_ms": [round(g * 1000, 1) for g in replace_gaps(changes)],
    }
    for k, v in figures.items():
        record_property(k, v)
    print(f"\nstatic failover [{case}: DPD {dpd_interval}s x {dpd_retries}, health check "
          f"{f'every {health}s' if health else 'off'}, hold-down {HOLD_DOWN}s]: " +
          ", ".join(f"{k} {v}" for k, v in figures.items()))
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log
    assert proc.poll() is None
    if detector == "health":
        assert re.search(rf"tunnel={name1} event=tunnel-down reason=health check: .*IKE renegotiated", log)
