"""KernelRoutes against the real kernel (a namespace of its own): the netlink batch path.

Checks that batched installs give the same kernel state and per-route outcomes as the
one-request-per-route path: conflicts with foreign routes, multipath, IPv6, the default
route, delete-then-add of one prefix inside one batch, a vanished interface.
Needs root.
"""
import os
import shutil
import subprocess
import sys

import pytest

from test_bgp_lab import REPO, Lab, nsexec

pytestmark = [pytest.mark.interop]

if os.geteuid() != 0 or not shutil.which("ip"):
    pytest.skip("needs root and iproute2", allow_module_level=True)

SCRIPT = r'''
import errno, json, subprocess, sys
sys.path.insert(0, REPO)
from cgwd.bgp import kernel as kmod
from cgwd.routing.kernel import KernelRoutes
from cgwd.routing.rib import NextHop, RibChanges

def ip(*a):
    return subprocess.run(["ip", *a], capture_output=True, text=True, check=True).stdout

def ours(fam="-4"):
    return sorted(l.strip() for l in ip(fam, "route", "show", "proto", "157").splitlines()
                  if not l.startswith("\t") and l.strip())

NH1 = (NextHop("t1", "bgpv1", "169.254.10.1"),)
NH2 = (NextHop("t2", "bgpv2", "169.254.11.1"),)
MODE = sys.argv[1]
k = KernelRoutes(254, 100, 157)
k._batch_ok = MODE == "batched"
out = {}
# a foreign (static) route with the same prefix and metric: a conflict, never touched
ip("route", "add", "blackhole", "10.64.5.0/24", "metric", "100", "proto", "static")
add = {f"10.64.{i}.0/24": NH1 for i in range(200)}
add["0.0.0.0/0"] = NH1
add["10.99.0.0/16"] = NH1 + NH2                        # ECMP
add["2001:db8:100::/48"] = (NextHop("t1", "bgpv1", "fe80::1"),)
add["10.98.0.0/16"] = (NextHop("t9", "nosuchdev", "169.254.12.1"),)
k.apply(RibChanges(add=add))
out["installed"] = len(k.installed)
out["conflicts"] = sorted(k.conflicts)
out["failed"] = sorted(k.failed)
out["v4"] = len(ours())
out["v6"] = ours("-6")
out["default"] = [l for l in ours() if l.startswith("default")]
out["ecmp"] = ip("route", "show", "10.99.0.0/16", "proto", "157")
# replace (delete + add of the same prefix in one batch) and removals, plus more adds
rep = {f"10.64.{i}.0/24": NH2 for i in range(100)}
k.apply(RibChanges(replace=rep, remove=[f"10.64.{i}.0/24" for i in range(150, 200)],
                   add={f"10.65.{i}.0/24": NH2 for i in range(20)}))
out["after_replace"] = len(ours())
out["via_bgpv2"] = sum(1 for l in ours() if "dev bgpv2" in l)
# the interface of tunnel 2 disappears: adds through it fail with a recorded reason
ip("link", "del", "bgpv2")
k.apply(RibChanges(add={f"10.66.{i}.0/24": NH2 for i in range(20)}))
out["failed_after_linkdel"] = sum(1 for p in k.failed if p.startswith("10.66."))
# reconcile after the kernel dropped routes behind our back
ip("link", "set", "bgpv1", "down")
ip("link", "set", "bgpv1", "up")
desired = {f"10.64.{i}.0/24": NH1 for i in range(100, 150)}
out["reconcile"] = k.reconcile(desired)
out["after_reconcile"] = len(ours())
k.remove_all()
out["left"] = ours() + ours("-6")
out["static_kept"] = "10.64.5.0/24" in ip("route", "show", "proto", "static")
# fail closed: unreachable routes at the worse metric, batched like the others
guards = {f"10.70.{i}.0/24" for i in range(20)} | {"10.71.0.0/16", "10.72.0.0/16"}
k.apply(RibChanges(guard_add=guards))
unr = [l for l in ours() if l.startswith("unreachable")]
out["unreachable"] = len(unr)
out["unreachable_metric"] = all("metric 1100" in l for l in unr)
ip("link", "del", "bgpv1")                           # a tunnel interface dies: they stay
out["unreachable_after_linkdel"] = len([l for l in ours() if l.startswith("unreachable")])
out["reconcile_guards"] = k.reconcile({}, {"10.71.0.0/16", "10.72.0.0/16", "10.73.0.0/16"})
out["unreachable_after_reconcile"] = sorted(l.split()[1] for l in ours() if l.startswith("unreachable"))
k2 = KernelRoutes(254, 100, 157)                     # the next run after a crash
out["flushed"] = k2.flush_stale()
out["left_after_flush"] = ours()
k.apply(RibChanges(guard_add={"10.74.0.0/16"}))
k.remove_all()
out["left_after_remove_all"] = ours()
out["batches"] = k.batches
print(json.dumps(out))
'''


@pytest.mark.parametrize("mode", ["batched", "per_request"])
def test_kernel_routes_batched_matches_per_request(mode):
    with Lab("kern" + mode[:2], n_links=2) as lab:
        nsexec(lab.cgw, "ip", "-6", "addr", "add", "fe80::2/64", "dev", "bgpv1")
        path = os.path.join(lab.tmp, "k.py")
        with open(path, "w") as f:
            f.write(SCRIPT.replace("REPO", repr(REPO)))
        r = nsexec(lab.cgw, sys.executable, path, mode, check=False, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        import json
        out = json.loads(r.stdout.strip().splitlines()[-1])
    # 200 + default + ecmp + v6 requested; 10.64.5.0/24 conflicts, 10.98/16 has no device
    assert out["conflicts"] == ["10.64.5.0/24"]
    assert out["failed"] == ["10.98.0.0/16"]
    assert out["installed"] == 202
    assert out["v4"] == 201 and len(out["default"]) == 1
    assert len(out["v6"]) == 1 and out["v6"][0].startswith("2001:db8:100::/48")
    assert "nexthop via 169.254.10.1" in out["ecmp"] and "nexthop via 169.254.11.1" in out["ecmp"]
    # 201 - 50 removed + 20 added; 99 replaced onto bgpv2 (10.64.5 is not ours) + 20 new
    assert out["after_replace"] == 171 and out["via_bgpv2"] == 119
    assert out["failed_after_linkdel"] == 20
    # link down dropped every route via bgpv1; reconcile re-adds the 50 wanted ones
    assert out["reconcile"]["added"] == 50 and out["after_reconcile"] == 50
    assert out["left"] == [] and out["static_kept"]
    assert out["unreachable"] == 22 and out["unreachable_metric"]
    assert out["unreachable_after_linkdel"] == 22
    assert out["reconcile_guards"] == {"added": 1, "removed": 20, "fixed": 0}
    assert out["unreachable_after_reconcile"] == ["10.71.0.0/16", "10.72.0.0/16", "10.73.0.0/16"]
    assert out["flushed"] == 3 and out["left_after_flush"] == []
    assert out["left_after_remove_all"] == []
