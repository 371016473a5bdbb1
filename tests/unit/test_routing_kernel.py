"""Kernel route layer against a fake netlink that models the FIB rules that matter."""
import errno

import pytest

from cgwd.routing.kernel import KernelRoutes
from cgwd.routing.rib import NextHop, RibChanges

VPC = "10.100.0.0/16"
NH1 = NextHop("t1", "tun1", "169.254.10.1")
NH2 = NextHop("t2", "tun2", "169.254.11.1")


class FakeNetlinkError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


class FakeMsg(dict):
    def get_attr(self, name):
        return self.get("attrs", {}).get(name)


class FakeIPR:
    """Models the kernel FIB rules that matter: (dst, table, metric) unique; delete
    qualified by protocol only matches that protocol."""

    def __init__(self):
        self.routes = {}          # (dst, table, prio) -> dict
        self.links = {"tun1": 5, "tun2": 6}
        self.deleted = []

    def link_lookup(self, ifname):
        return [self.links[ifname]] if ifname in self.links else []

    def route(self, cmd, **kw):
        key = (kw.get("dst"), kw.get("table"), kw.get("priority"))
        if cmd == "add":
            if key in self.routes:
                raise FakeNetlinkError(errno.EEXIST)
            self.routes[key] = kw
        elif cmd == "del":
            r = self.routes.get(key)
            self.deleted.append(kw)
            if r is None or (kw.get("proto") and r.get("proto") != kw["proto"]):
                raise FakeNetlinkError(errno.ESRCH)
            del self.routes[key]
        elif cmd == "dump":
            out = []
            for (dst, table, prio), r in self.routes.items():
                if ":" in dst and kw.get("family") == 2 or ":" not in dst and kw.get("family") == 10:
                    continue
                net, plen = dst.split("/")
                attrs = {"RTA_DST": net, "RTA_TABLE": table, "RTA_PRIORITY": prio,
                         "RTA_GATEWAY": r.get("gateway"), "RTA_OIF": r.get("oif")}
                if "multipath" in r:
                    attrs["RTA_MULTIPATH"] = [FakeMsg(oif=h["oif"], attrs={"RTA_GATEWAY": h["gateway"]})
                                              for h in r["multipath"]]
                rtype = 7 if r.get("type") in ("unreachable", 7) else 1
                out.append(FakeMsg(proto=r.get("proto"), table=table, dst_len=int(plen), scope=0,
                                   type=rtype, attrs=attrs))
            return out
        return []

    def close(self):
        pass


def kernel():
    ipr = FakeIPR()
    return ipr, KernelRoutes(254, 100, 157, iproute=ipr)


def test_kernel_install_replace_remove_and_multipath():
    ipr, k = kernel()
    k.apply(RibChanges(add={VPC: (NH1,)}))
    assert ipr.routes[(VPC, 254, 100)]["gateway"] == "169.254.10.1"
    assert ipr.routes[(VPC, 254, 100)]["oif"] == 5 and ipr.routes[(VPC, 254, 100)]["proto"] == 157
    k.apply(RibChanges(replace={VPC: (NH1, NH2)}))
    assert len(ipr.routes[(VPC, 254, 100)]["multipath"]) == 2
    k.apply(RibChanges(remove=[VPC]))
    assert ipr.routes == {} and k.installed == {}


def test_kernel_never_touches_foreign_routes():
    ipr, k = kernel()
    ipr.routes[(VPC, 254, 100)] = {"dst": VPC, "proto": 4, "gateway": "192.0.2.1"}   # static
    ipr.routes[("10.9.0.0/16", 254, 100)] = {"dst": "10.9.0.0/16", "proto": 12}       # bird
    k.apply(RibChanges(add={VPC: (NH1,)}))
    assert ipr.routes[(VPC, 254, 100)]["proto"] == 4 and VPC in k.conflicts
    k.apply(RibChanges(remove=[VPC]))
    assert ipr.routes[(VPC, 254, 100)]["proto"] == 4
    assert k.flush_stale() == 0
    k.reconcile({})
    assert len(ipr.routes) == 2
    with pytest.raises(ValueError):
        k.flush_stale(4)


def test_kernel_reconcile_readds_and_removes():
    ipr, k = kernel()
    k.apply(RibChanges(add={VPC: (NH1,), "10.101.0.0/16": (NH1,)}))
    del ipr.routes[(VPC, 254, 100)]                              # interface flap dropped it
    ipr.routes[("10.7.0.0/16", 254, 100)] = {"dst": "10.7.0.0/16", "proto": 157}   # leftover of ours
    stats = k.reconcile({VPC: (NH1,), "10.101.0.0/16": (NH1,)})
    assert stats["added"] == 1 and stats["removed"] == 1
    assert set(d for d, _t, _p in ipr.routes) == {VPC, "10.101.0.0/16"}
    # the gateway changed under us: fixed
    ipr.routes[(VPC, 254, 100)]["gateway"] = "169.254.99.1"
    assert k.reconcile({VPC: (NH1,), "10.101.0.0/16": (NH1,)})["fixed"] == 1
    assert ipr.routes[(VPC, 254, 100)]["gateway"] == "169.254.10.1"


def test_kernel_flush_stale_only_ours():
    ipr, k = kernel()
    ipr.routes[("10.7.0.0/16", 254, 100)] = {"dst": "10.7.0.0/16", "proto": 157}
    ipr.routes[("10.8.0.0/16", 254, 100)] = {"dst": "10.8.0.0/16", "proto": 3}
    assert k.flush_stale() == 1
    assert list(ipr.routes) == [("10.8.0.0/16", 254, 100)]
    assert all(d["proto"] == 157 for d in ipr.deleted)


def test_kernel_usable_from_inside_event_loop():
    import asyncio
    ipr, k = kernel()
    ipr.routes[("10.7.0.0/16", 254, 100)] = {"dst": "10.7.0.0/16", "proto": 157}

    async def main():
        return k.flush_stale()
    assert asyncio.run(main()) == 1


def test_kernel_missing_interface_recorded():
    ipr, k = kernel()
    k.apply(RibChanges(add={VPC: (NextHop("t9", "nope", "169.254.12.1"),)}))
    assert VPC in k.failed and not ipr.routes



# ---------------------------------------------------------------- fail-closed routes
def test_unreachable_routes_at_the_worse_metric_with_our_protocol_and_no_interface():
    ipr, k = kernel()
    assert k.unreachable_metric == 1100
    k.apply(RibChanges(add={VPC: (NH1,)}, guard_add={VPC}))
    r = ipr.routes[(VPC, 254, 1100)]
    assert r["type"] == "unreachable" and r["proto"] == 157 and "oif" not in r and "gateway" not in r
    assert ipr.routes[(VPC, 254, 100)]["oif"] == 5
    assert k.dump_unreachable() == {VPC} and set(k.dump()) == {VPC}
    k.apply(RibChanges(guard_remove={VPC}))
    assert (VPC, 254, 1100) not in ipr.routes and k.unreachable == set()
    k.apply(RibChanges(guard_add={VPC}))
    k.remove_all()
    assert ipr.routes == {}


def test_flush_after_a_crash_deletes_unreachable_routes_by_their_type():
    ipr, k = kernel()
    k.apply(RibChanges(guard_add={VPC, "10.101.0.0/16"}))
    fresh = KernelRoutes(254, 100, 157, iproute=ipr)
    assert fresh.flush_stale() == 2
    assert all(d.get("type") == 7 for d in ipr.deleted[-2:])
    assert ipr.routes == {}


def test_fail_closed_metric_must_be_worse():
    with pytest.raises(ValueError, match="worse"):
        KernelRoutes(254, 100, 157, unreachable_metric=50)
