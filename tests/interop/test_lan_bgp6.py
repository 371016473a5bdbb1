"""LAN-side BGP over IPv6 (issue 17) against a real BIRD, on an IPv6 VPN lab.

The lab is test_ipv6_vpn's: two AWS endpoints (strongSwan + BIRD, one ``ipv6`` channel over
the /126 inside addresses), the VPC's 2001:db8:100::/56. The on-prem namespace runs BIRD (AS
65010, eBGP, TCP MD5, ``bfd on`` + a bfd protocol) peering from 2001:db8:200::10 with cgwd's
LAN address 2001:db8:200::1 (one ``ipv6`` channel). BIRD announces 2001:db8:201:1::/64
(cgwd's import filter allows 2001:db8:201::/48 le 64) and 2001:db8:202::/64 (not allowed).
Checked in the real peers and the kernels:

* BIRD learns the VPC's IPv6 prefix with a 32-octet next hop (RFC 2545 3: cgwd's global LAN
  address, then the link-local address of cgwd's interface on the shared link), the MED
  configured (``med = 50``), and installs it in its kernel via cgwd on eth0 (BIRD 2.0.12
  picks the global half as the gateway);
* the allowed prefix reaches both AWS endpoints' BIRD and the VPC's, the denied one does not;
  cgwd routes the allowed one to the router (protocol 157); ping6 from an address of the
  allowed prefix to the VPC host, and from the VPC host back to it;
* BFD over IPv6 is Up at both ends (``birdc show bfd sessions``, ``cgwctl status --json``);
* a reload changing ``med`` 50 -> 70 applies in place (same session: no new OPEN, same
  uptime) and BIRD sees MED 70;
* both AWS endpoints die: BIRD loses the VPC prefix, the LAN session and BFD stay Up;
* the router's BFD packets are dropped (nft in its namespace): cgwd declares BFD Down within
  the 900 ms detection time and closes BGP.

The FRR variant (zebra + bgpd + bfdd, cgwd.lab.frr; eBGP over IPv6, MD5, ``neighbor X bfd``):
FRR sees both halves of the next hop and zebra installs the VPC's prefix via cgwd's link-local
address (FRR's choice for a directly connected IPv6 peer: the half cgwd did not send before
RFC 2545's link-local was added), with the MED; BFD Up at both ends; its allowed prefix
reaches AWS (the denied one does not) and ping6 from it reaches the VPC; cgwd's shutdown
takes the VPC prefix away.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from cgwd.lab.bird import BgpNeighbor, Bird, BirdConfig
from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, start_cgwd
from cgwd.lab.faults import kill_endpoint
from cgwd.lab.frr import Frr, FrrConfig, FrrNeighbor, frr_available
from cgwd.lab.netns import run, wait_for
from labenv import lan_config, silence_router_bfd, unsilence_router_bfd
from labenv import lan_neighbor as _neighbor
from test_ipv6_vpn import ping6_ok

pytestmark = pytest.mark.interop

ROUTER_AS = 65010
MD5 = "lan6-md5-Secret.42"
CGW_LAN6 = "2001:db8:200::1"           # the lab's address of cgwd on lan0 (topology: onprem_cidr6[1])
ALLOWED6, DENIED6 = "2001:db8:201:1::/64", "2001:db8:202::/64"
SOURCE6 = "2001:db8:201:1::10"         # an on-prem address inside the allowed prefix
MED, MED2 = 50, 70
BFD_MS, MULT = 300, 3


class _BfdBirdConfig(BirdConfig):
    def render(self) -> str:
        return super().render() + f"""
protocol bfd {{
  interface "*" {{ min rx interval {BFD_MS} ms; min tx interval {BFD_MS} ms; multiplier {MULT}; }};
}}
"""


def _config(lab) -> str:
    return lan_config(lab, remote_asn=ROUTER_AS, password=MD5, address=lab.spec.onprem_host6,
                      local_address=CGW_LAN6, import_filter="2001:db8:201::/48 le 64",
                      extra=f"med = {MED}\nbfd = true\nbfd_interval_ms = {BFD_MS}\nbfd_multiplier = {MULT}\n")


def _router(lab) -> Bird:
    nb = BgpNeighbor("cgw", lab.spec.onprem_host6, ROUTER_AS, CGW_LAN6, lab.spec.cgw_asn, family="ipv6",
                     export="where source = RTS_STATIC", import_="all", extra=f'password "{MD5}"; bfd on;')
    bird = Bird(lab.onprem, os.path.join(lab.workdir, "onprem-bird"), _BfdBirdConfig(
        router_id=lab.spec.onprem_host, static_routes6=[(ALLOWED6, "blackhole"), (DENIED6, "blackhole")],
        neighbors=[nb]))
    bird.start()
    lab.procs.append(bird.proc)
    return bird


def _link_local(ns, ifname: str) -> str:
    out = ns.ip(f"-6 -o addr show dev {ifname} scope link").stdout
    m = re.search(r"inet6 (fe80:[0-9a-f:]+)/64", out)
    assert m, out
    return m.group(1)


def _bird_bfd(bird: Bird) -> str:
    m = re.search(rf"^{re.escape(CGW_LAN6)}\s+\S+\s+(\w+)", bird.birdc("show", "bfd", "sessions"), re.M)
    return m.group(1) if m else ""


def _detail(bird: Bird, prefix: str) -> str:
    return bird.birdc("show", "route", prefix, "all")


def test_lan_bgp_over_ipv6_with_bird_bfd_med_and_the_vpc_ipv6_prefix(lab_factory):
    lab = lab_factory(ipv6=True)
    s = lab.spec
    lab.onprem.ip(f"-6 addr add {SOURCE6}/128 dev lo")
    cgw_ll = _link_local(lab.cgw, "lan0")
    router = _router(lab)
    config = _config(lab)
    proc = start_cgwd(lab, config)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.3, what="cgwd tunnels + BGP")
    assert proc.poll() is None, open(log_path).read()[-3000:]

    # BGP over IPv6 and BFD over IPv6 Up at both ends
    wait_for(lambda: router.established("cgw") and s.vpc_cidr6 in router.routes("cgw"), 60, interval=0.5,
             what="BIRD established over IPv6 with the VPC's IPv6 prefix")
    wait_for(lambda: _bird_bfd(router) == "Up" and _neighbor(lab).get("bfd", {}).get("state") == "up", 30,
             interval=0.3, what="BFD over IPv6 Up at both ends")
    proto = router.birdc("show", "protocols", "all", "cgw")
    assert "Channel ipv6" in proto and "Channel ipv4" not in proto, proto

    # the VPC's prefix: RFC 2545 next hop (global + link-local of lan0), the MED, in the kernel
    detail = _detail(router, s.vpc_cidr6)
    print(f"\nBIRD's route to {s.vpc_cidr6}:\n{detail}")
    assert re.search(rf"BGP\.next_hop: {re.escape(CGW_LAN6)} {re.escape(cgw_ll)}\s*$", detail, re.M), detail
    assert re.search(rf"BGP\.med: {MED}\s*$", detail, re.M), detail
    assert re.search(rf"BGP\.as_path: {s.cgw_asn} {s.aws_asn}\s*$", detail, re.M), detail
    kroute = wait_for(lambda: lab.onprem.ip(f"-6 route show {s.vpc_cidr6} proto bird", check=False).stdout.strip(),
                      20, interval=0.5, what="BIRD to install the VPC's prefix in its kernel")
    print(f"on-prem kernel: {kroute}")
    # BIRD 2.0.12 on a direct session gateways via the global half when there is one (the
    # link-local half is what a router without a global route to it would use): either is cgwd
    assert re.fullmatch(rf"{re.escape(s.vpc_cidr6)} via ({re.escape(CGW_LAN6)}|{re.escape(cgw_ll)}) dev eth0 .*",
                        kroute), kroute

    # the allowed prefix reaches AWS (both endpoints and the VPC), the denied one never
    for t in lab.tunnels:
        wait_for(lambda: ALLOWED6 in t.bird.routes("cgw"), 30, interval=0.5, what=f"aws{t.index} to learn {ALLOWED6}")
    wait_for(lambda: ALLOWED6 in lab.vpc_bird.routes(), 30, interval=0.5, what=f"the VPC to learn {ALLOWED6}")
    for t in lab.tunnels:
        got = t.bird.routes("cgw")
        assert DENIED6 not in got and s.onprem_cidr6 in got, got
    assert DENIED6 not in lab.vpc_bird.routes()
    routed = lab.cgw.ip(f"-6 route show {ALLOWED6}", check=False).stdout
    assert re.search(rf"^{re.escape(ALLOWED6)} via {re.escape(s.onprem_host6)} dev lan0 proto 157", routed, re.M), routed

    # ping6 from the allowed prefix to the VPC host, and from the VPC host to it
    wait_for(lambda: ping6_ok(lab.onprem, s.vpc_host6, 1, src=SOURCE6), 20, interval=0.5,
             what="ping6 from the allowed prefix to the VPC")
    assert ping6_ok(lab.onprem, s.vpc_host6, 3, src=SOURCE6)
    assert ping6_ok(lab.vpc, SOURCE6, 3, src=s.vpc_host6)

    n = _neighbor(lab)
    assert n["state"] == "established" and n["md5"] is True and n["address"] == s.onprem_host6
    assert n["received"] == [ALLOWED6] and list(n["refused"]) == [DENIED6]
    assert n["sent"] == [s.vpc_cidr6] and n["med"] == MED
    assert n["bfd"]["state"] == "up" and n["bfd"]["drops_total"] == 0, n["bfd"]
    st = cgwctl_status(lab, as_json=True)
    assert all(st["lan"]["to_aws"][t["name"]]["sent"] == [ALLOWED6] for t in st["tunnels"])
    text = cgwctl_status(lab)
    assert f"MED {MED}" in text and "BFD Up" in text, text
    assert n["next_hop"] == [CGW_LAN6, cgw_ll], n["next_hop"]
    assert f"(next hop {CGW_LAN6} {cgw_ll})" in text, text

    # med by reload: applied in place (no new OPEN, same uptime), BIRD sees the new MED
    opens, up_since = n["messages_in"]["open"], n["uptime_since"]
    with open(config) as f:
        body = f.read()
    assert body.count(f"med = {MED}\n") == 1
    with open(config, "w") as f:
        f.write(body.replace(f"med = {MED}\n", f"med = {MED2}\n"))
    r = run(cgwctl_command("reload", "--socket", f"{lab.workdir}/cgwd.sock"), check=False, timeout=30)
    assert r.returncode == 0 and "lan:core1 (med)" in r.stdout + r.stderr, r.stdout + r.stderr
    wait_for(lambda: re.search(rf"BGP\.med: {MED2}\s*$", _detail(router, s.vpc_cidr6), re.M), 30, interval=0.5,
             what=f"BIRD to see MED {MED2}")
    n = _neighbor(lab)
    assert n["med"] == MED2 and n["state"] == "established" and n["messages_in"]["open"] == opens, n
    assert abs(n["uptime_since"] - up_since) < 0.5, "the LAN session stays up"
    assert f"MED {MED2}" in cgwctl_status(lab)

    # both AWS endpoints die: the router loses the VPC's prefix, the LAN session and BFD stay
    t_kill = time.monotonic()
    for t in lab.tunnels:
        kill_endpoint(lab, t)
    wait_for(lambda: s.vpc_cidr6 not in router.routes("cgw"), 120, interval=0.5,
             what="the VPC's IPv6 prefix to be withdrawn from the LAN router")
    print(f"both endpoints dead -> BIRD lost the VPC's IPv6 prefix after {time.monotonic() - t_kill:.1f} s")
    assert router.established("cgw") and _bird_bfd(router) == "Up"
    n = _neighbor(lab)
    assert n["sent"] == [] and n["state"] == "established" and n["bfd"]["state"] == "up"

    # BFD over IPv6 detects: the router's BFD packets dropped in its namespace, cgwd declares
    # BFD Down within the detection time and closes BGP (hold timer: 30 s)
    took, n = silence_router_bfd(lab)
    print(f"IPv6 router silenced -> BFD Down + BGP closed in {took * 1000:.0f} ms (detection {BFD_MS * MULT} ms)")
    assert 0 < took <= BFD_MS * MULT / 1000 + 0.25, took
    assert n["bfd"]["last_down_diag"] == "control detection time expired" and n["state"] != "established"
    unsilence_router_bfd(lab)

    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    assert lab.cgw.ip("-6 route show proto 157", check=False).stdout.strip() == ""
    log = open(log_path).read()
    assert "Traceback" not in log and MD5 not in log and MD5 not in text


need_frr = pytest.mark.skipif(frr_available(bfd=True) is not None, reason=f"{frr_available(bfd=True)} (optional)")
FRR_ALLOWED6, FRR_SOURCE6 = "2001:db8:201:2::/64", "2001:db8:201:2::10"


@need_frr
def test_lan_bgp_over_ipv6_with_frr_routes_via_cgwds_link_local_address(lab_factory):
    lab = lab_factory(ipv6=True)
    s = lab.spec
    lab.onprem.ip(f"-6 addr add {FRR_SOURCE6}/128 dev lo")
    cgw_ll = _link_local(lab.cgw, "lan0")
    frr = Frr(lab.onprem, os.path.join(lab.workdir, "onprem-frr"), FrrConfig(
        router_id=s.onprem_host, asn=ROUTER_AS, networks=[FRR_ALLOWED6, DENIED6],
        neighbors=[FrrNeighbor(CGW_LAN6, s.cgw_asn, password=MD5, bfd=True)]), bfd=True)
    frr.start()
    lab.procs.extend(frr.procs.values())
    config = _config(lab)
    proc = start_cgwd(lab, config)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.3, what="cgwd tunnels + BGP")
    assert proc.poll() is None, open(log_path).read()[-3000:]

    path = wait_for(lambda: frr.best_path(s.vpc_cidr6), 60, interval=0.5, what="FRR to learn the VPC's IPv6 prefix")
    print(f"\nFRR's best path to {s.vpc_cidr6}: {path}")
    hops = {h.get("scope"): h.get("ip") for h in path.get("nexthops") or []}
    assert hops == {"global": CGW_LAN6, "link-local": cgw_ll}, path
    assert path.get("metric") == MED, path
    assert (path.get("aspath") or {}).get("string") == f"{s.cgw_asn} {s.aws_asn}", path
    kroute = wait_for(lambda: lab.onprem.ip(f"-6 route show {s.vpc_cidr6} proto bgp", check=False).stdout.strip(),
                      20, interval=0.5, what="zebra to install the VPC's prefix")
    print(f"on-prem kernel (zebra): {kroute}")
    assert re.fullmatch(rf"{re.escape(s.vpc_cidr6)} nhid \d+ via {re.escape(cgw_ll)} dev eth0 .*", kroute) or \
        re.fullmatch(rf"{re.escape(s.vpc_cidr6)} via {re.escape(cgw_ll)} dev eth0 .*", kroute), kroute

    wait_for(lambda: frr.bfd_peer(CGW_LAN6).get("status") == "up"
             and _neighbor(lab).get("bfd", {}).get("state") == "up", 30, interval=0.3,
             what="BFD over IPv6 Up at both ends (FRR's bfdd)")
    for t in lab.tunnels:
        wait_for(lambda: FRR_ALLOWED6 in t.bird.routes("cgw"), 30, interval=0.5,
                 what=f"aws{t.index} to learn {FRR_ALLOWED6}")
        assert DENIED6 not in t.bird.routes("cgw")
    wait_for(lambda: ping6_ok(lab.onprem, s.vpc_host6, 1, src=FRR_SOURCE6), 20, interval=0.5,
             what="ping6 from FRR's allowed prefix to the VPC")
    assert ping6_ok(lab.vpc, FRR_SOURCE6, 3, src=s.vpc_host6)
    n = _neighbor(lab)
    assert n["received"] == [FRR_ALLOWED6] and list(n["refused"]) == [DENIED6] and n["sent"] == [s.vpc_cidr6]

    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    wait_for(lambda: frr.best_path(s.vpc_cidr6) is None, 30, interval=0.5,
             what="FRR to lose the VPC's prefix when cgwd stops")
    log = open(log_path).read()
    assert "Traceback" not in log and MD5 not in log
