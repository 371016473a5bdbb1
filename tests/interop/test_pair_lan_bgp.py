"""A gateway pair over LAN BGP (issue 17): two cgwd boxes, each its own VPN connection (two
tunnels to strongSwan + BIRD endpoints), and a real on-prem router (AS 65010, in the lab's
``lan`` namespace) peering with both over eBGP; the on-prem host sits behind it. The router is
a parameter: BIRD (``merge paths``) or FRR (zebra + bgpd + bfdd, ``maximum-paths 2``).

Active/standby: box 1 announces plainly, box 2 with ``prepend = 2`` on its VPN (towards AWS)
and on its ``[[lan_neighbor]]`` (towards the router). Checked in the real peers and kernels:

* the router routes the VPC via box 1 only, AWS's side prefers box 1's tunnels for the
  on-prem prefix (box 2's paths carry the prepends) and the ESP counters of ``cgwctl status``
  show box 1's tunnels carrying a ping burst, box 2's not;
* box 1 vanishes (its LAN and WAN links down, then SIGKILL): traffic resumes through box 2 in both
  directions; the router's switch time (the LAN session's hold time: 9 s) and the ping gap
  are printed;
* box 1 returns: traffic goes back to it, box 2's sessions (LAN and AWS) do not flap; the
  second gap is printed;
* active/active: box 2 reloaded without prepends (in place, its sessions kept): the router
  has an ECMP route via both boxes and AWS's side sees all four paths as equal.

BFD: ``bfd`` is a parameter; with ``bfd = true`` on both boxes and the router's BFD (BIRD's
``bfd on``, FRR's ``neighbor X bfd``: bfdd's 300 ms x 3) the router's switch must be well under a
second.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shutil
import time

import pytest

from cgwd.lab.cli import cgwctl_command
from cgwd.lab.netns import run, wait_for
from cgwd.lab.pair import PairSpec
from cgwd.lab.frr import frr_available
from cgwd.lab.pair_lan import ACTIVE, IMPORT, ONPREM_NET, STANDBY, PairLanLab
from faultlab import Pinger, gaps
from labenv import tear_down_labs

pytestmark = pytest.mark.interop

_counter = itertools.count(1)
LAN_HOLD = 9
PING_INTERVAL = 0.1


def _skip_reason() -> str | None:
    from cgwd.lab.bird import bird_available
    from cgwd.lab.strongswan import charon_available

    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return charon_available() or bird_available()


def _bfd_supported() -> bool:
    from cgwd.lan.config import LAN_KEYS
    return "bfd" in LAN_KEYS


@pytest.fixture
def pairlan(request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    labs: list[PairLanLab] = []

    def make(**kw) -> PairLanLab:
        prefix = os.environ.get("CGWD_LAB_PREFIX", "pl") + f"{os.getpid() % 1000}x{next(_counter)}"
        lab = PairLanLab(PairSpec(prefix=prefix), router_hold=LAN_HOLD, **kw)
        labs.append(lab)
        lab.up()
        return lab

    yield make
    tear_down_labs(request, labs)


def status(b) -> dict:
    proc = run(cgwctl_command("status", "--socket", b.socket, "--json"), check=False, timeout=15)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def esp(b) -> tuple[int, int]:
    """(packets out, packets in) over the box's tunnels: its ESP counters in cgwctl status."""
    ts = status(b).get("tunnels") or []
    return (sum(t["ipsec"]["packets_out"] for t in ts), sum(t["ipsec"]["packets_in"] for t in ts))


def box_ready(lab, b) -> bool:
    st = status(b)
    ts = st.get("tunnels") or []
    lan = (st.get("lan") or {}).get("neighbors") or []
    return (len(ts) == 2 and all(t["ipsec"]["state"] == "installed" and t["bgp"]["state"] == "established" for t in ts)
            and len(lan) == 1 and lan[0]["state"] == "established" and lan[0]["received"] == [ONPREM_NET])


def vpc_paths(lab) -> dict[str, str]:
    """The VPC side's BGP paths to the on-prem prefix: {aws endpoint protocol: AS path}."""
    out = lab.vpc_bird.birdc("show", "route", ONPREM_NET, "all")
    found, cur = {}, None
    for line in out.splitlines():
        m = re.search(r"\[(aws\d)\b", line)
        if m:
            cur = m.group(1)
        m = re.search(r"BGP\.as_path:\s*(.*)$", line)
        if m and cur:
            found[cur] = m.group(1).strip()
    return found


def vpc_via(lab) -> set[int]:
    """Which AWS endpoints (1-4) the VPC's kernel sends on-prem traffic to now."""
    out = lab.vpc.ip(f"route show {ONPREM_NET}", check=False).stdout
    return {t.index for t in lab.tunnels if re.search(rf"via {re.escape(t.transit_aws)}\b", out)}


def lan_since(b) -> float | None:
    lan = (status(b).get("lan") or {}).get("neighbors") or [{}]
    return lan[0].get("uptime_since")


def aws_since(b) -> list:
    return [t["bgp"].get("uptime_since") for t in status(b).get("tunnels") or []]


def same_since(a, b) -> bool:
    """Session start times as status shows them (wall time from the monotonic clock: equal
    within rounding); None (down) never matches."""
    a, b = (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])
    return len(a) == len(b) and all(x is not None and y is not None and abs(x - y) < 0.5 for x, y in zip(a, b))


def ping_ok(lab, count: int = 3) -> bool:
    p = lab.onprem.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", lab.spec.vpc_host],
                       check=False, timeout=20)
    return " 0% packet loss" in p.stdout


def carried_by(lab, count: int = 40) -> tuple[tuple[int, int], tuple[int, int]]:
    """A ping burst of ``count``: each box's ESP (out, in) packets meanwhile."""
    b1, b2 = lab.boxes
    s1, s2 = esp(b1), esp(b2)
    p = lab.onprem.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.02", "-W", "1", lab.spec.vpc_host],
                       check=False, timeout=30)
    m = re.search(r"(\d+) received", p.stdout)
    assert m and int(m.group(1)) >= count - 2, p.stdout     # a userspace data path on 2 busy cores
    e1, e2 = esp(b1), esp(b2)
    return (e1[0] - s1[0], e1[1] - s1[1]), (e2[0] - s2[0], e2[1] - s2[1])


def longest_gap(pinger: Pinger) -> float:
    r = pinger.stop()
    return max((g for _t, g in gaps(r["lost_at"], PING_INTERVAL)), default=0.0)


@pytest.mark.parametrize("bfd", [False, True], ids=["hold", "bfd"])
@pytest.mark.parametrize("router", ["bird", "frr"])
def test_active_standby_fails_over_and_back_then_active_active(pairlan, router, bfd):
    if bfd and not _bfd_supported():
        pytest.skip("needs [[lan_neighbor]] bfd (branch bfd): then the router switches in well under the hold time")
    if router == "frr" and frr_available(bfd=bfd):
        pytest.skip(frr_available(bfd=bfd))
    lab = pairlan(router=router)
    b1, b2 = lab.boxes
    extra = "bfd = true" if bfd else ""
    lab.start_router(bfd=bfd)
    lab.write_config(b1, dataclasses.replace(ACTIVE, extra=extra))
    lab.write_config(b2, dataclasses.replace(STANDBY, extra=extra))
    lab.start_cgwd(b1)
    lab.start_cgwd(b2)
    for b in (b1, b2):
        wait_for(lambda: b.cgwd.poll() is not None or box_ready(lab, b), 60, interval=0.5,
                 what=f"box {b.index}: tunnels, AWS BGP and the LAN session up")
        assert b.cgwd.poll() is None, open(os.path.join(b.workdir, "cgwd.log")).read()[-3000:]

    # the router prefers box 1 (box 2's path is prepended twice); AWS's side too
    wait_for(lambda: lab.router_next_hops() == {b1.lan}, 30, interval=0.3, what="the router's VPC route via box 1")
    # as_path = "aws" (the default): box 1's path is "65000 64512", box 2's prepended one this
    aws = lab.spec.aws_asn
    assert lab.router_as_paths() == [f"65000 {aws}", f"65000 65000 65000 {aws}"], lab.router_as_paths()
    wait_for(lambda: len(vpc_paths(lab)) == 4, 30, interval=0.5, what="the VPC side to learn the on-prem prefix 4 times")
    paths = vpc_paths(lab)
    assert paths == {"aws1": "65000", "aws2": "65000",
                     "aws3": "65000 65000 65000", "aws4": "65000 65000 65000"}, paths
    assert vpc_via(lab) <= {1, 2} and vpc_via(lab), lab.vpc.ip(f"route show {ONPREM_NET}").stdout
    st = status(b2)["lan"]["neighbors"][0]
    assert (st["prepend"], st["med"], st["import"]) == (2, None, [IMPORT]), "read back"

    # which box carries the traffic: box 1's ESP counters, not box 2's
    wait_for(lambda: ping_ok(lab), 30, interval=0.5, what="on-prem -> VPC and back")
    (o1, i1), (o2, i2) = carried_by(lab)
    print(f"\nactive/standby: box 1 ESP out/in {o1}/{i1}, box 2 {o2}/{i2} during 40 pings")
    assert o1 >= 38 and i1 >= 38 and o2 < 20 and i2 < 20

    # box 1 vanishes: its links cut, then SIGKILL (the other way round the kernel's FIN for
    # the dead process's sockets tells the router at once: a power loss sends nothing)
    pinger = Pinger(lab, lab.onprem, lab.spec.vpc_host, interval=PING_INTERVAL, name="failover")
    lab.watch_router_routes()
    time.sleep(1)
    t0 = time.time()
    lab.cut_links(b1)
    lab.kill_cgwd(b1)
    wait_for(lambda: lab.router_next_hops() == {b2.lan}, LAN_HOLD + 10, interval=0.1,
             what="the router's VPC route via box 2")
    polled = time.time() - t0
    changes = [t for t in lab.router_route_changes() if t >= t0]
    switch = changes[0] - t0 if changes else polled      # the kernel's own time of the change
    why = lab.router_last_error(1)
    wait_for(lambda: vpc_via(lab) <= {3, 4} and vpc_via(lab), 30, interval=0.2, what="the VPC's route via box 2")
    wait_for(lambda: pinger.proc.poll() is None and ping_ok(lab), 30, interval=0.5, what="traffic through box 2")
    time.sleep(1)
    gap1 = longest_gap(pinger)
    print(f"failover: router switched after {switch:.2f} s (ip monitor; polled {polled:.2f} s; "
          f"LAN hold {LAN_HOLD} s{', BFD' if bfd else ''}), "
          f"ping gap {gap1:.1f} s (AWS side hold {lab.pair.aws['hold_time']} s); "
          f"the router ({router}): {why}")
    if bfd:
        assert switch < 1.5, switch
    else:
        assert 2 < switch < LAN_HOLD + 3, switch
    assert gap1 < max(LAN_HOLD, lab.pair.aws["hold_time"]) + 8, gap1
    (o1, i1), (o2, i2) = carried_by(lab)
    assert o2 >= 38 and i2 >= 38, (o2, i2)

    # box 1 returns: traffic goes back to it, box 2's sessions stay up
    lan2, aws2 = lan_since(b2), aws_since(b2)
    router_box2 = lab.router_session(2)
    pinger = Pinger(lab, lab.onprem, lab.spec.vpc_host, interval=PING_INTERVAL, name="failback")
    lab.cut_links(b1, up=True)
    lab.start_cgwd(b1)
    wait_for(lambda: b1.cgwd.poll() is not None or box_ready(lab, b1), 60, interval=0.5, what="box 1 back")
    assert b1.cgwd.poll() is None, open(os.path.join(b1.workdir, "cgwd.log")).read()[-3000:]
    wait_for(lambda: lab.router_next_hops() == {b1.lan}, 30, interval=0.2, what="the router's VPC route via box 1 again")
    wait_for(lambda: vpc_via(lab) <= {1, 2} and vpc_via(lab), 30, interval=0.2, what="the VPC's route via box 1 again")
    time.sleep(1.5)
    gap2 = longest_gap(pinger)
    print(f"failback: ping gap {gap2:.1f} s")
    assert gap2 < 5, gap2
    assert same_since(lan_since(b2), lan2) and same_since(aws_since(b2), aws2), "box 2's sessions did not flap"
    assert lab.router_session(2) == router_box2, f"the router's session with box 2 kept ({router})"
    (o1, i1), (o2, i2) = carried_by(lab)
    assert o1 >= 38 and i1 >= 38 and o2 < 20 and i2 < 20, ((o1, i1), (o2, i2))

    # active/active: box 2 reloaded without prepends, in place
    lab.write_config(b2, dataclasses.replace(ACTIVE, extra=extra))
    r = run(cgwctl_command("--socket", b2.socket, "reload"), check=False, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: lab.router_next_hops() == {b1.lan, b2.lan}, 20, interval=0.2,
             what="the router's ECMP route via both boxes")
    wait_for(lambda: set(vpc_paths(lab).values()) == {"65000"} and len(vpc_paths(lab)) == 4, 20, interval=0.3,
             what="AWS's side: four equal paths")
    assert status(b2)["lan"]["neighbors"][0]["prepend"] == 0
    assert same_since(lan_since(b2), lan2) and same_since(aws_since(b2), aws2), "the reload kept box 2's sessions"
    print(f"active/active: router ({router}) " + " ".join(lab.router_route().split()))
    assert ping_ok(lab, 5)
    for b in (b1, b2):
        assert "Traceback" not in open(os.path.join(b.workdir, "cgwd.log")).read()
