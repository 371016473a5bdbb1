"""A flapping endpoint must not flap a static VPN connection's routes: 20 short outages of
tunnel 1's endpoint in the lab, the kernel's route to the VPC watched by `ip monitor route`
(every change, with the kernel's timestamps, not samples).

* Outages shorter than the DPD window (2 s against DPD 2 s x 3, dead after about 8 s of
  silence): nothing is declared dead, the route never moves.
* Outages that DPD does detect (1 s x 2), each followed by a return shorter than the
  hold-down: the route moves to tunnel 2 at the first outage, stays there through the other
  19 returns (each held down) and moves back once, after the last return has lasted the
  hold-down. Traffic crosses on tunnel 2 all the while (AWS answers on tunnel 2 too).

The figures (pings lost, the flapping's length) are printed with ``-s``, never asserted.
"""

from __future__ import annotations

import os
import time

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for
from test_static_lab import (Pinger, RouteMonitor, count_plaintext, cut, mend, moves, plaintext, set_options,
                             static_state, via)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

OUTAGES = 20


def _lab(lab_factory, **keys):
    lab = lab_factory(static=True)
    count_plaintext(lab)
    config = import_config(lab)
    set_options(config, **keys)
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5, what="both tunnels, static routes")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    assert via(lab) == lab.tunnels[0].aws_inside
    wait_for(lambda: lab.aws_return_via == "aws2", 20, what="AWS's side to route on-prem via tunnel 2")
    lab.wait_ping(20)
    return lab, proc


def _tunnel1(lab) -> dict:
    return cgwctl_status(lab, as_json=True)["tunnels"][0]


def _finish(lab, proc) -> None:
    assert plaintext(lab) == 0, "plaintext for the VPC left the gateway"
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log
    assert proc.poll() is None


def test_outages_shorter_than_the_dpd_window_do_not_move_the_routes(lab_factory):
    lab, proc = _lab(lab_factory, static_hold_down=10, dpd_interval=2, dpd_retries=3)
    t1 = lab.tunnels[0]
    before = _tunnel1(lab)
    routes = RouteMonitor(lab)
    pinger = Pinger(lab)
    time.sleep(2)
    t0 = time.time()
    try:
        for _ in range(OUTAGES):
            cut(lab, t1)
            time.sleep(2)
            mend(lab, t1)
            time.sleep(3)
        time.sleep(2)
    finally:
        pinger.stop()
        routes.stop()
    after = _tunnel1(lab)
    assert routes.changes() == [], f"the route moved: {routes.changes()}"
    assert via(lab) == t1.aws_inside
    assert after["static"]["state"] == "up" and after["static"]["counters"]["downs"] == 0
    assert after["ike"]["counters"].get("dpd_dead", 0) == before["ike"]["counters"].get("dpd_dead", 0) == 0
    assert after["ipsec"]["sas"][0]["spi_in"] == before["ipsec"]["sas"][0]["spi_in"], "the SA was renegotiated"
    lost, _ = pinger.outage_after(t0)
    print(f"\n{OUTAGES} outages of 2 s (DPD 2 s x 3): the route never moved; {lost} of {pinger.sent()} pings lost "
          f"(sent into tunnel 1 during the outages, as DPD had not declared it dead); "
          f"DPD R-U-THERE sent {after['ike']['counters'].get('dpd_sent', 0)}")
    _finish(lab, proc)


def test_a_tunnel_that_dies_and_returns_20_times_moves_the_routes_once_and_back_once(lab_factory):
    hold = 30
    lab, proc = _lab(lab_factory, static_hold_down=hold, dpd_interval=1, dpd_retries=2)
    t1, t2 = lab.tunnels
    routes = RouteMonitor(lab)
    pinger = Pinger(lab)
    time.sleep(2)
    t0 = time.time()
    try:
        for i in range(OUTAGES):
            cut(lab, t1)
            wait_for(lambda: static_state(lab, 0) == "down", 60, interval=0.1, what=f"outage {i + 1} detected")
            mend(lab, t1)
            wait_for(lambda: static_state(lab, 0) == "hold-down", 120, interval=0.1, what=f"tunnel 1 back ({i + 1})")
            assert via(lab) == t2.aws_inside, "the routes moved to a returning tunnel during its hold-down"
            time.sleep(1)
        t_last = time.time()
        wait_for(lambda: via(lab) == t1.aws_inside, hold + 60, interval=0.2, what="routes back on tunnel 1")
        time.sleep(1)
    finally:
        pinger.stop()
        routes.stop()
    t_end = time.time()
    assert moves(routes.changes()) == [t2.aws_inside, t1.aws_inside], f"the route flapped: {routes.changes()}"
    st = _tunnel1(lab)["static"]
    assert st["state"] == "up" and st["counters"]["downs"] == OUTAGES and st["counters"]["hold_downs"] == OUTAGES
    _, back = pinger.outage_after(t0)
    lost_first = pinger.lost_between(t0, back)
    lost_after = pinger.lost_between(back, t_end)
    print(f"\n{OUTAGES} outages detected by DPD (1 s x 2), each return shorter than the {hold} s hold-down: "
          f"the route moved to tunnel 2 once and back once, {t_end - t_last:.0f} s after the last return; "
          f"flapping {t_last - t0:.0f} s; pings lost: {lost_first} at the first outage (before DPD), "
          f"{lost_after} after it, of {pinger.sent()}")
    _finish(lab, proc)
