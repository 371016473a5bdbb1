"""The health check AWS advises for static VPNs (an ICMP echo to its inside address every
``health_check`` seconds), in the lab, when AWS's inside address stops answering while IKE
still does (its ICMP dropped in the AWS endpoint's namespace: DPD keeps saying alive).

Silence withdraws the tunnel's routes at once and counts as a death for IKE with the
tunnel's ``dpd_action``: ``restart`` renegotiates (a new IKE SA and SA pair at AWS), and when
the check stays unanswered on the new SAs they are kept (no renegotiation loop) with the
routes withdrawn; ``clear`` deletes the SAs and the tunnel stays down until `cgwctl up`;
``hold`` keeps the SAs. When the address answers again the routes return through the
hold-down.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re

import pytest

from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import run, wait_for
from cgwd.lab.strongswan import list_sas_parsed
from test_static_lab import count_plaintext, plaintext, set_options, static_state, via

pytestmark = pytest.mark.interop

HOLD_DOWN = 5


def _silence(t, on: bool) -> None:
    op = "-I" if on else "-D"
    t.ns.run(["iptables", op, "INPUT", "-p", "icmp", "-d", t.aws_inside, "-j", "DROP"])


def _t1(lab) -> dict:
    return cgwctl_status(lab, as_json=True)["tunnels"][0]


def _log(lab) -> str:
    return open(os.path.join(lab.workdir, "cgwd.log")).read()


@pytest.mark.parametrize("action", ["restart", "clear", "hold"])
def test_a_silent_health_check_acts_on_ike_with_the_dpd_action(lab_factory, action):
    lab = lab_factory(static=True)
    t1, t2 = lab.tunnels
    count_plaintext(lab)
    config = import_config(lab)
    set_options(config, static_hold_down=HOLD_DOWN, health_check=1, dpd_action=action)
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5, what="both tunnels, static routes")
    assert proc.poll() is None, _log(lab)[-3000:]
    wait_for(lambda: (_t1(lab)["static"]["health_check"] or {}).get("last_reply"), 20, what="a health-check reply")
    before = _t1(lab)
    name = before["name"]
    assert before["dpd"]["action"] == action and via(lab) == t1.aws_inside
    aws_ike_before = {sa.get("spi_i") for sa in list_sas_parsed(t1.charon.list_sas())}

    _silence(t1, True)
    wait_for(lambda: via(lab) == t2.aws_inside, 30, interval=0.2, what="routes to move off the silent tunnel")
    wait_for(lambda: f"tunnel={name} event=health-check-failed" in _log(lab), 10, what="the health check's verdict")
    if action == "restart":
        wait_for(lambda: static_state(lab, 0) == "silent", 60, interval=0.3,
                 what="the check silent again on the renegotiated SAs")
        log = _log(lab)
        assert re.search(rf"tunnel={name} event=tunnel-down reason=health check: .*IKE renegotiated", log)
        assert "still no reply since IKE was dealt with (dpd_action restart): SAs kept" in log
        after = _t1(lab)
        assert after["ike"]["state"] == "established" and after["ipsec"]["state"] == "installed"
        assert after["ipsec"]["sas"][-1]["spi_in"] != before["ipsec"]["sas"][-1]["spi_in"], "IKE not renegotiated"
        aws_ike_after = {sa.get("spi_i") for sa in list_sas_parsed(t1.charon.list_sas())}
        assert aws_ike_after and not aws_ike_after & aws_ike_before, "AWS still has the old IKE SA"
        assert log.count(f"tunnel={name} event=tunnel-down") == 1, "renegotiated more than once"
        assert after["dpd"]["outstanding"] <= before["dpd"]["retries"]
    elif action == "clear":
        wait_for(lambda: _t1(lab)["ike"]["state"] != "established", 20, what="the IKE SA deleted")
        after = _t1(lab)
        assert after["ipsec"]["state"] == "none" and after["static"]["state"] == "down"
        assert "dpd_action clear" in after["static"]["reason"] and "cgwctl up" in after["static"]["reason"]
        wait_for(lambda: not list_sas_parsed(t1.charon.list_sas()), 20, what="AWS's side to drop the SAs too")
    else:
        wait_for(lambda: static_state(lab, 0) == "silent", 20, interval=0.3, what="the check silent")
        after = _t1(lab)
        assert after["ipsec"]["sas"][-1]["spi_in"] == before["ipsec"]["sas"][-1]["spi_in"], "hold renegotiated"
        assert f"tunnel={name} event=tunnel-down" not in _log(lab)
    assert via(lab) == t2.aws_inside and lab.ping(3)

    # AWS's inside address answers again: the routes come back through the hold-down
    _silence(t1, False)
    if action == "clear":
        assert static_state(lab, 0) == "down"
        sock = os.path.join(lab.workdir, "cgwd.sock")
        r = run(cgwctl_command("up", name, "--socket", sock), check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: static_state(lab, 0) == "hold-down", 60, interval=0.2, what="tunnel 1 back, held down")
    wait_for(lambda: via(lab) == t1.aws_inside, HOLD_DOWN + 30, interval=0.2, what="routes back on tunnel 1")
    assert lab.ping(3)
    assert plaintext(lab) == 0, "plaintext for the VPC left the gateway"
    assert "Traceback" not in _log(lab)
    assert proc.poll() is None


HEALTH6 = r"""
import asyncio, json, sys
from cgwd.routing.static import HealthLost, StaticConfig, StaticRouteSource
from cgwd.routing.table import RoutingTable

async def main():
    rt = RoutingTable(threaded=False, static_routes=["fd00:100::/48"])
    seen = []
    src = StaticRouteSource("t1", rt, StaticConfig(("fd00:100::/48",), health_interval=0.2, health_misses=3),
                            local_address="fd00:10::2", remote_address="fd00:10::1", ifname="vx0",
                            on_event=lambda ev: seen.append(type(ev).__name__))
    rt.tunnel_up("t1", "vx0", "fd00:10::1", 0)
    await src.start()
    await asyncio.sleep(1.5)
    up = src.status()
    print(json.dumps({"up": {"state": up["state"], "replies": up["counters"]["replies"],
                             "error": up.get("health_check_error")},
                      "selected": sorted(rt.rib.selected)}), flush=True)
    sys.stdin.readline()                       # the test silences the peer now
    for _ in range(50):
        await asyncio.sleep(0.1)
        if src.status()["state"] == "silent":
            break
    st = src.status()
    print(json.dumps({"state": st["state"], "events": seen, "selected": sorted(rt.rib.selected),
                      "silences": st["counters"]["silences"]}), flush=True)
    await src.stop("test over")

asyncio.run(main())
"""


def test_the_health_check_speaks_icmpv6_to_an_ipv6_inside_address(tmp_path):
    """An IPv6 inside /126 (AWS's fd00::/8 ones): echo requests leave through the interface
    with the kernel's checksum, the peer's kernel answers, and its silence is seen. Two
    namespaces joined by a veth stand for the tunnel (the lab's tunnels are IPv4 inside)."""
    import subprocess
    import sys

    from cgwd.lab.netns import Netns, veth
    from labenv import interop_skip_reason

    if interop_skip_reason():
        pytest.skip(interop_skip_reason())
    tag = f"st{os.getpid() % 10000}"
    a, b = Netns(f"{tag}-h6a"), Netns(f"{tag}-h6b")
    try:
        a.create()
        b.create()
        for ns in (a, b):
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        veth(a, "vx0", None, b, "vx1", None)
        a.ip("-6 addr add fd00:10::2/126 dev vx0 nodad")
        b.ip("-6 addr add fd00:10::1/126 dev vx1 nodad")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proc = subprocess.Popen(a.cmd([sys.executable, "-c", HEALTH6]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=root)
        try:
            first = json.loads(proc.stdout.readline() or "{}")
            assert first.get("up", {}).get("state") == "up" and first["up"]["replies"] >= 3, (first, proc.stderr.read()
                                                                                             if proc.poll() is not None else "")
            assert first["selected"] == ["fd00:100::/48"] and not first["up"]["error"]
            b.run(["ip6tables", "-I", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-j", "DROP"])
            proc.stdin.write("go\n")
            proc.stdin.flush()
            second = json.loads(proc.stdout.readline() or "{}")
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert second["state"] == "silent" and "HealthLost" in second["events"], second
        assert second["selected"] == [] and second["silences"] == 1
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        for ns in (a, b):
            ns.delete()


def test_the_health_check_of_an_ipv6_vpn_connection_pings_its_ipv6_inside_address(lab_factory):
    """A static IPv6 VPN connection (TGW, inside /126s from fd00::/8, ECMP on both tunnels):
    the check's ICMPv6 echoes cross the tunnel to AWS's IPv6 inside address; when tunnel 1's
    stops answering only tunnel 2 carries the route, and tunnel 1 rejoins after the hold-down."""
    lab = lab_factory(static=True, ipv6=True)
    t1, t2 = lab.tunnels
    prefix = lab.spec.vpc_cidr6
    config = import_config(lab)
    set_options(config, static_hold_down=HOLD_DOWN, health_check=1, dpd_action="hold")
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5, what="both IPv6 tunnels, static routes")
    assert proc.poll() is None, _log(lab)[-3000:]

    def carriers() -> list[str]:
        return cgwctl_status(lab, as_json=True)["vpns"][0]["static"][0]["tunnels"]

    st = cgwctl_status(lab, as_json=True)
    names = [t["name"] for t in st["tunnels"]]
    assert st["vpns"][0]["static"][0]["prefix"] == prefix and carriers() == names   # ECMP (TGW)
    wait_for(lambda: all((t["static"]["health_check"] or {}).get("last_reply")
                         for t in cgwctl_status(lab, as_json=True)["tunnels"]), 20, what="ICMPv6 replies on both")
    assert ipaddress.ip_address(t1.aws_inside).version == 6
    wait_for(lambda: lab.ping(2, dst=lab.spec.vpc_host6, timeout=1), 30, interval=0.5, what="an IPv6 ping to the VPC")
    t1.ns.run(["ip6tables", "-I", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-d", t1.aws_inside,
               "-j", "DROP"])
    wait_for(lambda: carriers() == [names[1]], 30, interval=0.3, what="tunnel 2 alone to carry the IPv6 route")
    assert static_state(lab, 0) == "silent" and f"tunnel={names[0]} event=health-check-failed" in _log(lab)
    assert lab.ping(3, dst=lab.spec.vpc_host6)
    t1.ns.run(["ip6tables", "-D", "INPUT", "-p", "ipv6-icmp", "--icmpv6-type", "echo-request", "-d", t1.aws_inside,
               "-j", "DROP"])
    wait_for(lambda: carriers() == names, HOLD_DOWN + 30, interval=0.3, what="tunnel 1 back in the ECMP route")
    assert "Traceback" not in _log(lab)
    assert proc.poll() is None
