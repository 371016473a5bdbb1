"""RIB best path / ECMP / max-prefix / graceful restart, import & export policy, kernel layer."""
import errno

import pytest

from cgwd.bgp.kernel import KernelRoutes
from cgwd.bgp.message import Route, seq, AS_SET, AS_SEQUENCE
from cgwd.bgp.policy import ExportPolicy, ImportPolicy, check_export_limit
from cgwd.bgp.rib import NextHop, Rib, RibChanges
from cgwd.bgp.routing import RoutingTable

VPC = "10.100.0.0/16"


def R(prefix=VPC, path=(64512,), med=None, nh="169.254.10.1"):
    return Route(prefix, nh, seq(*path), med=med)


def rib(**kw):
    kw.setdefault("import_policy", ImportPolicy("aws-default", ("192.168.50.0/24",)))
    r = Rib(**kw)
    r.tunnel_up("t1", "tun1", "169.254.10.1", index=0)
    r.tunnel_up("t2", "tun2", "169.254.11.1", index=1)
    return r


NH1 = NextHop("t1", "tun1", "169.254.10.1")
NH2 = NextHop("t2", "tun2", "169.254.11.1")


@pytest.mark.parametrize("r1,r2,ecmp,want", [
    (R(path=(64512,)), R(path=(64512, 64512, 64512)), False, (NH1,)),      # shorter AS_PATH
    (R(path=(64512, 64512)), R(path=(64512,)), False, (NH2,)),
    (R(med=200), R(med=100), False, (NH2,)),                                 # lower MED
    (R(med=100), R(med=200), False, (NH1,)),
    (R(path=(64512,), med=500), R(path=(64512, 1), med=1), False, (NH1,)),  # path before MED
    (R(), R(), False, (NH1,)),                                               # tie: lower index
    (R(), R(), True, (NH1, NH2)),                                            # ECMP
    (R(med=5), R(med=6), True, (NH1,)),                                      # ECMP needs equal MED
    (R(med=None), R(med=1), False, (NH1,)),                                  # missing MED = 0
])
def test_best_path(r1, r2, ecmp, want):
    rb = rib(ecmp=ecmp)
    rb.update("t1", [r1], [])
    rb.update("t2", [r2], [])
    assert rb.selected[VPC] == want


def test_as_set_counts_one():
    rb = rib()
    rb.update("t1", [Route(VPC, "x", ((AS_SEQUENCE, (64512,)), (AS_SET, (1, 2, 3, 4))))], [])
    rb.update("t2", [R(path=(64512, 1, 2))], [])
    assert rb.selected[VPC] == (NH1,)


def test_changes_add_replace_remove_and_failover():
    rb = rib()
    ch, _ = rb.update("t1", [R()], [])
    assert ch.add == {VPC: (NH1,)}
    ch, _ = rb.update("t2", [R(path=(64512, 64512))], [])
    assert not ch                                   # backup path: no FIB change
    ch = rb.tunnel_down("t1")
    assert ch.replace == {VPC: (NH2,)}
    ch, _ = rb.update("t2", [], [VPC])
    assert ch.remove == [VPC]
    assert rb.selected == {}


def test_policy_default_deny_rfc8212():
    rb = Rib(import_policy=None)
    rb.tunnel_up("t1", "tun1", "169.254.10.1")
    ch, _ = rb.update("t1", [R()], [])
    assert not ch and rb.counts("t1")["rejected"] == 1


@pytest.mark.parametrize("prefix,ok", [
    ("10.100.0.0/16", True), ("0.0.0.0/0", False), ("169.254.10.0/30", False),
    ("169.254.0.0/16", False), ("192.168.50.0/24", False), ("192.168.50.128/25", False),
    ("192.168.0.0/16", True), ("224.0.0.0/4", False), ("2001:db8::/32", True),
])
def test_aws_default_import(prefix, ok):
    p = ImportPolicy.aws_default(["192.168.50.0/24"])
    assert p.accepts(prefix) is ok
    if not ok:
        assert p.reason(prefix) != "accepted"


def test_one_import_policy_for_config_and_bgp(tmp_path):
    """config.py and the BGP layer share one ImportPolicy: the config's default import is
    aws-default with the advertised prefixes as 'own', and agrees with the RIB on 0/0."""
    import cgwd.config as config
    from cgwd.bgp.routing import RoutingTable
    assert config.ImportPolicy is ImportPolicy
    pol = ImportPolicy("aws-default")
    assert not pol.accepts("0.0.0.0/0")
    assert ImportPolicy("none") == ImportPolicy("deny") and ImportPolicy("none").to_config() == "none"
    lst = ImportPolicy.from_config(["10.0.0.0/8"], ["10.9.0.0/16"])
    assert lst.mode == "prefix-list" and lst.to_config() == ["10.0.0.0/8"]
    assert lst.accepts("10.1.0.0/16") and not lst.accepts("10.9.1.0/24") and not lst.accepts("0.0.0.0/0")
    assert pol.with_own(["192.168.50.0/24"]) == ImportPolicy("aws-default", ("192.168.50.0/24",))
    assert hash(pol.with_own(["192.168.50.0/24"])) == hash(ImportPolicy.aws_default(["192.168.50.0/24"]))
    with pytest.raises(ValueError):
        ImportPolicy("all")
    # RFC 8212: no policy given to the BGP layer -> nothing imported
    assert RoutingTable(import_policy=None).import_policy.mode == "deny"


@pytest.mark.parametrize("action", ["warn", "drop", "reset"])
def test_max_prefix(action):
    rb = rib(max_prefix=10, max_prefix_action=action)
    routes = [R(f"10.{i}.0.0/16") for i in range(11)]
    ch, act = rb.update("t1", routes, [])
    n = rb.counts("t1")["accepted"]
    if action == "warn":
        assert n == 11 and act is None and rb.counts("t1")["max_prefix_hit"]
    elif action == "drop":
        assert n == 10 and act is None and "10.10.0.0/16" not in rb.selected
    else:
        assert act == "reset" and n == 0 and rb.selected == {}


def test_graceful_restart_stale_then_eor_flush():
    rb = rib()
    rb.update("t1", [R(), R("10.101.0.0/16")], [])
    rb.update("t2", [R(path=(64512, 64512))], [])
    ch = rb.session_down("t1", graceful=True, restart_time=120, now=100)
    # stale path loses to a fresh one; a stale-only prefix stays installed
    assert ch.replace == {VPC: (NH2,)} and not ch.remove
    assert rb.selected["10.101.0.0/16"] == (NH1,)
    assert rb.get_timer() == 220
    rb.update("t1", [R()], [])                    # refreshed after restart
    assert rb.selected[VPC] == (NH1,)
    ch = rb.end_of_rib("t1")
    assert ch.remove == ["10.101.0.0/16"]


def test_graceful_restart_timer_expiry():
    rb = rib()
    rb.update("t1", [R()], [])
    rb.session_down("t1", graceful=True, restart_time=120, now=0)
    assert not rb.expire_stale(119)
    assert rb.expire_stale(120).remove == [VPC]


def test_non_graceful_session_down_removes_at_once():
    rb = rib()
    rb.update("t1", [R()], [])
    assert rb.session_down("t1", graceful=False).remove == [VPC]


def test_routes_not_installed_while_tunnel_down():
    rb = Rib(import_policy=ImportPolicy("any"))
    rb.add_tunnel("t1")
    ch, _ = rb.update("t1", [R()], [])
    assert not ch
    assert rb.tunnel_up("t1", "tun1", "169.254.10.1").add == {VPC: (NextHop("t1", "tun1", "169.254.10.1"),)}


def test_changes_merge():
    a = RibChanges(add={"p": 1}, remove=["q"])
    a.merge(RibChanges(add={"q": 2}, remove=["p"]))
    assert a.add == {} and a.replace == {"q": 2} and a.remove == []


def test_export_policy_and_limit():
    exp = ExportPolicy(("192.168.50.0/24", "192.168.51.0/24"), default_route=True, prepend=2, med=50)
    rs = exp.routes(65000)
    assert [r.prefix for r in rs] == ["192.168.50.0/24", "192.168.51.0/24", "0.0.0.0/0"]
    assert rs[0].as_path == seq(65000, 65000) and rs[0].med == 50
    check_export_limit([f"10.0.{i}.0/24" for i in range(100)])
    with pytest.raises(ValueError, match="101 prefixes.*limit is 100"):
        check_export_limit([f"10.0.{i}.0/24" for i in range(101)])
    check_export_limit([f"10.0.{i}.0/24" for i in range(101)], limit=1000)


# ---------------------------------------------------------------- kernel layer (fake netlink)
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
                out.append(FakeMsg(proto=r.get("proto"), table=table, dst_len=int(plen), scope=0,
                                  attrs=attrs))
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


# ---------------------------------------------------------------- RoutingTable glue
def test_routing_table_end_to_end_with_fake_kernel():
    from cgwd.bgp.session import EndOfRib, RoutesReceived, SessionDown
    ipr, k = kernel()
    now = [0.0]
    rt = RoutingTable(kernel=k, import_policy="aws-default", own_prefixes=["192.168.50.0/24"],
                      threaded=False, clock=lambda: now[0])
    h1 = rt.event_handler("t1")
    h2 = rt.event_handler("t2")
    rt.tunnel_up("t1", "tun1", "169.254.10.1")
    rt.tunnel_up("t2", "tun2", "169.254.11.1")
    h1(RoutesReceived([R(), R("0.0.0.0/0"), R("192.168.50.0/24")], []))
    h2(RoutesReceived([R(path=(64512, 64512), nh="169.254.11.1")], []))
    h1(EndOfRib())
    assert list(ipr.routes) == [(VPC, 254, 100)]
    rows = rt.routes()
    assert [(r["tunnel"], r["installed"], r["best"]) for r in rows] == [("t1", True, True), ("t2", False, False)]
    assert rows[0]["as_path"] == [64512] and rows[0]["nexthop"] == "169.254.10.1"
    h1(SessionDown("hold timer expired", (4, 0, b""), True, False, 0))
    assert ipr.routes[(VPC, 254, 100)]["gateway"] == "169.254.11.1"
    rt.tunnel_down("t2")
    assert ipr.routes == {}


def test_routing_table_threaded_worker_and_max_prefix_reset():
    from cgwd.bgp.session import RoutesReceived

    class FakeSession:
        def __init__(self):
            self.resets = []

        def reset(self, now, code, subcode, data=b"", reason=""):
            self.resets.append((code, subcode, data))

    ipr, k = kernel()
    rt = RoutingTable(kernel=k, import_policy="any", max_prefix=5, max_prefix_action="reset")
    sess = FakeSession()
    h = rt.event_handler("t1", sess)
    rt.tunnel_up("t1", "tun1", "169.254.10.1")
    h(RoutesReceived([R(f"10.{i}.0.0/16") for i in range(5)], []))
    rt.flush()
    assert len(ipr.routes) == 5
    h(RoutesReceived([R("10.99.0.0/16")], []))
    rt.flush()
    assert sess.resets == [(6, 1, b"\x00\x01\x01\x00\x00\x00\x05")]
    assert ipr.routes == {}
    rt.close()


# ---------------------------------------------------------------- policy fast path == slow path
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32),
       st.sampled_from(["aws-default", "prefix-list", "any"]))
def test_policy_ipv4_fast_path_matches_ipaddress(addr, plen, mode):
    import ipaddress
    p = str(ipaddress.ip_network((addr, plen), strict=False))
    kw = dict(own_prefixes=("192.168.50.0/24", "10.0.0.0/8"), allow=("172.16.0.0/12", "10.0.0.0/8"),
              deny=("10.1.0.0/16",) if mode == "any" else ())
    fast = ImportPolicy(mode, **kw)
    slow = ImportPolicy(mode, **kw)
    object.__setattr__(slow, "_decide_v4", lambda _p: None)   # ImportPolicy is frozen
    assert fast._decide(p) == slow._decide(p)


def test_config_export_limit_counts_the_default_route():
    """At most 100 prefixes to a VGW, checked at config time; advertise_default is one more."""
    from conftest import BASE
    from cgwd.config import ConfigError, parse_config
    many = ", ".join(f'"10.{i}.0.0/16"' for i in range(100))
    text = BASE.replace('advertise = ["10.200.0.0/24"]', f"advertise = [{many}]")
    assert len(parse_config(text).vpns[0].advertise) == 100
    with pytest.raises(ConfigError, match="advertise_default.*101 prefixes"):
        parse_config(text.replace("remote_asn = 64512", "remote_asn = 64512\nadvertise_default = true"))
    many101 = ", ".join(f'"10.{i}.0.0/16"' for i in range(101))
    with pytest.raises(ConfigError, match="101 prefixes, more than max_advertise = 100"):
        parse_config(BASE.replace('advertise = ["10.200.0.0/24"]', f"advertise = [{many101}]"))
