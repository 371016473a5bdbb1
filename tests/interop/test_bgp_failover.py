"""Failover gap when the AWS endpoint carrying traffic dies silently (issue 5).

The lab (strongSwan + BIRD as two AWS endpoints) with both tunnels up; tunnel 1 carries
traffic in both directions (AWS's BIRD on endpoint 2 and cgwd's tunnel 2 prepend their
AS_PATH, so both cgwd and the VPC prefer tunnel 1). Then endpoint 1 goes silent: inside
its own namespace every packet on its outside interface is dropped (no IKE, no ESP, no
DELETE, no TCP RST), as when an endpoint or its path vanishes.

Per scenario the test measures, from that moment:
  * route_moved: cgwd's kernel route for the VPC CIDR leaves tunnel 1 for tunnel 2;
  * vpc_moved: the VPC's return route to on-prem moves to endpoint 2 (AWS's own decision,
    made by the lab's AWS side from its BGP hold timer, 30 s);
  * traffic: the first ping reply after the failure (a ping every 0.2 s runs throughout);
and which detector fired in cgwd first (DPD "peer-dead", or BGP "Hold timer expired").

Scenarios: AWS's defaults (DPD 10 s x 3, hold 30: the hold timer wins), a short DPD
(2 s x 3, hold 30), AWS's DPD with a hold time long enough for DPD to win (10 s x 3, hold
90), and hold timer only (DPD 300 s, longer than the hold time 30 s). test_cgwd_lab.py has the
short-DPD failover with the loss injected in the WAN and the tunnel's return; this file
adds the AWS defaults, the hold-timer case and the traffic gap in both directions.

The gaps are printed (and written to $CGWD_FAILOVER_REPORT when set); nothing asserts
on timing: the test asserts the route moves, the right detector fired, and traffic resumes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from cgwd.lab.cli import cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for
from cgwd.lab.topology import AwsTunnelSpec

pytestmark = pytest.mark.interop

SCENARIOS = {
    # name: (dpd_interval, dpd_retries, hold_time, expected detector)
    "aws-defaults": (10, 3, 30, None),          # whichever fires first is reported
    "dpd-2sx3": (2, 3, 30, "dpd"),
    # AWS's DPD (10 s x 3) can only be what detects the failure when the hold time is
    # longer than DPD's ~40 s: hold 90 on both sides (so AWS's side takes longer too)
    "dpd-10sx3-hold90": (10, 3, 90, "dpd"),
    "hold-timer": (300, 3, 30, "hold"),
}


def _set_tunnel_keys(text: str, per_tunnel: list[dict]) -> str:
    """Set keys in each [[vpn.tunnel]] table of a cgwd config (replacing any given)."""
    keys = {k for d in per_tunnel for k in d}
    text = "\n".join(line for line in text.splitlines()
                     if not any(re.match(rf"\s*{k}\s*=", line) for k in keys)) + "\n"
    parts = text.split("[[vpn.tunnel]]\n")
    assert len(parts) == len(per_tunnel) + 1, "expected one [[vpn.tunnel]] per tunnel"
    out = parts[0]
    for d, body in zip(per_tunnel, parts[1:]):
        out += "[[vpn.tunnel]]\n" + "".join(f"{k} = {v}\n" for k, v in d.items()) + body
    return out


class PingMonitor:
    """`ping -D` every 0.2 s from the on-prem host: wall-clock times of every reply."""

    def __init__(self, lab):
        self.proc = subprocess.Popen(
            lab.onprem.cmd(["ping", "-n", "-D", "-i", "0.2", "-W", "1", lab.spec.vpc_host]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.replies: list[float] = []
        import threading
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self):
        for line in self.proc.stdout:
            m = re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)
            if m:
                self.replies.append(float(m.group(1)))

    def first_reply_after(self, t: float) -> float | None:
        return next((r for r in self.replies if r > t), None)

    def last_reply_before(self, t: float) -> float | None:
        return next((r for r in reversed(self.replies) if r <= t), None)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_failover_gap(lab_factory, scenario):
    dpd_i, dpd_r, hold, expect = SCENARIOS[scenario]
    lab = lab_factory(tunnels=2, aws=[AwsTunnelSpec(hold_time=hold, keepalive=hold // 3),
                                      AwsTunnelSpec(hold_time=hold, keepalive=hold // 3,
                                                    as_path_prepend=2)])
    config = import_config(lab)
    common = {"dpd_interval": dpd_i, "dpd_retries": dpd_r, "hold_time": hold}
    with open(config) as f:
        text = _set_tunnel_keys(f.read(), [dict(common), dict(common, prepend=2)])
    with open(config, "w") as f:
        f.write(text)
    proc = start_cgwd(lab, config)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 90, interval=0.5,
             what="cgwd tunnels + BGP + VPC route")
    assert proc.poll() is None, open(log_path).read()[-3000:]
    victim, survivor = lab.tunnels
    # tunnel 1 carries traffic both ways: cgwd's route and the VPC's return route
    wait_for(lambda: "169.254.10.1" in lab.cgw_routes() and "dev cgw-" in lab.cgw_routes(), 30,
             what="cgwd's VPC route via tunnel 1")
    wait_for(lambda: lab.vpc_route_to_onprem() == "aws1", 60, interval=0.5,
             what="the VPC's return route via endpoint 1")
    lab.wait_ping(30)
    active_dev = re.search(r"dev (cgw-\S+)", lab.cgw_routes()).group(1)
    ping = PingMonitor(lab)
    try:
        wait_for(lambda: len(ping.replies) >= 5, 20, what="steady pings before the failure")
        with open(log_path) as f:
            log_offset = len(f.read())
        # endpoint 1 dies silently: everything on its outside interface dropped, both ways
        for chain, flag in (("INPUT", "-i"), ("OUTPUT", "-o"), ("FORWARD", "-i"), ("FORWARD", "-o")):
            victim.ns.run(["iptables", "-I", chain, flag, "wan0", "-j", "DROP"])
        t0 = time.time()
        moved = vpc_moved = None
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and (moved is None or vpc_moved is None
                                                or ping.first_reply_after(t0) is None):
            now = time.time()
            r = lab.cgw_routes()
            if moved is None and lab.spec.vpc_cidr in r and active_dev not in r:
                moved = now - t0
            if vpc_moved is None and lab.vpc_route_to_onprem() == "aws2":
                vpc_moved = now - t0
            time.sleep(0.1)
        first = ping.first_reply_after(t0)
        last = ping.last_reply_before(t0)
        with open(log_path) as f:
            log = f.read()[log_offset:]
    finally:
        ping.stop()
    assert moved is not None, f"the VPC route never left {active_dev}: {lab.cgw_routes()}"
    assert "169.254.20.1" in lab.cgw_routes(), lab.cgw_routes()
    assert vpc_moved is not None, "the VPC's return route never moved to endpoint 2"
    assert first is not None, "no ping crossed after the failure"
    assert lab.ping(3), "traffic over the surviving tunnel"

    # which detector fired first in cgwd
    m_dpd = re.search(r"tunnel=\S+ event=peer-dead", log)
    m_hold = re.search(r"tunnel=\S+ event=bgp-down reason=\S*[Hh]old timer", log)
    firsts = sorted((m.start(), name) for m, name in ((m_dpd, "dpd"), (m_hold, "hold")) if m)
    assert firsts, f"neither DPD nor the hold timer reported the failure:\n{log[-3000:]}"
    detector = firsts[0][1]
    if expect is not None:
        assert detector == expect, f"expected {expect} to detect the failure, log:\n{log[-3000:]}"
    result = {
        "scenario": scenario, "dpd": f"{dpd_i}s x {dpd_r}", "hold": hold, "detected_by": detector,
        "route_moved_s": round(moved, 1), "vpc_return_moved_s": round(vpc_moved, 1),
        "traffic_gap_s": round(first - (last or t0), 1), "traffic_back_after_s": round(first - t0, 1),
    }
    print(f"\nfailover gap: {json.dumps(result)}")
    out = os.environ.get("CGWD_FAILOVER_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(result) + "\n")
