"""Faults in the lab, each asserting what an operator would see (cgwctl status, routes, ping).

Not here because test_cgwd_lab.py has them: an endpoint that dies silently (DPD failover, route
move, the tunnel coming back by itself) and SIGKILL + restart cleanup.

Figures (detection, recovery, loss) are printed; nothing is asserted on timing beyond
generous deadlines (the machine is shared).
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from faultlab import (assert_no_secret, bring_up, config, log_text, ping_async, ping_result,
                      ping_stats, proc_stats, sa_identity, status)

from cgwd.control import ControlClient
from cgwd.lab.cli import cgwd_ready
from cgwd.lab.netns import wait_for

pytestmark = pytest.mark.interop


def _tunnel_ready(st: dict, name: str) -> bool:
    t = next((t for t in st.get("tunnels", []) if t["name"] == name), None)
    return bool(t) and t["ipsec"]["state"] == "installed" and t["bgp"]["state"] == "established"


def _restart_charon(lab, t) -> None:
    """The AWS endpoint crashes and restarts: no DELETE sent, a new charon with no memory of the
    SAs (BIRD keeps running)."""
    os.killpg(t.charon.proc.pid, signal.SIGKILL)
    t.charon.proc.wait(10)
    wait_for(lambda: "ipsec0" not in t.ns.ip("-o link show", check=False).stdout, 10, what="ipsec0 to go")
    t.charon.start()
    t.charon.load()
    t.ns.ip(f"addr add {t.aws_inside}/{t.inside.prefixlen} dev ipsec0")
    t.ns.ip("link set ipsec0 up")


def test_endpoint_restart_forgets_sas_and_cgwd_renegotiates(lab_factory):
    lab = lab_factory(tunnels=2)
    proc = bring_up(lab, config(lab, dpd_interval=2))
    lab.wait_ping(30)
    st0 = status(lab)
    victim = st0["tunnels"][0]
    spis0 = sorted(sa["spi_in"] for sa in victim["ipsec"]["sas"])
    pinger = ping_async(lab, 400, 0.25)  # traffic during the whole fault
    t0 = time.monotonic()
    _restart_charon(lab, lab.tunnels[0])
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


def _flush_conntrack(ns) -> None:
    import sys
    code = "from pyroute2 import Conntrack\nwith Conntrack() as c: c.flush()\n"
    ns.run([sys.executable, "-c", code], timeout=30)


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
    _flush_conntrack(lab.nat)
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
    drop_rst = ["OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP"]
    t.ns.run(["iptables", "-A", *drop_rst])
    t.bird.birdc("disable", "cgw")
    # cgwd reconnects; the disabled BIRD rejects; the RST never arrives
    wait_for(lambda: status(lab)["tunnels"][0]["bgp"]["state"] in ("opensent", "openconfirm"), 30,
             interval=0.2, what="cgwd's connection to sit in OpenSent")
    time.sleep(3)
    t.ns.run(["iptables", "-D", *drop_rst])
    t0 = time.monotonic()
    t.bird.birdc("enable", "cgw")
    wait_for(lambda: _tunnel_ready(status(lab), status(lab)["tunnels"][0]["name"]) and t.bird.established("cgw"),
             90, interval=0.5, what="BGP back (without keepalive probes: up to 240 s)")
    print(f"BGP back {time.monotonic() - t0:.1f}s after BIRD was enabled again")
    assert proc.poll() is None
