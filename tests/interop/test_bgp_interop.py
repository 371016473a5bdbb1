"""BGP interop over veths in network namespaces (bgpit-*): BIRD and GoBGP as AWS.

Needs root, iproute2, bird2 (and gobgpd for the 4-octet test).
"""
import os
import re
import shutil
import signal
import time

import pytest

from test_bgp_lab import Lab, nsexec, wait_for

pytestmark = [pytest.mark.interop]

if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces)", allow_module_level=True)
if not shutil.which("ip"):
    pytest.skip("iproute2 missing", allow_module_level=True)

need_bird = pytest.mark.skipif(not shutil.which("bird") or not shutil.which("birdc"),
                               reason="bird2 not installed")
need_gobgp = pytest.mark.skipif(not shutil.which("gobgpd") or not shutil.which("gobgp"),
                                reason="gobgpd not installed")


def established(lab, names=None):
    st = lab.status().get("sessions", {})
    names = names or list(st)
    return bool(st) and all(st[n]["state"] == "Established" for n in names)


def routes_via(lab):
    """prefix -> set of devices, for our protocol-157 routes."""
    out = {}
    prefix = None
    for line in lab.kernel_routes().splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():           # "PREFIX via GW dev X ..." or "PREFIX ... metric"
            prefix = line.split()[0]
            out.setdefault(prefix, set())
        # multipath: "\tnexthop via GW dev X weight 1" lines follow the prefix line
        out[prefix].update(re.findall(r"dev (\S+)", line))
    return out


@need_bird
def test_bird_two_tunnels_preference_failover_and_withdraw():
    with Lab("bird") as lab:
        lab.start_bird(0)
        lab.start_bird(1, prepend=2)           # tunnel 2 is the backup
        lab.start_cgwd(export=("192.168.50.0/24",))
        wait_for(lambda: established(lab), 40, what="both sessions Established")
        assert wait_for(lambda: lab.bird_established(0) and lab.bird_established(1), 10,
                        what="BIRD sees Established")
        # VPC prefix via the preferred (non-prepended) tunnel only
        wait_for(lambda: routes_via(lab).get("10.100.0.0/16") == {"bgpv1"}, 15,
                 what="10.100.0.0/16 via bgpv1")
        line = lab.kernel_routes()
        assert "via 169.254.10.1" in line and "metric 100" in line
        # on-prem prefix learned by both BIRDs, with our AS
        for i in (0, 1):
            wait_for(lambda: "192.168.50.0/24" in lab.birdc(i, "show", "route", "protocol", "cgw"),
                     10, what=f"BIRD {i} learned the on-prem prefix")
        assert "AS65000" in lab.birdc(0, "show", "route", "all", "protocol", "cgw")
        st = wait_for(lambda: (lambda st: st if len(st.get("routes", [])) == 2 else None)(lab.status()),
                      10, what="status lists both paths")
        s1 = st["sessions"]["tun1"]
        assert s1["hold_time"] == 30 and s1["keepalive"] == 10
        assert s1["capabilities"]["four_octet_as"] and s1["capabilities"]["route_refresh"]
        r = {(x["prefix"], x["tunnel"]): x for x in st["routes"]}
        assert r[("10.100.0.0/16", "tun1")]["installed"]
        assert not r[("10.100.0.0/16", "tun2")]["installed"]
        assert r[("10.100.0.0/16", "tun2")]["as_path"] == [64512, 64512, 64512]

        # failover: kill tunnel 1's peer -> route moves to tunnel 2
        lab.links[0]["bird_proc"].send_signal(signal.SIGKILL)
        wait_for(lambda: routes_via(lab).get("10.100.0.0/16") == {"bgpv2"}, 20,
                 what="failover to bgpv2")
        wait_for(lambda: lab.status()["sessions"]["tun1"]["state"] != "Established", 5,
                 what="tun1 session down")

        # end: sessions stop -> every route of ours leaves the kernel
        st = lab.stop_cgwd()
        assert st["final"]
        assert lab.kernel_routes().strip() == ""
        wait_for(lambda: "192.168.50.0/24" not in lab.birdc(1, "show", "route"), 10,
                 what="BIRD withdrew the on-prem prefix")
        assert "Administrative Shutdown" in st["sessions"]["tun2"]["last_error"]


@need_bird
def test_bird_withdraw_and_reconcile_after_route_removed():
    with Lab("recon", n_links=1) as lab:
        lab.start_bird(0, static=("10.100.0.0/16", "10.101.0.0/16"))
        lab.start_cgwd(extra={"reconcile_interval": 1})
        wait_for(lambda: len(routes_via(lab)) == 2, 40, what="two VPC prefixes installed")
        # someone deletes our route: reconciliation re-adds it
        nsexec(lab.cgw, "ip", "route", "del", "10.101.0.0/16", "proto", "157")
        wait_for(lambda: "10.101.0.0/16" in routes_via(lab), 10, what="route re-added")
        # interface flap: the kernel drops routes through it, reconciliation re-adds them
        nsexec(lab.cgw, "ip", "link", "set", "bgpv1", "down")
        wait_for(lambda: routes_via(lab) == {}, 5, what="kernel dropped routes on link down")
        nsexec(lab.cgw, "ip", "link", "set", "bgpv1", "up")
        wait_for(lambda: len(routes_via(lab)) == 2, 15, what="routes re-added after the flap")
        # a route of another protocol with the same prefix is never touched
        nsexec(lab.cgw, "ip", "route", "add", "10.102.0.0/16", "via", "169.254.10.1", "proto", "static")
        # peer withdraws one prefix
        lab.birdc(0, "disable", "vpc")
        wait_for(lambda: routes_via(lab) == {}, 15, what="withdrawn from kernel")
        lab.stop_cgwd()
        assert "10.102.0.0/16" in nsexec(lab.cgw, "ip", "route", "show", "proto", "static").stdout


@need_bird
def test_bird_ecmp_over_both_tunnels():
    """Transit Gateway style: equal paths on both tunnels -> one multipath kernel route."""
    with Lab("ecmp") as lab:
        lab.start_bird(0, med=100)
        lab.start_bird(1, med=100)
        lab.start_cgwd(ecmp=True)
        wait_for(lambda: established(lab), 40, what="both sessions Established")
        wait_for(lambda: routes_via(lab).get("10.100.0.0/16") == {"bgpv1", "bgpv2"}, 15,
                 what="multipath route over both tunnels")
        out = lab.kernel_routes()
        assert "nexthop via 169.254.10.1" in out and "nexthop via 169.254.11.1" in out
        # one tunnel's peer goes away: the route shrinks to the other tunnel
        lab.links[1]["bird_proc"].send_signal(signal.SIGKILL)
        wait_for(lambda: routes_via(lab).get("10.100.0.0/16") == {"bgpv1"}, 20,
                 what="single path after losing tunnel 2")
        lab.stop_cgwd()
        assert lab.kernel_routes().strip() == ""


@need_gobgp
def test_gobgp_four_octet_asn():
    with Lab("gobgp", n_links=1) as lab:
        lab.start_gobgp(0, local_as=4200000000, remote_as=4200000001, routes=("10.200.0.0/16",))
        lab.start_cgwd(local_asn=4200000001, remote_asns={0: 4200000000})
        wait_for(lambda: established(lab), 40, what="session with GoBGP Established")
        wait_for(lambda: "10.200.0.0/16" in routes_via(lab), 15, what="GoBGP route installed")
        st = lab.status()
        assert st["sessions"]["tun1"]["peer_asn"] == 4200000000
        assert st["sessions"]["tun1"]["capabilities"]["four_octet_as"]
        assert st["routes"][0]["as_path"] == [4200000000]
        # GoBGP's view: the 4-octet AS capability was exchanged both ways (RFC 6793)
        nb = lab.gobgp(0, "neighbor", "169.254.10.2").stdout
        assert re.search(r"4-octet-as:\s+advertised and received", nb), nb
        assert "4200000001" in nb
        out = wait_for(lambda: (lambda o: o if "192.168.50.0/24" in o else "")(
            lab.gobgp(0, "neighbor", "169.254.10.2", "adj-in").stdout), 15,
            what="GoBGP learned our prefix")
        assert "4200000001" in out
        lab.stop_cgwd()
        assert lab.kernel_routes().strip() == ""


need_frr = pytest.mark.skipif(not os.path.exists("/usr/lib/frr/bgpd") or not shutil.which("vtysh"),
                              reason="frr not installed (optional: apt-get install frr)")


@need_frr
def test_frr_four_octet_asn_both_ways():
    """FRR 8.4 (bgpd alone, its RFC 8212 policy satisfied by a route-map) with 4-octet ASNs
    on both sides; FRR also sends capabilities cgwd does not know (ignored)."""
    import json
    with Lab("frr", n_links=1) as lab:
        lab.start_frr(0, local_as=4200000002, remote_as=4200000001, routes=("10.201.0.0/16",))
        lab.start_cgwd(local_asn=4200000001, remote_asns={0: 4200000002})
        wait_for(lambda: established(lab), 40, what="session with FRR Established")
        wait_for(lambda: "10.201.0.0/16" in routes_via(lab), 15, what="FRR's route installed")
        st = wait_for(lambda: (lambda st: st if st.get("routes") else None)(lab.status()), 10,
                      what="status lists the route")
        s = st["sessions"]["tun1"]
        assert s["peer_asn"] == 4200000002 and s["capabilities"]["four_octet_as"]
        assert s["capabilities"]["unknown"], s["capabilities"]     # e.g. FQDN (73): ignored
        assert [r["as_path"] for r in st["routes"] if r["prefix"] == "10.201.0.0/16"] == [[4200000002]]
        # FRR's view: our 4-octet AS in the AS_PATH of the prefix it learned from us
        def frr_route():
            try:
                out = json.loads(lab.vtysh(0, "show bgp ipv4 unicast 192.168.50.0/24 json") or "{}")
            except ValueError:
                return None
            return out if out.get("paths") else None
        r = wait_for(frr_route, 15, what="FRR learned our prefix")
        assert r["paths"][0]["aspath"]["string"] == "4200000001", r["paths"][0]["aspath"]
        nb = json.loads(lab.vtysh(0, "show bgp neighbors 169.254.10.2 json"))["169.254.10.2"]
        assert nb["bgpState"] == "Established"
        caps = nb["neighborCapabilities"]
        assert caps["4byteAs"] == "advertisedAndReceived", caps
        lab.stop_cgwd()
        assert lab.kernel_routes().strip() == ""
        wait_for(lambda: not frr_route(), 10, what="FRR dropped our prefix")


@need_bird
def test_5000_prefixes_keepalives_on_time():
    with Lab("bulk", n_links=1) as lab:
        inc = os.path.join(lab.tmp, "bulk.conf")
        with open(inc, "w") as f:
            for i in range(5000):
                f.write(f"route 10.{64 + i // 256}.{i % 256}.0/24 blackhole;\n")
        lab.start_bird(0, static=(), hold=9, keepalive=3, extra_static_file=inc)
        lab.start_cgwd(hold=9, max_prefix=10000)
        wait_for(lambda: established(lab), 40, what="Established")
        wait_for(lambda: lab.status().get("installed_count") == 5000, 120,
                 what="5000 routes installed")
        n = len(lab.kernel_routes().splitlines())
        assert n == 5000
        # stay up a couple of hold periods: no hold-timer expiry on either side
        time.sleep(10)
        st = lab.status()
        s = st["sessions"]["tun1"]
        assert s["state"] == "Established" and s["flaps"] == 0, s
        assert not [h for h in st["history"] if h["event"] == "SessionDown"], st["history"]
        assert "Hold timer expired" not in open(os.path.join(lab.tmp, "bird0", "bird.log")).read()
        assert s["prefixes_received"] == 5000
        lab.stop_cgwd()
        assert lab.kernel_routes().strip() == ""
