"""RoutingTable: route sources -> RIB -> kernel, settings, life cycle, reconfigure, fail closed."""
import asyncio

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from cgwd.bgp.policy import ImportPolicy
from cgwd.bgp.routing import RoutingTable
from cgwd.bgp.session import EndOfRib, RoutesReceived, SessionDown
from cgwd.routing.table import RoutingSettings
from unit_config import BASE
from test_routing_kernel import kernel
from test_routing_rib import R, VPC


def tunnel_routes(ipr, metric=100):
    return {d: r for (d, _t, m), r in ipr.routes.items() if m == metric}


def unreachable(ipr):
    return sorted(d for (d, _t, m), r in ipr.routes.items() if r.get("type") == "unreachable")


# ---------------------------------------------------------------- glue
def test_routing_table_end_to_end_with_fake_kernel():
    ipr, k = kernel()
    now = [0.0]
    rt = RoutingTable(kernel=k, import_policy="aws-default", own_prefixes=["192.168.50.0/24"],
                      threaded=False, clock=lambda: now[0])
    rt.start()
    h1 = rt.event_handler("t1")
    h2 = rt.event_handler("t2")
    rt.tunnel_up("t1", "tun1", "169.254.10.1")
    rt.tunnel_up("t2", "tun2", "169.254.11.1")
    h1(RoutesReceived([R(), R("0.0.0.0/0"), R("192.168.50.0/24")], []))
    h2(RoutesReceived([R(path=(64512, 64512), nh="169.254.11.1")], []))
    h1(EndOfRib())
    assert list(tunnel_routes(ipr)) == [VPC]
    rows = rt.routes()
    assert [(r["tunnel"], r["installed"], r["best"]) for r in rows] == [("t1", True, True), ("t2", False, False)]
    assert rows[0]["as_path"] == [64512] and rows[0]["nexthop"] == "169.254.10.1" and rows[0]["source"] == "bgp"
    h1(SessionDown("hold timer expired", (4, 0, b""), True, False, 0))
    assert ipr.routes[(VPC, 254, 100)]["gateway"] == "169.254.11.1"
    rt.tunnel_down("t2")
    # fail closed: the learned VPC prefix is unreachable at the worse metric, not gone
    assert tunnel_routes(ipr) == {}
    assert unreachable(ipr) == [VPC] and ipr.routes[(VPC, 254, 1100)]["proto"] == 157
    assert "oif" not in ipr.routes[(VPC, 254, 1100)]          # tied to no interface
    assert rt.status()["unreachable"] == [VPC]
    rt.clear()
    assert ipr.routes == {}


def test_routing_table_threaded_worker_and_max_prefix_reset():
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
    assert len(tunnel_routes(ipr)) == 5
    h(RoutesReceived([R("10.99.0.0/16")], []))
    rt.flush()
    assert sess.resets == [(6, 1, b"\x00\x01\x01\x00\x00\x00\x05")]
    assert tunnel_routes(ipr) == {}
    assert len(unreachable(ipr)) == 5             # still fail closed after the teardown
    rt.close()


def test_fail_closed_off_gives_the_old_behaviour():
    ipr, k = kernel()
    rt = RoutingTable(kernel=k, import_policy="any", fail_closed=False, threaded=False,
                      static_routes=["10.50.0.0/16"])
    rt.start()
    h = rt.event_handler("t1")
    rt.tunnel_up("t1", "tun1", "169.254.10.1")
    h(RoutesReceived([R()], []))
    rt.tunnel_down("t1")
    assert ipr.routes == {} and rt.status()["unreachable"] == []


def test_configured_prefixes_are_unreachable_from_the_start():
    ipr, k = kernel()
    rt = RoutingTable(kernel=k, threaded=False, static_routes=["10.50.0.0/16", "10.51.0.0/16"])
    assert ipr.routes == {}
    rt.start()
    assert unreachable(ipr) == ["10.50.0.0/16", "10.51.0.0/16"]


def test_reconcile_restores_a_removed_fail_closed_route_and_drops_unguarded_ones():
    ipr, k = kernel()
    rt = RoutingTable(kernel=k, threaded=False, static_routes=["10.50.0.0/16"])
    rt.start()
    del ipr.routes[("10.50.0.0/16", 254, 1100)]
    ipr.routes[("10.77.0.0/16", 254, 1100)] = {"dst": "10.77.0.0/16", "proto": 157, "type": "unreachable"}
    rt.reconcile()
    assert unreachable(ipr) == ["10.50.0.0/16"]


def test_two_tables_on_one_kernel_table_do_not_remove_each_others_routes():
    """Two VPN connections (one routing table each) share table 254, metric and protocol:
    before, one table's reconciliation deleted the other's routes."""
    from cgwd.routing.kernel import KernelRoutes
    from test_routing_kernel import FakeIPR
    ipr = FakeIPR()
    ka, kb = KernelRoutes(254, 100, 157, iproute=ipr), KernelRoutes(254, 100, 157, iproute=ipr)
    a = RoutingTable(kernel=ka, import_policy="any", threaded=False, static_routes=["10.50.0.0/16"])
    b = RoutingTable(kernel=kb, import_policy="any", threaded=False, static_routes=["10.60.0.0/16"])
    a.start()
    b.start()
    a.event_handler("t1")(RoutesReceived([R("10.1.0.0/16")], []))
    b.event_handler("t2")(RoutesReceived([R("10.2.0.0/16", nh="169.254.11.1")], []))
    a.tunnel_up("t1", "tun1", "169.254.10.1")
    b.tunnel_up("t2", "tun2", "169.254.11.1")
    a.reconcile()
    b.reconcile()
    assert sorted(tunnel_routes(ipr)) == ["10.1.0.0/16", "10.2.0.0/16"]
    assert unreachable(ipr) == ["10.1.0.0/16", "10.2.0.0/16", "10.50.0.0/16", "10.60.0.0/16"]


# ---------------------------------------------------------------- settings reach the runtime
def _behaviour(rt, s: RoutingSettings):
    """What the RIB does equals what the settings say (not only the stored values)."""
    rib = rt.rib
    assert rib.ecmp == s.ecmp and rib.max_prefix == s.max_prefix
    assert rib.max_prefix_action == s.max_prefix_action and rib.import_policy == s.import_policy
    assert rib.protected.addresses == s.protected and rib.fail_closed == s.fail_closed
    assert rib.configured == {p for p in s.static_routes if rib.protected.covered(p) is None}
    # ECMP: two equal paths give two next hops exactly when ecmp is on
    probe = RoutingTable(s, threaded=False)
    probe.tunnel_up("a", "tun1", "169.254.10.1", 0)
    probe.tunnel_up("b", "tun2", "169.254.11.1", 1)
    probe.routes_received("a", [R("10.9.0.0/16")], [])
    probe.routes_received("b", [R("10.9.0.0/16", nh="169.254.11.1")], [])
    if s.import_policy.accepts("10.9.0.0/16"):
        assert len(probe.rib.selected["10.9.0.0/16"]) == (2 if s.ecmp else 1)
    # max-prefix: the limit bites at exactly max_prefix + 1 routes
    if s.max_prefix is not None and s.max_prefix <= 50 and s.import_policy.mode == "any":
        probe2 = RoutingTable(s, threaded=False)
        probe2.tunnel_up("a", "tun1", "169.254.10.1", 0)
        probe2.routes_received("a", [R(f"10.20.{i}.0/24") for i in range(s.max_prefix)], [])
        assert not probe2.rib.counts("a")["max_prefix_hit"]
        action = probe2.routes_received("a", [R("10.30.0.0/16")], [])
        accepted = probe2.rib.counts("a")["accepted"]
        if s.max_prefix_action == "reset":
            assert action == "reset" and accepted == 0
        else:
            assert action is None and probe2.rib.counts("a")["max_prefix_hit"]
            assert accepted == s.max_prefix + (s.max_prefix_action == "warn")


SETTINGS = st.builds(
    RoutingSettings,
    ecmp=st.booleans(),
    import_policy=st.sampled_from(["aws-default", "any", "none", ["10.0.0.0/8"], None]),
    max_prefix=st.one_of(st.none(), st.integers(1, 50), st.integers(1000, 6000)),
    routing=st.sampled_from(["bgp", "static"]),
    static_primary=st.sampled_from(["", "tun1", "tun2"]),
    static_hold_down=st.sampled_from([0, 60.0]),
    health_check=st.sampled_from([None, 5]),
    max_prefix_action=st.sampled_from(["warn", "drop", "reset"]),
    own_prefixes=st.lists(st.sampled_from(["192.168.50.0/24", "10.200.0.0/24"]), max_size=2).map(tuple),
    protected=st.lists(st.sampled_from(["203.0.113.2", "198.51.100.2", "192.168.1.10"]), max_size=3).map(tuple),
    fail_closed=st.booleans(),
    static_routes=st.lists(st.sampled_from(["10.100.0.0/16", "10.101.0.0/16", "0.0.0.0/0"]), max_size=2).map(tuple),
    reconcile_interval=st.sampled_from([5, 30.0]),
)


@hsettings(max_examples=150, deadline=None)
@given(first=SETTINGS, second=SETTINGS)
def test_every_setting_given_is_what_the_table_runs_with_also_after_reconfigure(first, second):
    rt = RoutingTable(first, threaded=False)
    assert rt.settings == first
    _behaviour(rt, first)
    changed = rt.reconfigure(second)
    assert rt.settings == second
    _behaviour(rt, second)
    assert set(changed) == {f for f in first.__dataclass_fields__ if getattr(first, f) != getattr(second, f)}


STATIC = BASE.replace("local_asn = 65000\nremote_asn = 64512\nadvertise = [\"10.200.0.0/24\"]\n",
                      'routing = "static"\nstatic_routes = ["10.100.0.0/16", "10.101.0.0/16"]\n'
                      'static_primary = "tun2"\nstatic_hold_down = 45\nhealth_check = 5\necmp = true\n')


def test_settings_from_a_parsed_config_carry_every_vpn_level_value():
    """config -> RoutingSettings.from_config -> RoutingTable: nothing falls on the way (the
    max_prefix a trailing comment swallowed in the daemon is the case that was missed)."""
    from cgwd.config import parse_config
    text = BASE.replace('advertise = ["10.200.0.0/24"]',
                        'advertise = ["10.200.0.0/24"]\ngateway_type = "tgw"\nmax_prefix = 4321\n'
                        'max_prefix_action = "drop"\necmp = false\nimport = ["10.100.0.0/16"]\n'
                        'fail_closed = false')
    cfg = parse_config(text)
    vpn = cfg.vpns[0]
    s = RoutingSettings.from_config(cfg, vpn)
    rt = RoutingTable(s, threaded=False)
    assert (rt.rib.max_prefix, rt.rib.max_prefix_action, rt.rib.ecmp) == (4321, "drop", False)
    inside = [str(t.inside_cidr) for t in vpn.tunnels]
    assert rt.rib.import_policy == vpn.import_policy.with_own(["10.200.0.0/24"]).with_inside(inside)
    assert s.inside == tuple(inside) and len(inside) == 2
    assert rt.rib.import_policy.accepts("10.100.1.0/24") and not rt.rib.import_policy.accepts("10.9.0.0/16")
    assert set(rt.rib.protected.addresses) == {"203.0.113.2", "198.51.100.2", "198.51.100.3"}
    assert s.reconcile_interval == cfg.daemon.reconcile_interval and not rt.rib.fail_closed
    assert s.routing == "bgp" and s.static_routes == () and s.static_primary == ""
    tgw = parse_config(BASE.replace('advertise = ["10.200.0.0/24"]', 'advertise = ["10.200.0.0/24"]\ngateway_type = "tgw"'))
    s2 = RoutingSettings.from_config(tgw, tgw.vpns[0])
    assert (s2.max_prefix, s2.ecmp, s2.fail_closed) == (5000, True, True)
    st = parse_config(STATIC)
    s3 = RoutingSettings.from_config(st, st.vpns[0])
    assert (s3.routing, s3.static_primary, s3.static_hold_down, s3.health_check, s3.ecmp) == (
        "static", "tun2", 45, 5, True)
    assert s3.static_routes == ("10.100.0.0/16", "10.101.0.0/16")
    assert RoutingTable(s3, threaded=False).rib.guarded == {"10.100.0.0/16", "10.101.0.0/16"}
    s4 = RoutingSettings.from_config(st, parse_config(STATIC.replace('static_primary = "tun2"\n', "")).vpns[0])
    assert s4.static_primary == "tun1"


# ---------------------------------------------------------------- reconfigure in place
def test_reconfigure_applies_import_policy_ecmp_and_max_prefix_in_place():
    ipr, k = kernel()
    s = RoutingSettings(import_policy="aws-default", ecmp=False, max_prefix=10, max_prefix_action="drop")
    rt = RoutingTable(s, kernel=k, threaded=False)
    rt.start()
    h1, h2 = rt.event_handler("t1"), rt.event_handler("t2")
    rt.tunnel_up("t1", "tun1", "169.254.10.1", 0)
    rt.tunnel_up("t2", "tun2", "169.254.11.1", 1)
    h1(RoutesReceived([R(), R("10.101.0.0/16")] + [R(f"10.{i}.0.0/16") for i in range(20)], []))
    h2(RoutesReceived([R(nh="169.254.11.1")], []))
    assert rt.rib.counts("t1")["accepted"] == 10
    assert ipr.routes[(VPC, 254, 100)]["gateway"] == "169.254.10.1"
    # ECMP on: both tunnels carry the VPC prefix; the import policy narrows; the limit grows
    rt.reconfigure(RoutingSettings(import_policy=["10.100.0.0/16", "10.0.0.0/12"], ecmp=True,
                                   max_prefix=100, max_prefix_action="drop"))
    assert len(ipr.routes[(VPC, 254, 100)]["multipath"]) == 2
    assert "10.101.0.0/16" not in tunnel_routes(ipr)
    # the routes dropped at the old limit come in now (kept, not forgotten)
    assert {f"10.{i}.0.0/16" for i in range(16)} <= set(tunnel_routes(ipr))
    assert "10.16.0.0/16" not in tunnel_routes(ipr)
    assert rt.rib.counts("t1")["refused"]["import_policy"] >= 1
    # back to a wide policy: what was refused comes back without the peer resending
    rt.reconfigure(RoutingSettings(import_policy="any", ecmp=False, max_prefix=100))
    assert "10.101.0.0/16" in tunnel_routes(ipr) and "10.19.0.0/16" in tunnel_routes(ipr)
    assert ipr.routes[(VPC, 254, 100)]["gateway"] == "169.254.10.1"


def test_reconfigure_to_a_lower_limit_with_reset_resets_the_session():
    class FakeSession:
        resets = 0

        def reset(self, *a, **kw):
            FakeSession.resets += 1

    rt = RoutingTable(import_policy="any", max_prefix=100, max_prefix_action="reset", threaded=False)
    h = rt.event_handler("t1", FakeSession())
    rt.tunnel_up("t1", "tun1", "169.254.10.1")
    h(RoutesReceived([R(f"10.{i}.0.0/16") for i in range(20)], []))
    rt.reconfigure(RoutingSettings(import_policy="any", max_prefix=10, max_prefix_action="reset"))
    assert FakeSession.resets == 1 and rt.rib.selected == {}


# ---------------------------------------------------------------- life cycle
def test_start_stop_runs_maintenance_for_every_table_including_one_added_later():
    """Before: the daemon started a maintain() task per table at start only; a VPN added by
    reload got none (no reconciliation, graceful-restart stale routes never expired)."""
    async def main():
        now = [0.0]
        first = RoutingTable(import_policy="any", reconcile_interval=0.01, threaded=False, clock=lambda: now[0])
        first.start()
        await asyncio.sleep(0.05)
        later = RoutingTable(import_policy="any", reconcile_interval=0.01, threaded=False, clock=lambda: now[0])
        later.start()
        h = later.event_handler("t1")
        later.tunnel_up("t1", "tun1", "169.254.10.1")
        h(RoutesReceived([R()], []))
        h(SessionDown("connection lost", None, False, True, 120))
        assert VPC in later.rib.selected                 # stale, kept
        now[0] = 121.0
        for _ in range(200):
            await asyncio.sleep(0.01)
            if VPC not in later.rib.selected:
                break
        assert VPC not in later.rib.selected             # expired by the table's own task
        assert later._task is not None and not later._task.done()
        await first.stop()
        await later.stop()
        assert later._task is None
    asyncio.run(main())


def test_a_failing_maintenance_round_does_not_end_the_task():
    async def main():
        rt = RoutingTable(import_policy="any", reconcile_interval=0.01, threaded=False)
        calls = []

        def boom():
            calls.append(1)
            raise RuntimeError("netlink went away")
        rt.expire_stale = boom
        rt.start()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(calls) >= 3:
                break
        assert len(calls) >= 3 and rt.maintenance_errors >= 3 and not rt._task.done()
        await rt.stop()
    asyncio.run(main())


def test_outside_addresses_are_protected_per_reason_in_status():
    rt = RoutingTable(import_policy="any", protected=("198.51.100.2", "10.0.0.5"), threaded=False)
    h = rt.event_handler("t1")
    rt.tunnel_up("t1", "tun1", "169.254.10.1")
    h(RoutesReceived([R("0.0.0.0/1"), R("128.0.0.0/1"), R("198.51.100.0/24"), R(), R("0.0.0.0/0")], []))
    assert list(rt.rib.selected) == [VPC]
    assert rt.status()["refused"]["t1"] == {"covers_outside_address": 4}
    rt2 = RoutingTable(import_policy="aws-default", protected=("198.51.100.2",), threaded=False)
    h2 = rt2.event_handler("t1")
    rt2.tunnel_up("t1", "tun1", "169.254.10.1")
    h2(RoutesReceived([R("0.0.0.0/0"), R("128.0.0.0/1")], []))
    assert rt2.status()["refused"]["t1"] == {"import_policy": 1, "covers_outside_address": 1}
    assert ImportPolicy("aws-default").accepts("128.0.0.0/1")  # the policy alone would take it


def test_settings_validation():
    with pytest.raises(ValueError):
        RoutingSettings(max_prefix_action="explode")
    with pytest.raises(ValueError):
        RoutingSettings(max_prefix=0)
    assert RoutingSettings(import_policy=None).import_policy.mode == "deny"


def test_a_crashed_runs_fail_closed_routes_guard_the_vpc_until_the_next_run_carries_it():
    """Found by the chaos test: after SIGKILL + restart, the start-up cleanup deleted the
    crashed run's unreachable route and nothing guarded the VPC prefix until BGP learned it
    again over a new tunnel: seconds of pings for the VPC left in cleartext by the default
    route. Now the new run keeps them and guards their prefixes as if learned."""
    from cgwd.routing.kernel import KernelRoutes
    ipr, k = kernel()
    rt = RoutingTable(kernel=k, import_policy="any", threaded=False)
    rt.start()
    rt.tunnel_up("t1", "tun1", "169.254.10.1")
    rt.event_handler("t1")(RoutesReceived([R()], []))
    assert list(tunnel_routes(ipr)) == [VPC] and unreachable(ipr) == [VPC]
    del ipr.routes[(VPC, 254, 100)]  # SIGKILL: the TUN and its route go with the process
    ipr.routes[("10.7.0.0/16", 254, 100)] = {"dst": "10.7.0.0/16", "proto": 157}  # a stale one of ours
    ipr.routes[("10.8.0.0/16", 254, 1177)] = {"dst": "10.8.0.0/16", "proto": 157, "type": "unreachable"}
    fresh = KernelRoutes(254, 100, 157, iproute=ipr)
    assert fresh.flush_stale(keep_unreachable=True) == 2  # the stale route, and one at another metric
    assert fresh.kept == {VPC} and unreachable(ipr) == [VPC] and tunnel_routes(ipr) == {}
    rt2 = RoutingTable(kernel=fresh, import_policy="any", threaded=False)
    rt2.inherit_guards(fresh.kept)
    rt2.start()
    rt2.reconcile()  # the periodic reconciliation keeps it: the new run guards it
    assert unreachable(ipr) == [VPC] and rt2.status()["unreachable"] == [VPC]
    rt2.tunnel_up("t1", "tun1", "169.254.10.1")
    rt2.event_handler("t1")(RoutesReceived([R()], []))
    assert list(tunnel_routes(ipr)) == [VPC] and unreachable(ipr) == [VPC]
    rt2.tunnel_down("t1")
    assert tunnel_routes(ipr) == {} and unreachable(ipr) == [VPC]
    rt2.clear()  # a clean stop removes them with the rest
    assert ipr.routes == {}


def test_without_keep_the_start_up_cleanup_removes_every_route_of_ours():
    from cgwd.routing.kernel import KernelRoutes
    from cgwd.routing.rib import RibChanges
    ipr, k = kernel()
    k.apply(RibChanges(guard_add={VPC}))
    fresh = KernelRoutes(254, 100, 157, iproute=ipr)
    assert fresh.flush_stale() == 1 and fresh.kept == set() and ipr.routes == {}
