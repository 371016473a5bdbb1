"""LAN-side BGP with a fake clock: a router's BgpSession wired in memory to cgwd's LAN
neighbor, the VPN's real RoutingTable (no kernel) and the tunnels' real BgpParts.

What the router is sent as the tunnels go up and down, what of its prefixes the tunnels
send to AWS (import filter, the gateway's limit), and the limits table-driven on the core."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cgwd.bgp.message import AS_SEQUENCE, Route
from cgwd.bgp.session import BgpPeerConfig, BgpSession, RoutesReceived
from cgwd.config import parse_config
from cgwd.lan.config import ImportFilter, PrefixRule
from cgwd.lan.core import LanExchange
from cgwd.lan.format import format_lan
from cgwd.metrics import render_metrics
from cgwd.lan.part import LanBgp, lan_routing_settings
from cgwd.routing.source import ORIGINATED
from cgwd.routing.table import RoutingSettings, RoutingTable
from cgwd.tunnel.bgp_part import BgpPart
from unit_config import BASE

VPC = "10.100.0.0/16"
AWS_PATH = ((AS_SEQUENCE, (64512,)),)


def lan_config(*, imp='["10.50.0.0/16 le 24"]', remote_asn=65010, max_advertise=None):
    text = BASE
    if max_advertise is not None:
        text = text.replace('advertise = ["10.200.0.0/24"]', f'advertise = ["10.200.0.0/24"]\nmax_advertise = {max_advertise}')
    return parse_config(text + f"""
[[lan_neighbor]]
name = "core1"
address = "10.200.0.10"
local_address = "10.200.0.1"
remote_asn = {remote_asn}
import = {imp}
""")


class Site:
    """The box (routing table, tunnels' BGP parts, LAN side) and one router, in memory."""

    def __init__(self, cfg):
        self.now = 0.0
        vpn = cfg.vpns[0]
        self.routing = RoutingTable(RoutingSettings.from_config(cfg, vpn), kernel=None, clock=lambda: self.now,
                                    name=vpn.name)
        self.parts = [BgpPart(t, self.routing) for t in vpn.tunnels]
        self.lan_table = RoutingTable(lan_routing_settings(cfg), kernel=None, name="lan")
        self.lan = LanBgp(lambda: self.parts, table=self.lan_table, resolve={"10.200.0.10": "lan0"}.get)
        self.lan.attach(vpn.name, self.routing)
        ncfg = cfg.lan_neighbors[0]
        self.n = self.lan.add(ncfg)
        self.router = BgpSession(BgpPeerConfig(str(ncfg.address), str(ncfg.local_address), ncfg.remote_asn,
                                               ncfg.local_asn, "10.200.0.10", hold_time=90))
        self.got: dict[str, Route] = {}      # the router's Adj-RIB-In
        self.n.session.start(self.now)
        self.router.start(self.now)
        self.n.session.connection_made(self.now, outbound=True)
        self.router.connection_made(self.now, outbound=False)
        self.pump()
        assert self.n.session.state == "Established" == self.router.state

    def pump(self):
        for _ in range(50):
            moved = False
            for src, dst, d in ((self.n.session, self.router, False), (self.router, self.n.session, True)):
                data = src.data_to_send(not d)
                if data:
                    dst.receive_data(data, self.now, outbound=d)
                    moved = True
            while (ev := self.n.session.next_event()) is not None:
                self.n._on_event(ev)
            while (ev := self.router.next_event()) is not None:
                if isinstance(ev, RoutesReceived):
                    for p in ev.withdrawn:
                        self.got.pop(p, None)
                    self.got.update({r.prefix: r for r in ev.announced})
            if not moved:
                return

    def aws_route(self, tunnel: int, prefix: str = VPC):
        name = self.parts[tunnel].name
        self.routing.routes_received(name, [Route(prefix, f"169.254.1{tunnel}.1", AWS_PATH)], [])

    def tunnel(self, i: int, up: bool):
        t = self.parts[i].cfg
        if up:
            self.routing.tunnel_up(t.name, t.ifname, str(t.inside_remote), i)
        else:
            self.routing.tunnel_down(t.name)
        self.pump()

    def router_announces(self, prefixes, withdrawn=()):
        self.router.announce([Route(p, "10.200.0.10") for p in prefixes])
        self.router.withdraw(list(withdrawn))
        self.router._flush_updates()
        self.pump()

    def to_aws(self, i: int) -> set[str]:
        return {r.prefix for r in self.parts[i].session.advertised()}


def test_the_vpc_prefix_is_sent_next_hop_self_while_a_tunnel_carries_it_and_withdrawn_when_none_does():
    s = Site(lan_config())
    assert s.got == {}
    s.tunnel(0, True)
    assert s.got == {}, "a tunnel that is up but has no route carries nothing"
    s.aws_route(0)
    s.pump()
    r = s.got[VPC]
    assert r.next_hop == "10.200.0.1" and r.as_path_list() == [65000, 64512], "ours, then AWS's"
    s.tunnel(1, True)
    s.aws_route(1)
    s.pump()
    s.tunnel(0, False)
    assert VPC in s.got, "the other tunnel still carries it: no withdrawal"
    s.tunnel(1, False)
    assert VPC not in s.got, "no tunnel carries it: withdrawn at once"
    s.tunnel(0, True)
    assert VPC not in s.got, "the routes left with the tunnel; back only when AWS announces them again"
    s.aws_route(0)
    s.pump()
    assert VPC in s.got
    st = s.lan.status()["neighbors"][0]
    assert st["sent"] == [VPC] and st["state"] == "idle"  # no speaker in this test: the part is not running


def test_ibgp_routers_get_local_pref_and_no_as_of_ours():
    s = Site(lan_config(remote_asn=65000))
    s.tunnel(0, True)
    s.aws_route(0)
    s.pump()
    r = s.got[VPC]
    assert r.as_path == AWS_PATH and r.local_pref == 100 and r.next_hop == "10.200.0.1", \
        "iBGP: AWS's path unchanged, no AS of ours added"
    s.router_announces(["10.50.1.0/24"])       # an iBGP route with an empty AS path is taken
    assert "10.50.1.0/24" in s.to_aws(0)


def test_the_import_filter_decides_what_reaches_aws_and_a_session_loss_withdraws_it():
    s = Site(lan_config())
    s.router_announces(["10.50.1.0/24", "10.50.2.0/25", "10.60.0.0/16", "169.254.10.0/30"])
    for i in (0, 1):
        assert s.to_aws(i) == {"10.200.0.0/24", "10.50.1.0/24"}
    st = s.lan.status()["neighbors"][0]
    assert st["received"] == ["10.50.1.0/24"]
    assert set(st["refused"]) == {"10.50.2.0/25", "10.60.0.0/16", "169.254.10.0/30"}
    assert st["refused_total"] == 3
    (nh,) = s.lan_table.rib.selected["10.50.1.0/24"]
    assert (nh.ifname, nh.gateway) == ("lan0", "10.200.0.10"), "the box routes the VPC's replies to the router"
    assert set(s.lan_table.rib.selected) == {"10.50.1.0/24"}
    s.router_announces([], withdrawn=["10.50.1.0/24"])
    assert s.to_aws(0) == {"10.200.0.0/24"} and not s.lan_table.rib.selected
    s.router_announces(["10.50.3.0/24"])
    assert "10.50.3.0/24" in s.to_aws(1)
    s.n.session.connection_lost(s.now, outbound=True)
    s.pump()
    assert s.to_aws(0) == s.to_aws(1) == {"10.200.0.0/24"}, "the router is gone: so are its prefixes"
    assert not s.lan_table.rib.selected


def test_over_the_limit_the_newest_are_held_never_the_ones_aws_has():
    s = Site(lan_config(imp='["10.50.0.0/16 le 24"]', max_advertise=3))
    s.router_announces(["10.50.1.0/24", "10.50.2.0/24"])
    assert s.to_aws(0) == {"10.200.0.0/24", "10.50.1.0/24", "10.50.2.0/24"}
    s.router_announces(["10.50.0.0/24"])      # sorts first, arrives last: held
    assert s.to_aws(0) == {"10.200.0.0/24", "10.50.1.0/24", "10.50.2.0/24"}
    st = s.lan.status()
    assert st["to_aws"]["tun1"]["held"] == ["10.50.0.0/24"] and st["held_now"] == 2 and st["held_total"] == 2
    s.router_announces([], withdrawn=["10.50.1.0/24"])
    assert s.to_aws(0) == {"10.200.0.0/24", "10.50.2.0/24", "10.50.0.0/24"}, "room made: the held one goes"
    assert s.lan.status()["held_now"] == 0


@pytest.mark.parametrize("static, limit, learned, sent, held", [
    ([], 100, ["10.0.1.0/24"], ["10.0.1.0/24"], []),
    (["10.9.0.0/16"], 2, ["10.0.1.0/24", "10.0.2.0/24"], ["10.0.1.0/24"], ["10.0.2.0/24"]),
    (["10.9.0.0/16"], 1, ["10.0.1.0/24"], [], ["10.0.1.0/24"]),
    (["10.9.0.0/16", "10.8.0.0/16"], 1, ["10.0.1.0/24"], [], ["10.0.1.0/24"]),
    (["10.0.1.0/24"], 2, ["10.0.1.0/24", "10.0.2.0/24"], ["10.0.2.0/24"], []),
    ([], None, [f"10.0.{i}.0/24" for i in range(5)], [f"10.0.{i}.0/24" for i in range(5)], []),
    ([], 1000, [f"10.{i // 256}.{i % 256}.0/24" for i in range(1001)],
     [f"10.{i // 256}.{i % 256}.0/24" for i in range(1000)], ["10.3.232.0/24"]),
    ([], 100, ["2001:db8:1::/48", "10.0.1.0/24"], ["10.0.1.0/24"], []),
])
def test_limits_table(static, limit, learned, sent, held):
    """Rows: the static exports alone at or over the limit leave no room; a LAN prefix already
    static is not counted twice; a TGW's 1000; only the VPN's inner family counts."""
    ex = LanExchange()
    ex.add_router("r", ["v"], ImportFilter((PrefixRule.parse("0.0.0.0/0 le 32"), PrefixRule.parse("::/0 le 128"))))
    ex.received("r", learned, [])
    plan = ex.to_aws("v", 4, static, limit)
    assert list(plan.sent) == sent and list(plan.held) == held


def test_a_router_not_serving_the_vpn_gives_it_nothing_and_two_routers_share_one_place():
    ex = LanExchange()
    allow = ImportFilter((PrefixRule.parse("10.0.0.0/8 le 24"),))
    ex.add_router("a", ["v"], allow)
    ex.add_router("b", ["v", "w"], allow)
    ex.received("a", ["10.0.1.0/24", "10.0.2.0/24"], [])
    ex.received("b", ["10.0.3.0/24", "10.0.1.0/24"], [])
    assert ex.learned("w", 4) == ["10.0.1.0/24", "10.0.3.0/24"], "a serves only v: its 10.0.2.0/24 is not for w"
    assert ex.learned("v", 4) == ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]
    ex.router_down("a")
    assert ex.learned("v", 4) == ["10.0.1.0/24", "10.0.3.0/24"], "b still gives 10.0.1.0/24: it keeps its place"


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=60), st.integers(0, 10))
def test_the_sent_set_never_exceeds_the_room_and_never_drops_a_prefix_while_it_is_learned(ops, limit):
    ex = LanExchange()
    ex.add_router("r", ["v"], ImportFilter((PrefixRule.parse("10.0.0.0/8 le 24"),)))
    sent: tuple = ()
    for announce, i in ops:
        p = f"10.0.{i}.0/24"
        ex.received("r", [p] if announce else [], [] if announce else [p])
        plan = ex.to_aws("v", 4, [], limit)
        assert len(plan.sent) <= limit and set(plan.sent) | set(plan.held) == set(ex.learned("v", 4))
        learned = set(ex.learned("v", 4))
        assert {q for q in sent if q in learned} <= set(plan.sent), "a prefix AWS has was displaced"
        sent = plan.sent


def test_status_text_and_metrics_show_what_each_side_sent_and_what_is_held():
    s = Site(lan_config(imp='["10.50.0.0/16 le 24"]', max_advertise=2))
    s.tunnel(0, True)
    s.aws_route(0)
    s.router_announces(["10.50.1.0/24", "10.50.2.0/24", "10.60.0.0/16"])
    lan = s.lan.status()
    text = "\n".join(format_lan(lan, now=0))
    assert "core1: 10.200.0.10 AS65010 (eBGP from 10.200.0.1 AS65000, as_path aws)" in text
    assert "accepted 2: 10.50.1.0/24, 10.50.2.0/24" in text and "refused 1: 10.60.0.0/16 (not in the import filter)" in text
    assert f"we sent 1 (next hop 10.200.0.1): {VPC}" in text
    assert "! 1 held back over the gateway's limit (room 1): 10.50.2.0/24" in text
    metrics = render_metrics({"lan": lan})
    assert 'cgwd_lan_prefixes_held{tunnel="tun1"} 1' in metrics
    assert 'cgwd_lan_prefixes_accepted{neighbor="core1"} 2' in metrics
    assert "cgwd_lan_prefixes_held_total 2" in metrics


def test_a_router_over_its_max_prefix_gets_the_rest_refused_and_counted_not_reset():
    ex = LanExchange()
    ex.add_router("r", ["v"], ImportFilter((PrefixRule.parse("10.0.0.0/8 le 24"),)), max_prefix=2)
    got = ex.received("r", ["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"], [])
    assert [v.value for v in got.values()] == ["accepted", "accepted", "refused"]
    assert ex.routers["r"].refused == {"10.0.3.0/24": "over max_prefix 2"}
    ex.received("r", ["10.0.1.0/24"], ["10.0.2.0/24"])
    assert ex.received("r", ["10.0.3.0/24"], [])["10.0.3.0/24"].value == "accepted", "room again: taken"
    assert ex.learned("v", 4) == ["10.0.1.0/24", "10.0.3.0/24"]


def test_a_reload_narrowing_the_filter_withdraws_from_aws_in_place():
    import asyncio
    import dataclasses

    s = Site(lan_config(imp='["10.50.0.0/16 le 24"]'))
    s.router_announces(["10.50.1.0/24", "10.50.2.0/24"])
    assert s.to_aws(0) >= {"10.50.1.0/24", "10.50.2.0/24"}
    old = s.n.cfg
    new = dataclasses.replace(old, import_filter=ImportFilter((PrefixRule.parse("10.50.1.0/24"),)))
    out = asyncio.run(s.lan.reconfigure([new]))
    assert out["applied"] == {"core1": ["import_filter"]} and not out["restarted"]
    assert s.lan.neighbors["core1"] is s.n, "the session was kept"
    assert s.to_aws(0) == {"10.200.0.0/24", "10.50.1.0/24"}
    assert s.lan.status()["neighbors"][0]["refused"] == {"10.50.2.0/24": "not in the import filter"}
    assert set(s.lan_table.rib.selected) == {"10.50.1.0/24"}


STATIC_VPN = """
[[vpn]]
name = "vpn-static"
local_address = "203.0.113.2"
routing = "static"
static_routes = ["10.100.0.0/16"]

  [[vpn.tunnel]]
  name = "st1"
  remote_address = "198.51.100.2"
  psk = "Kq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0"
  inside_cidr = "169.254.10.0/30"

[[lan_neighbor]]
address = "10.200.0.10"
local_address = "10.200.0.1"
remote_asn = 65010
local_asn = 65000
import = []
"""


def test_a_static_vpns_routes_go_to_the_lan_while_a_tunnel_carries_them():
    from cgwd.routing.static import StaticRoute

    cfg = parse_config(STATIC_VPN)
    vpn = cfg.vpns[0]
    routing = RoutingTable(RoutingSettings.from_config(cfg, vpn), kernel=None, name=vpn.name)
    lan = LanBgp(lambda: [])
    lan.attach(vpn.name, routing)
    n = lan.add(cfg.lan_neighbors[0])
    routing.offer("st1", [StaticRoute(VPC)])
    assert n.sent() == []
    routing.tunnel_up("st1", "cgw-st1", "169.254.10.1", 0)
    assert n.sent() == [VPC]
    routing.tunnel_down("st1")
    assert n.sent() == []


def test_a_lan_prefix_equal_to_or_inside_a_carried_vpc_prefix_is_neither_sent_nor_routed():
    s = Site(lan_config(imp='["10.0.0.0/8 le 24"]'))
    s.router_announces(["10.100.5.0/24", "10.0.0.0/8", "10.50.1.0/24"])
    assert s.to_aws(0) == {"10.200.0.0/24", "10.100.5.0/24", "10.0.0.0/8", "10.50.1.0/24"}
    s.tunnel(0, True)
    s.aws_route(0)
    s.pump()
    assert s.to_aws(0) == {"10.200.0.0/24", "10.0.0.0/8", "10.50.1.0/24"}, "inside the VPC: no longer sent"
    assert set(s.lan_table.rib.selected) == {"10.0.0.0/8", "10.50.1.0/24"}, "nor routed to the router"
    assert s.lan.status()["neighbors"][0]["shadowed"] == {"10.100.5.0/24": VPC}
    s.tunnel(0, False)
    assert "10.100.5.0/24" in s.to_aws(0) and "10.100.5.0/24" in s.lan_table.rib.selected


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(8, 24)), max_size=20),
       st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_shadowed_is_exactly_equal_or_inside_a_carried_prefix(carried, a, plen):
    import ipaddress
    ex = LanExchange()
    nets = {ipaddress.ip_network((b << 24, n), strict=False) for b, n in carried}
    ex.set_carried("v", {str(n): ORIGINATED for n in nets})
    p = ipaddress.ip_network((a, plen), strict=False)
    got = ex.shadowed(str(p))
    inside = [n for n in nets if p.subnet_of(n)]
    assert (got is not None) == bool(inside)
    if got is not None:
        assert ipaddress.ip_network(got) in inside


def test_summaries_go_to_aws_in_place_of_their_components_and_count_once_against_the_limit():
    ex = LanExchange()
    allow = ImportFilter((PrefixRule.parse("10.0.0.0/8 le 24"),))
    ex.add_router("r", ["v"], allow, summaries=["10.50.0.0/16"])
    ex.received("r", ["10.60.1.0/24", "10.50.1.0/24", "10.50.2.0/24", "10.61.0.0/24"], [])
    assert ex.learned("v", 4) == ["10.60.1.0/24", "10.50.0.0/16", "10.61.0.0/24"]
    plan = ex.to_aws("v", 4, ["10.200.0.0/24"], 3)
    assert plan.sent == ("10.60.1.0/24", "10.50.0.0/16") and plan.held == ("10.61.0.0/24",)
    ex.received("r", [], ["10.50.1.0/24"])
    assert ex.learned("v", 4) == ["10.60.1.0/24", "10.50.0.0/16", "10.61.0.0/24"], "one component is enough"
    ex.received("r", [], ["10.50.2.0/24"])
    assert ex.learned("v", 4) == ["10.60.1.0/24", "10.61.0.0/24"]
    assert ex.routable("r") == ["10.60.1.0/24", "10.61.0.0/24"]


def test_a_router_is_sent_the_prefixes_of_its_sessions_family_only():
    import dataclasses
    import ipaddress

    cfg = lan_config()
    lan = LanBgp(lambda: [])
    v4 = lan.add(cfg.lan_neighbors[0])
    v6 = lan.add(dataclasses.replace(cfg.lan_neighbors[0], name="core6", address=ipaddress.ip_address("fd00:200::10"),
                                     local_address=ipaddress.ip_address("fd00:200::1")))
    lan.exchange.set_carried("vpn-0123456789abcdef0", {VPC: ORIGINATED, "2001:db8:100::/56": ORIGINATED})
    lan.refresh_lan()
    assert v4.sent() == [VPC] and v6.sent() == ["2001:db8:100::/56"]
    assert not v4.session.export_skipped and not v6.session.export_skipped
