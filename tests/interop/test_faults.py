"""Faults in the lab, each asserting what an operator would see (cgwctl status, routes, ping).

Not here because test_cgwd_lab.py has them: an endpoint that dies silently (DPD failover, route
move, the tunnel coming back by itself) and SIGKILL + restart cleanup.

Figures (detection, recovery, loss) are printed; nothing is asserted on timing beyond
generous deadlines (the machine is shared).
"""

from __future__ import annotations

import os
import re
import time

import pytest
from faultlab import (Pinger, WallClock, assert_no_secret, bring_up, config, ctl, log_text, ping_async, ping_result,
                      ping_stats, proc_stats, sa_identity, status)

from cgwd.control import ControlClient
from cgwd.lab import faults
from cgwd.lab.cli import cgwd_ready
from cgwd.lab.netns import wait_for
from cgwd.lab.topology import AwsTunnelSpec

pytestmark = pytest.mark.interop


def _tunnel_ready(st: dict, name: str) -> bool:
    t = next((t for t in st.get("tunnels", []) if t["name"] == name), None)
    return bool(t) and t["ipsec"]["state"] == "installed" and t["bgp"]["state"] == "established"


def test_endpoint_restart_forgets_sas_and_cgwd_renegotiates(lab_factory):
    lab = lab_factory(tunnels=2)
    proc = bring_up(lab, config(lab, dpd_interval=2))
    lab.wait_ping(30)
    st0 = status(lab)
    victim = st0["tunnels"][0]
    spis0 = sorted(sa["spi_in"] for sa in victim["ipsec"]["sas"])
    pinger = ping_async(lab, 400, 0.25)  # traffic during the whole fault
    t0 = time.monotonic()
    faults.replace_endpoint(lab, lab.tunnels[0])  # crashes and restarts: no DELETE, SAs forgotten
    # cgwd notices (DPD: the new charon does not know the old IKE SA) and withdraws the routes
    wait_for(lambda: status(lab)["tunnels"][0]["ipsec"]["state"] == "none"
             or sorted(sa["spi_in"] for sa in status(lab)["tunnels"][0]["ipsec"]["sas"]) != spis0,
             60, interval=0.2, what="cgwd to notice the endpoint forgot its SAs")
    detected = time.monotonic() - t0
    wait_for(lambda: _tunnel_ready(status(lab), victim["name"]), 120, interval=0.5,
             what="the tunnel and its BGP session to come back")
    recovered = time.monotonic() - t0
    wait_for(lambda: lab.tunnels[0].charon.child_installed("vti") and lab.aws_bgp_established(1), 60,
             what="aws1 to see the new SAs and BGP")
    pinger.send_signal(2)
    sent, rcvd = ping_result(pinger)
    st1 = status(lab)
    new = sorted(sa["spi_in"] for sa in st1["tunnels"][0]["ipsec"]["sas"])
    print(f"endpoint restart: detected after {detected:.1f}s, tunnel + BGP back after {recovered:.1f}s; "
          f"ping through the VPN during the fault {rcvd}/{sent}; ike counters {st1['tunnels'][0]['ike']['counters']}")
    assert new and new != spis0
    assert st1["tunnels"][1]["bgp"]["state"] == "established", "the other tunnel must be untouched"
    # packets routed into the dead tunnel are lost until DPD declares it dead; afterwards all flow
    s2, r2 = ping_stats(lab, 20)
    print(f"endpoint restart: ping after recovery {r2}/{s2}")
    assert r2 == s2
    log = log_text(lab)
    assert "peer-dead" in log or "INITIAL-CONTACT" in log or "invalid" in log.lower()
    assert "Traceback" not in log
    assert proc.poll() is None
    lab.wait_ping(20)


def test_ten_percent_wan_loss(lab_factory):
    lab = lab_factory(tunnels=2)
    loss = ["-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"]
    lab.wan.run(["iptables", "-I", "FORWARD", *loss])
    t0 = time.monotonic()
    proc = bring_up(lab, config(lab), timeout=240)
    up = time.monotonic() - t0
    # more negotiations under loss: each tunnel down and up again, 10 times (about 180 IKE packets)
    client = ControlClient(os.path.join(lab.workdir, "cgwd.sock"))
    t1 = time.monotonic()
    for _ in range(10):
        for t in status(lab)["tunnels"]:
            client.request({"cmd": "down", "tunnel": t["name"]})
            client.request({"cmd": "up", "tunnel": t["name"]})
        wait_for(lambda: all(t["ipsec"]["state"] == "installed" for t in status(lab)["tunnels"]), 120,
                 interval=0.2, what="both tunnels' SAs under loss")
    wait_for(lambda: cgwd_ready(lab), 240, interval=0.5, what="both tunnels + BGP under loss")
    cycles = time.monotonic() - t1
    st0 = status(lab)
    ident0 = sa_identity(st0)
    sent, rcvd = ping_stats(lab, 300, 0.2)  # 60 s: > two BGP hold times' worth of keepalives
    st1 = status(lab)
    dropped = lab.wan.run(["iptables", "-L", "FORWARD", "-v", "-n", "-x"]).stdout.splitlines()[2].split()[0]
    retrans = sum(t["ike"]["counters"].get("retransmits", 0) for t in st1["tunnels"])
    print(f"10% WAN loss: both tunnels + BGP up after {up:.1f}s; 10 more down/up cycles in {cycles:.1f}s; "
          f"{retrans} IKE retransmissions in all; "
          f"ping {rcvd}/{sent} ({100 - 100 * rcvd / sent:.1f}% lost); WAN dropped {dropped} packets; "
          f"BGP still established: {[t['bgp']['state'] for t in st1['tunnels']]}")
    assert int(dropped) > 0, "the loss rule dropped nothing"
    assert retrans > 0, "11 negotiations of 2 tunnels under 10% loss without a single retransmission?"
    assert sa_identity(st1) == ident0, "a tunnel or BGP session flapped under 10% loss"
    assert all(t["bgp"]["state"] == "established" for t in st1["tunnels"])
    assert rcvd > 0.5 * sent
    assert proc.poll() is None


def _ports(list_sas: str) -> list[str]:
    return sorted(set(re.findall(r"203\.0\.113\.2\[\d+\]", list_sas)))


def test_nat_rebinding_is_followed(lab_factory):
    lab = lab_factory(tunnels=2, nat=True)
    proc = bring_up(lab, config(lab, dpd_interval=2))
    lab.wait_ping(30)
    seen = lab.tunnels[0].charon.list_sas()
    # The NAT router forgets its mappings and maps to another port range from now on.
    lab.nat.run(["iptables", "-t", "nat", "-R", "POSTROUTING", "1", "-o", "wan0", "-p", "udp", "-j",
                 "MASQUERADE", "--to-ports", "41000-41999"])
    lab.nat.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE"])
    pinger = ping_async(lab, 240, 0.25)
    t0 = time.monotonic()
    faults.flush_conntrack(lab.nat)
    # traffic resumes through the new mapping: AWS's side now talks to a port in the new range
    wait_for(lambda: all(re.search(r"203\.0\.113\.2\[41\d\d\d\]", t.charon.list_sas()) for t in lab.tunnels),
             90, interval=0.5, what="strongSwan to see cgwd's new NAT port")
    moved = time.monotonic() - t0
    wait_for(lambda: lab.ping(1, timeout=1), 60, interval=0.5, what="traffic after NAT rebinding")
    resumed = time.monotonic() - t0
    wait_for(lambda: cgwd_ready(lab), 90, what="both tunnels + BGP after NAT rebinding")
    pinger.send_signal(2)
    sent, rcvd = ping_result(pinger)
    st = status(lab)
    print(f"NAT rebinding: AWS side on the new port after {moved:.1f}s, traffic after {resumed:.1f}s, "
          f"ping during {rcvd}/{sent}; before: {_ports(seen)}; "
          f"after: {_ports(lab.tunnels[0].charon.list_sas())}")
    assert all(t["bgp"]["state"] == "established" for t in st["tunnels"])
    assert proc.poll() is None
    s, r = ping_stats(lab, 10)
    assert r == s


def test_hundred_flaps_leak_nothing(lab_factory):
    lab = lab_factory(tunnels=2)
    proc = bring_up(lab, config(lab))
    lab.wait_ping(30)
    client = ControlClient(os.path.join(lab.workdir, "cgwd.sock"))
    names = [t["name"] for t in status(lab)["tunnels"]]
    pid = int(status(lab)["pid"])

    def st():
        return client.request({"cmd": "status"})["status"]

    def flap():
        for n in names:
            assert client.request({"cmd": "down", "tunnel": n})["ok"]
        for n in names:
            assert client.request({"cmd": "up", "tunnel": n})["ok"]
        wait_for(lambda: all(t["ipsec"]["state"] == "installed" for t in st()["tunnels"]), 60, interval=0.05,
                 what="both tunnels' SAs after up")

    def settle():
        wait_for(lambda: cgwd_ready(lab), 120, interval=0.5, what="both tunnels + BGP")
        time.sleep(3)
        s = st()
        return {**proc_stats(pid), "tasks": s["process"]["asyncio_tasks"]}

    for _ in range(5):  # warm-up: caches, first-time allocations
        flap()
    before = settle()
    t0 = time.monotonic()
    for _ in range(100):
        flap()
    secs = time.monotonic() - t0
    after = settle()
    counters = st()["tunnels"][0]["ike"]["counters"]
    print(f"100 flaps of both tunnels in {secs:.0f}s: fds {before['fds']} -> {after['fds']}, asyncio tasks "
          f"{before['tasks']} -> {after['tasks']}, RSS {before['rss'] >> 10} -> {after['rss'] >> 10} KiB; "
          f"IKE counters tunnel 1 {counters}")
    assert after["fds"] <= before["fds"] + 1
    assert after["tasks"] <= before["tasks"] + 1
    assert after["rss"] - before["rss"] < 8 << 20
    lab.wait_ping(30)
    log = log_text(lab)
    assert "Traceback" not in log
    assert proc.poll() is None
    assert_no_secret(lab)


def test_bgp_recovers_when_the_peer_rejects_a_connection_and_its_reset_is_lost(lab_factory):
    """Seen under 10 % loss: BIRD rejects cgwd's connection (its protocol restarting), the RST is
    lost, cgwd's connection sits in OpenSent; every connection BIRD then opens loses the
    collision (cgwd's BGP identifier is higher) until the 240 s OpenSent hold runs out. TCP
    keepalive probes on cgwd's BGP sockets find the dead connection within seconds."""
    lab = lab_factory(tunnels=1)
    proc = bring_up(lab, config(lab))
    t = lab.tunnels[0]
    # the disabled BIRD closes each connection cgwd opens: with a RST when cgwd's OPEN was read
    # first, else with a FIN; neither reaches cgwd, so the connection sits in OpenSent
    # (the rules go in once cgwd has BIRD's Cease: cgwd waits its idle hold, 5 s, to reconnect)
    closes = [["OUTPUT", "-p", "tcp", "--tcp-flags", flag, flag, "-j", "DROP"] for flag in ("RST", "FIN")]
    t.bird.birdc("disable", "cgw")
    wait_for(lambda: status(lab)["tunnels"][0]["bgp"]["state"] != "established", 15, interval=0.1,
             what="cgwd to take BIRD's Cease")
    for rule in closes:
        t.ns.run(["iptables", "-A", *rule])
    wait_for(lambda: status(lab)["tunnels"][0]["bgp"]["state"] in ("opensent", "openconfirm"), 60,
             interval=0.2, what="cgwd's connection to sit in OpenSent")
    time.sleep(3)
    for rule in closes:
        t.ns.run(["iptables", "-D", *rule])
    t0 = time.monotonic()
    t.bird.birdc("enable", "cgw")
    wait_for(lambda: _tunnel_ready(status(lab), status(lab)["tunnels"][0]["name"]) and t.bird.established("cgw"),
             90, interval=0.5, what="BGP back (without keepalive probes: up to 240 s)")
    print(f"BGP back {time.monotonic() - t0:.1f}s after BIRD was enabled again")
    assert proc.poll() is None


def _deadlines(st: dict) -> dict:
    """Every timer the status shows, as seconds from the status's own "now", and every
    up-time as seconds before it: a wall-clock step must move none of them."""
    now = st["now"]
    out = {"daemon up": now - st["started_at"], "last reload up": now - st["last_reload"]["at"]}
    for t in st["tunnels"]:
        n = t["name"]
        out[f"{n} IKE up"] = now - t["ike"]["established_at"]
        out[f"{n} IKE rekey in"] = t["ike"]["rekey_at"] - now
        out[f"{n} BGP up"] = now - t["bgp"]["uptime_since"]
        for sa in t["ipsec"]["sas"]:
            out[f"{n} SA {sa['spi_in']} up"] = now - sa["established_at"]
            out[f"{n} SA {sa['spi_in']} rekey in"] = sa["rekey_at"] - now
    return out


def test_wall_clock_steps_change_nothing(lab_factory):
    """cgwd's wall clock jumps a day ahead, two days back, ten years ahead and back, while
    both tunnels (one IKEv1, one IKEv2) carry traffic: every timer runs on the monotonic
    clock, so no SA, DPD or BGP timer fires early or late, no tunnel flaps, no ping is lost,
    and the status's up-times and deadlines stay what the monotonic clock says (the machine's
    own clock is not touched: WallClock steps cgwd's time.time() alone)."""
    lab = lab_factory(tunnels=2, aws=[AwsTunnelSpec(), AwsTunnelSpec(ike_version=2)])
    clock = WallClock(lab)
    short = {"short_lifetimes": True, "esp_lifetime": 300, "rekey_margin": 60}
    proc = bring_up(lab, config(lab, dpd_interval=2, tunnels=[short, {**short, "ike_version": 2}]), env=clock.env)
    lab.wait_ping(30)
    assert ctl(lab, "reload").returncode == 0
    st0 = status(lab)
    assert [t["ike"]["version"] for t in st0["tunnels"]] == [1, 2]
    ident0 = sa_identity(st0)
    before = _deadlines(st0)
    t0 = time.monotonic()
    pinger = Pinger(lab, lab.onprem, lab.spec.vpc_host, interval=0.1, name="onprem-vpc")
    across = [Pinger(lab, lab.cgw, t.aws_inside, interval=0.2, src=t.cgw_inside, name=f"tunnel{t.index}")
              for t in lab.tunnels]
    steps = [86400.0, -2 * 86400.0, 10 * 365 * 86400.0, -10 * 365 * 86400.0 - 3600.0, 3600.0 + 86400.0]
    seen, moved = [], {}
    for s in steps:
        clock.step(s)
        time.sleep(5)  # more than two DPD intervals
        st = status(lab)
        elapsed = time.monotonic() - t0
        seen.append((clock.offset, st["now"] - time.time()))
        after = _deadlines(st)
        for k in before:  # what moved beyond the real time that passed
            if k in after and abs(d := after[k] - before[k] - (elapsed if k.endswith(" up") else -elapsed)) >= 2.0:
                moved.setdefault(k, []).append((round(clock.offset), round(d)))
    results = [p.stop() for p in (pinger, *across)]
    st1 = status(lab)
    counters = {t["name"]: t["ike"]["counters"] for t in st1["tunnels"]}
    print(f"wall clock steps {steps}: cgwd's clock offset/seen {[(round(a), round(b)) for a, b in seen]}; "
          f"pings {[(r['received'], r['sent']) for r in results]}; up-times/deadlines moved with the wall "
          f"clock (offset, seconds): {moved}; IKE counters {counters}")
    assert all(abs(b - a) < 60 for a, b in seen), "the fake wall clock did not reach cgwd"
    assert all(r["lost"] == 0 for r in results), results
    assert {k: v[0] for k, v in sa_identity(st1).items()} == {k: v[0] for k, v in ident0.items()}, "SAs changed"
    for t0_, t1_ in zip(st0["tunnels"], st1["tunnels"]):
        assert t1_["bgp"]["messages_in"]["open"] == t0_["bgp"]["messages_in"]["open"], "BGP was reset"
        for k in ("rekeys_ipsec", "rekeys_ike", "dpd_dead", "retransmits"):
            assert t1_["ike"]["counters"].get(k, 0) == t0_["ike"]["counters"].get(k, 0), (t1_["name"], k)
    assert not moved, f"up-times/deadlines moved with the wall clock: {moved}"
    log = log_text(lab)
    assert "Traceback" not in log
    assert proc.poll() is None
