"""Route dumps read from a plain netlink socket (reconciliation's fast path) against
pyroute2's own dump of the same real kernel table, in a namespace of the test's own."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(r'''
    import json, subprocess
    from pyroute2 import IPRoute
    from cgwd.routing.kernel import KernelRoutes

    def ip(*a):
        subprocess.run(["ip", *a], check=True)

    ip("link", "set", "lo", "up")
    for i in (1, 2):
        ip("link", "add", f"d{i}", "type", "veth", "peer", "name", f"p{i}")
        ip("addr", "add", f"169.254.{10 + i}.2/30", "dev", f"d{i}")
        ip("link", "set", f"d{i}", "up")
        ip("link", "set", f"p{i}", "up")
    ip("-6", "addr", "add", "fd00::2/64", "dev", "d1", "nodad")
    out = {}
    for table in (254, 1000):
        t = ["table", str(table)]
        for k in range(40):
            ip("route", "add", f"10.{100 + k}.0.0/16", "via", "169.254.11.1", "proto", "157", "metric", "100", *t)
            ip("route", "add", "unreachable", f"10.{100 + k}.0.0/16", "proto", "157", "metric", "1100", *t)
        ip("route", "add", "10.99.0.0/16", "proto", "157", "metric", "100", *t, "nexthop", "via", "169.254.11.1",
           "nexthop", "via", "169.254.12.1")
        ip("route", "add", "10.98.0.0/16", "via", "169.254.11.1", "proto", "158", "metric", "100", *t)
        ip("route", "add", "10.97.0.0/16", "via", "169.254.11.1", "proto", "157", "metric", "101", *t)
        ip("route", "add", "unreachable", "10.96.0.0/16", "proto", "157", "metric", "100", *t)
        ip("-6", "route", "add", "2001:db8:100::/56", "via", "fd00::1", "proto", "157", "metric", "100", *t)
        ip("-6", "route", "add", "unreachable", "2001:db8:100::/56", "proto", "157", "metric", "1100", *t)
        raw = KernelRoutes(table)
        ref = KernelRoutes(table, iproute=IPRoute())
        out[table] = {"raw": [raw.dump(), sorted(raw.dump_unreachable())],
                      "ref": [ref.dump(), sorted(ref.dump_unreachable())]}
    print(json.dumps(out))
''')


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_raw_route_dump_matches_pyroute2():
    import json

    p = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    for table, got in out.items():
        routes, unreachable = got["raw"]
        assert got["raw"] == got["ref"], table
        assert len(routes) == 42 and "10.99.0.0/16" in routes and "2001:db8:100::/56" in routes, table
        assert len(routes["10.99.0.0/16"]) == 2
        assert "10.98.0.0/16" not in routes and "10.97.0.0/16" not in routes and "10.96.0.0/16" not in routes
        assert len(unreachable) == 41 and "2001:db8:100::/56" in unreachable


SHARED = textwrap.dedent(r'''
    import json, subprocess
    from cgwd.routing import kernel as K
    from cgwd.routing.rib import NextHop, RibChanges

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "link", "add", "t1", "type", "veth", "peer", "name", "p1"], check=True)
    subprocess.run(["ip", "addr", "add", "169.254.11.2/30", "dev", "t1"], check=True)
    subprocess.run(["ip", "link", "set", "t1", "up"], check=True)
    subprocess.run(["ip", "link", "set", "p1", "up"], check=True)
    dumps = []
    real = K._raw_route_dump
    K._raw_route_dump = lambda *a: (dumps.append(a), real(*a))[1]
    a, b = K.KernelRoutes(), K.KernelRoutes()
    nh = (NextHop("t1", "t1", "169.254.11.1"),)
    a.apply(RibChanges(add={"10.101.0.0/24": nh}))
    out = {"a_after_add": sorted(a.dump()), "n1": len(dumps)}
    out["b_shared"] = sorted(b.dump())
    out["n2"] = len(dumps)            # b reused a's scan: no new dump
    b.apply(RibChanges(add={"10.102.0.0/24": nh}))
    out["a_after_b"] = sorted(a.dump())
    out["n3"] = len(dumps)            # b changed routes: a scans again and sees them
    a.apply(RibChanges(add={"10.103.0.0/24": (NextHop("t9", "t9", "169.254.11.1"),)}))
    out["missing"] = a.failed.get("10.103.0.0/24")
    r = json.loads(subprocess.run(["ip", "-j", "route", "show", "10.101.0.0/24"], capture_output=True,
                                  text=True, check=True).stdout)
    out["dev"] = r[0]["dev"] if r else None
    print(json.dumps(out))
''')


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare(1)")
def test_scan_shared_by_instances_on_a_table_until_a_route_changes():
    import json

    p = subprocess.run(["unshare", "-n", sys.executable, "-c", SHARED], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["a_after_add"] == ["10.101.0.0/24"] and out["b_shared"] == ["10.101.0.0/24"]
    assert out["n2"] == out["n1"] == 2, out     # one dump per family, once
    assert out["a_after_b"] == ["10.101.0.0/24", "10.102.0.0/24"] and out["n3"] == 4, out
    # the interface index comes from if_nametoindex in our own namespace: right device, and a
    # missing one is a failure said in words, not a route through something else
    assert out["dev"] == "t1" and out["missing"] == "tunnel interface not present", out
