"""IPv6 routes through KernelRoutes into the real kernel (a namespace of its own), as an IPv6
VPN's BGP session fills it: 1,500 IPv6 prefixes via the AWS inside addresses of two tunnels
(/126s from fd00::/8), ECMP over both, protocol 157, a foreign route with the same prefix
and metric left alone (a conflict), replace and remove in one batch, a vanished interface,
reconciliation after an interface flap, the fail-closed unreachable routes at metric + 1000
that outlive a tunnel interface, the flush after a crash. The netlink batch path and the
one-request-per-route path must end in the same kernel state. Needs root.
"""
import json
import os
import shutil
import sys

import pytest

from test_bgp_lab import REPO, Lab, nsexec

pytestmark = [pytest.mark.interop]

if os.geteuid() != 0 or not shutil.which("ip"):
    pytest.skip("needs root and iproute2", allow_module_level=True)

SCRIPT = r'''
import ipaddress, json, subprocess, sys
sys.path.insert(0, REPO)
from cgwd.routing.kernel import KernelRoutes
from cgwd.routing.rib import NextHop, RibChanges

def ip(*a, check=True):
    r = subprocess.run(["ip", *a], capture_output=True, text=True, check=check)
    return r.stdout + r.stderr

def ours():
    return sorted(l.strip() for l in ip("-6", "route", "show", "proto", "157").splitlines()
                  if not l.startswith("\t") and l.strip())

def nexthops(prefix):
    return sorted(l.split()[2] for l in ip("-6", "route", "show", prefix, "proto", "157").splitlines()
                  if "via" in l and not l.startswith("unreachable"))

NH1 = (NextHop("t1", "bgpv1", "fd00:0:0:10::1"),)
NH2 = (NextHop("t2", "bgpv2", "fd00:0:0:11::1"),)
k = KernelRoutes(254, 100, 157)
k._batch_ok = sys.argv[1] == "batched"
out = {}
def net(text):                    # canonical, as the RIB gives prefixes
    return str(ipaddress.ip_network(text))

P = [net(f"2001:db8:{0x100 + i // 256:x}:{i % 256:x}::/64") for i in range(1500)]
# a foreign (static) route with the same prefix and metric: a conflict, never touched
ip("-6", "route", "add", "blackhole", P[5], "metric", "100", "proto", "static")
add = {p: NH1 for p in P}
add["2001:db8:100::/56"] = NH1 + NH2                      # ECMP over both tunnels
add["::/0"] = NH2                                         # a default route (accepted by policy "any")
add["2001:db8:ffff::/48"] = (NextHop("t9", "nosuchdev", "fd00:0:0:12::1"),)
k.apply(RibChanges(add=add))
out["installed"] = len(k.installed)
out["conflicts"] = sorted(k.conflicts)
out["failed"] = sorted(k.failed)
out["count"] = len(ours())
out["ecmp"] = nexthops("2001:db8:100::/56")
out["default"] = [l for l in ours() if l.startswith("default")]
out["dump"] = len(k.dump())
# replace (delete + add of a prefix in one batch), removals and new prefixes at once
k.apply(RibChanges(replace={p: NH2 for p in P[:500]}, remove=P[1000:],
                   add={net(f"2001:db8:900:{i:x}::/64"): NH2 for i in range(20)}))
out["after_replace"] = len(ours())
out["via_bgpv2"] = sum(1 for l in ours() if "dev bgpv2" in l)
# tunnel 2's interface disappears: adds through it fail, with the reason recorded
ip("link", "del", "bgpv2")
k.apply(RibChanges(add={net(f"2001:db8:a00:{i:x}::/64"): NH2 for i in range(20)}))
out["failed_after_linkdel"] = sum(1 for p in k.failed if p.startswith("2001:db8:a00:"))
out["gone_with_bgpv2"] = sum(1 for l in ours() if "dev bgpv2" in l)
# an interface flap drops the routes through it (and IPv6 drops its addresses): the data
# path puts the address back, reconciliation the routes
ip("link", "set", "bgpv1", "down")
ip("link", "set", "bgpv1", "up")
ip("-6", "addr", "add", "fd00:0:0:10::2/126", "dev", "bgpv1", "nodad", check=False)
out["after_flap"] = len(ours())
desired = {p: NH1 for p in P[500:1000]}
out["reconcile"] = k.reconcile(desired)
out["after_reconcile"] = len(ours())
out["reconcile_again"] = k.reconcile(desired)
k.remove_all()
out["left"] = ours()
out["static_kept"] = P[5] in ip("-6", "route", "show", "proto", "static")
# fail closed: unreachable routes at the worse metric, batched like the others; they
# outlive the tunnel interface
guards = set(P[:30]) | {"2001:db8:100::/56"}
k.apply(RibChanges(add={"2001:db8:100::/56": NH1}, guard_add=guards))
out["unreachable"] = len([l for l in ours() if l.startswith("unreachable")])
out["unreachable_metric"] = all("metric 1100" in l for l in ours() if l.startswith("unreachable"))
out["tunnel_route_wins"] = ip("-6", "route", "get", "2001:db8:100:ff::1", check=False).split()[:5]
ip("link", "del", "bgpv1")
out["after_linkdel"] = ours()
out["route_get_after_linkdel"] = ip("-6", "route", "get", "2001:db8:100:ff::1", check=False)
out["reconcile_guards"] = k.reconcile({}, {"2001:db8:100::/56", "2001:db8:200::/56"})
out["unreachable_after_reconcile"] = sorted(l.split()[1] for l in ours() if l.startswith("unreachable"))
k2 = KernelRoutes(254, 100, 157)                          # the next run after a crash
out["flushed"] = k2.flush_stale()
out["left_after_flush"] = ours()
out["batches"] = k.batches
print(json.dumps(out))
'''


@pytest.mark.parametrize("mode", ["batched", "per_request"])
def test_ipv6_kernel_routes_batched_matches_per_request(mode):
    with Lab("k6" + mode[:2], n_links=2) as lab:
        # a gateway forwards IPv6 (cgwd's system check says so when it does not)
        nsexec(lab.cgw, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        for i, dev in enumerate(("bgpv1", "bgpv2")):
            nsexec(lab.cgw, "ip", "-6", "addr", "add", f"fd00:0:0:{10 + i}::2/126", "dev", dev, "nodad")
            nsexec(lab.peers[i], "ip", "-6", "addr", "add", f"fd00:0:0:{10 + i}::1/126", "dev", "aws0", "nodad")
        path = os.path.join(lab.tmp, "k6.py")
        with open(path, "w") as f:
            f.write(SCRIPT.replace("REPO", repr(REPO)))
        r = nsexec(lab.cgw, sys.executable, path, mode, check=False, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
    p5 = "2001:db8:100:5::/64"                        # P[5], canonical already
    assert out["conflicts"] == [p5]                   # the foreign route of the same metric
    assert out["failed"] == ["2001:db8:ffff::/48"]   # no such interface
    assert out["installed"] == 1501 and out["count"] == 1501 and out["dump"] == 1501
    assert out["ecmp"] == ["fd00:0:0:10::1", "fd00:0:0:11::1"]
    assert len(out["default"]) == 1 and "via fd00:0:0:11::1" in out["default"][0]
    # 1,501 - 500 removed + 20 new; 499 moved to tunnel 2 (not the foreign one) + 20 new + default
    assert out["after_replace"] == 1021 and out["via_bgpv2"] == 520
    assert out["failed_after_linkdel"] == 20 and out["gone_with_bgpv2"] == 0
    assert out["after_flap"] == 0
    assert out["reconcile"]["added"] == 500 and out["after_reconcile"] == 500
    assert out["reconcile_again"] == {"added": 0, "removed": 0, "fixed": 0}
    assert out["left"] == [] and out["static_kept"]
    assert out["unreachable"] == 31 and out["unreachable_metric"]
    assert out["tunnel_route_wins"][:5] == ["2001:db8:100:ff::1", "from", "::", "via", "fd00:0:0:10::1"]
    # the tunnel interface is gone: only the unreachable routes remain, the prefix is unreachable
    assert all(line.startswith("unreachable") for line in out["after_linkdel"]) and len(out["after_linkdel"]) == 31
    assert "No route to host" in out["route_get_after_linkdel"]      # EHOSTUNREACH, not the default route
    assert out["reconcile_guards"] == {"added": 1, "removed": 30, "fixed": 0}
    assert out["unreachable_after_reconcile"] == ["2001:db8:100::/56", "2001:db8:200::/56"]
    assert out["flushed"] == 2 and out["left_after_flush"] == []
    if mode == "batched":
        assert out["batches"] >= 1
