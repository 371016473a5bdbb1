"""Two cgwd boxes with real keepalived (Debian's package) on one LAN: the virtual address
the on-prem host routes through sits on the box whose tunnels are up; SIGKILL that box's
cgwd and cut its links, and the address moves to the other box and on-prem -> VPC traffic
resumes through it (the gap measured and printed); the box returns and nothing flaps
(``failback = "none"``: both boxes BACKUP with ``nopreempt``, the survivor keeps the role).

Each box has its own VPN connection: four AWS endpoints (strongSwan + BIRD), as
:mod:`cgwd.lab.topology` builds them (:mod:`cgwd.lab.pair`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from cgwd.lab.netns import wait_for
from cgwd.lab.pair import PairLab, PairSpec
from labenv import tear_down_labs

pytestmark = pytest.mark.interop

_counter = itertools.count(1)


def pair_skip_reason() -> str | None:
    from cgwd.lab.bird import bird_available
    from cgwd.lab.strongswan import charon_available

    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "ping", "keepalived"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return charon_available() or bird_available()


@pytest.fixture
def pair_factory(request):
    reason = pair_skip_reason()
    if reason:
        pytest.skip(reason)
    labs: list[PairLab] = []

    def make(**kw) -> PairLab:
        lab = PairLab(PairSpec(prefix=f"ha{os.getpid() % 1000}x{next(_counter)}", **kw))
        labs.append(lab)
        lab.up()
        return lab

    yield make
    tear_down_labs(request, labs)


class Pinger:
    """``ping -D`` from the on-prem host to the VPC host every 0.1 s; reply times kept."""

    def __init__(self, lab: PairLab):
        self.replies: list[float] = []
        self.proc = subprocess.Popen(
            lab.onprem.cmd(["ping", "-D", "-n", "-i", "0.1", "-W", "1", lab.spec.vpc_host]),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            m = re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)
            if m:
                self.replies.append(float(m.group(1)))

    def replies_after(self, t: float) -> int:
        return sum(1 for r in self.replies if r > t)

    def gap_around(self, t: float) -> float:
        """Seconds from the last reply before ``t`` to the first one after it."""
        before = [r for r in self.replies if r <= t]
        after = [r for r in self.replies if r > t]
        return after[0] - before[-1] if before and after else float("inf")

    def longest_gap(self, start: float, end: float) -> float:
        inside = [r for r in self.replies if start <= r <= end]
        return max((b - a for a, b in zip(inside, inside[1:])), default=float("inf"))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def healthy(lab: PairLab, b) -> bool:
    return lab.health(b)[0] == 0


def start_pair(lab: PairLab) -> None:
    """Box 1's cgwd first, keepalived on both: the address goes to the box whose tunnels are
    up (box 2 stays in FAULT: its health says cgwd is not running); then box 2's cgwd."""
    b1, b2 = lab.boxes
    lab.start_cgwd(b1)
    wait_for(lambda: healthy(lab, b1), 90, interval=0.5, what="box 1: every tunnel up")
    lab.start_keepalived(b1)
    lab.start_keepalived(b2)
    wait_for(lambda: lab.vip_on() == [1], 60, interval=0.3, what="the virtual address on box 1")
    code, line = lab.health(b2)
    assert code == 2 and line.startswith("unavailable: cgwd is not running"), line
    lab.start_cgwd(b2)
    wait_for(lambda: healthy(lab, b2), 90, interval=0.5, what="box 2: every tunnel up")
    wait_for(lambda: lab.ha_state(b2).get("state") == "BACKUP", 60, interval=0.5, what="box 2 BACKUP")
    wait_for(lambda: lab.ha_state(b1).get("state") == "MASTER", 60, interval=0.5, what="box 1 MASTER recorded")
    assert lab.vip_on() == [1]


def test_vip_moves_to_the_survivor_and_stays_there(pair_factory):
    lab = pair_factory(failback="none")
    b1, b2 = lab.boxes
    start_pair(lab)
    lab.wait_ping(60)
    ping = Pinger(lab)
    try:
        wait_for(lambda: ping.replies_after(time.time()) or len(ping.replies) > 10, 20, what="pings flowing")
        via_before = lab.vpc_route_to_onprem()
        t_kill = time.time()
        lab.kill_cgwd(b1)
        lab.cut_links(b1)
        wait_for(lambda: lab.vip_on() == [2], 60, interval=0.1, what="the virtual address on box 2")
        t_vip = time.time()
        wait_for(lambda: ping.replies_after(t_vip) >= 5, 90, interval=0.2, what="pings through box 2")
        gap = ping.gap_around(t_kill)
        print(f"\nkeepalived failover: address on box 2 after {t_vip - t_kill:.1f} s; on-prem -> VPC pings "
              f"back after a gap of {gap:.1f} s (VPC's return route was via {via_before}, now via "
              f"{lab.vpc_route_to_onprem()})")
        assert lab.ha_state(b2)["state"] == "MASTER"
        master_transitions = lab.ha_state(b2)["transitions"]

        # the box returns: links up, cgwd restarted; it must not take the address back
        t_back = time.time()
        lab.cut_links(b1, up=True)
        lab.start_cgwd(b1)
        wait_for(lambda: healthy(lab, b1), 90, interval=0.5, what="box 1's tunnels up again")
        wait_for(lambda: lab.ha_state(b1).get("state") == "BACKUP" and lab.ha_state(b1).get("since", 0) > t_back,
                 60, interval=0.5, what="box 1 back as BACKUP")
        # five more advertisement intervals with both boxes healthy: the role stays where it is
        time.sleep(5)
        t_end = time.time()
        assert lab.vip_on() == [2]
        assert lab.ha_state(b2)["state"] == "MASTER" and lab.ha_state(b2)["transitions"] == master_transitions
        with open(os.path.join(b2.workdir, "keepalived.log")) as f:
            log = f.read()
        after_master = log[log.rindex("Entering MASTER STATE"):]
        assert "Entering BACKUP STATE" not in after_master and "Entering FAULT STATE" not in after_master
        print(f"box 1 returned (BACKUP after {lab.ha_state(b1)['since'] - t_back:.1f} s): address stayed on "
              f"box 2; longest gap between pings while it returned {ping.longest_gap(t_back, t_end):.1f} s")
    finally:
        ping.stop()
