"""The AS path of what cgwd sends a LAN router (issue 17, ``as_path`` on a ``[[lan_neighbor]]``).

With ``as_path = "aws"`` (the default) a VPC prefix carries the path its best route was learned
with from AWS: on eBGP the router sees ``local_asn [prepend copies] aws_path``, on iBGP AWS's path
unchanged; ``"originate"`` sends cgwd's own path only. Checked on the wire (the router is a real
BgpSession fed the bytes cgwd's LAN session sends): paths, ORIGIN, prepend, iBGP, failover
between tunnels (the path follows the best route, nothing is re-sent when it is equal), a
static VPN (no learned path: originated), summaries towards AWS, config errors and a reload."""
import asyncio
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgwd.bgp.policy import ImportPolicy
from cgwd.bgp.message import AS_SEQUENCE, AS_SET, ORIGIN_IGP, ORIGIN_INCOMPLETE, Route
from cgwd.bgp.session import BgpPeerConfig, BgpSession, RoutesReceived
from cgwd.config import ConfigError, parse_config
from cgwd.lan.core import LanExchange
from cgwd.lan.format import format_lan
from cgwd.lan.part import LanBgp, lan_routes, prepend_path
from cgwd.routing.rib import Rib
from cgwd.routing.source import ORIGINATED, LearnedPath
from cgwd.routing.static import StaticRoute
from cgwd.routing.table import RoutingSettings, RoutingTable
from test_lan_exchange import STATIC_VPN, VPC, Site
from unit_config import BASE

ASN, AWS = 65000, 64512


def config(*, as_path=None, remote_asn=65010, prepend=0, extra="", base=BASE):
    lines = [f'as_path = "{as_path}"' if as_path is not None else "", f"prepend = {prepend}" if prepend else "", extra]
    return parse_config(base + f"""
[[lan_neighbor]]
name = "core1"
address = "10.200.0.10"
local_address = "10.200.0.1"
remote_asn = {remote_asn}
import = ["10.50.0.0/16 le 24"]
""" + "\n".join(x for x in lines if x) + "\n")


def seq(*asns) -> tuple:
    return ((AS_SEQUENCE, tuple(asns)),)


def announce(site: Site, tunnel: int, path, origin=ORIGIN_IGP, prefix=VPC):
    name = site.parts[tunnel].name
    site.routing.routes_received(name, [Route(prefix, f"169.254.1{tunnel}.1", path, origin)], [])
    site.pump()


def updates_to_router(site: Site) -> int:
    return site.n.session.msgs_out["update"]


# ------------------------------------------------------------ what the router receives

@pytest.mark.parametrize("as_path, ibgp, prepend, want", [
    (None, False, 0, (ASN, AWS)),
    ("aws", False, 0, (ASN, AWS)),
    ("aws", False, 2, (ASN, ASN, ASN, AWS)),
    ("aws", True, 0, (AWS,)),
    ("originate", False, 0, (ASN,)),
    ("originate", False, 2, (ASN, ASN, ASN)),
    ("originate", True, 0, ()),
])
def test_the_router_receives_the_path_as_path_says(as_path, ibgp, prepend, want):
    """The default carries AWS's path behind ours; prepend goes between our ASN and AWS's path;
    iBGP sends AWS's path unchanged (no ASN of ours); "originate" is the old behaviour."""
    s = Site(config(as_path=as_path, remote_asn=ASN if ibgp else 65010, prepend=prepend))
    s.tunnel(0, True)
    announce(s, 0, seq(AWS), ORIGIN_INCOMPLETE)
    r = s.got[VPC]
    assert tuple(r.as_path_list()) == want
    assert r.next_hop == "10.200.0.1"
    assert r.origin == (ORIGIN_IGP if as_path == "originate" else ORIGIN_INCOMPLETE), "ORIGIN goes with the path"
    assert (r.local_pref == 100) is ibgp


def test_an_aws_path_longer_than_one_asn_is_carried_whole_and_an_as_set_stays_a_set():
    s = Site(config(prepend=1))
    s.tunnel(0, True)
    announce(s, 0, ((AS_SEQUENCE, (AWS, 7224)), (AS_SET, (64600, 64601))))
    assert s.got[VPC].as_path == ((AS_SEQUENCE, (ASN, ASN, AWS, 7224)), (AS_SET, (64600, 64601)))
    assert prepend_path((ASN,), ((AS_SET, (1, 2)),)) == ((AS_SEQUENCE, (ASN,)), (AS_SET, (1, 2)))
    assert prepend_path((), seq(AWS)) == seq(AWS)


def test_a_path_of_300_asns_with_prepend_is_split_into_segments_and_arrives_whole():
    s = Site(config(prepend=10))
    s.tunnel(0, True)
    aws = tuple(range(64512, 64512 + 300))
    announce(s, 0, ((AS_SEQUENCE, aws[:255]), (AS_SEQUENCE, aws[255:])))
    assert tuple(s.got[VPC].as_path_list()) == (ASN,) * 11 + aws


@settings(max_examples=40, deadline=None)
@given(path=st.lists(st.integers(1, 2**32 - 1).filter(lambda a: a not in (ASN, 65010)), min_size=0, max_size=12),
       prepend=st.integers(0, 10), originate=st.booleans(), ibgp=st.booleans())
def test_property_the_router_sees_our_asn_prepend_copies_then_exactly_the_learned_path(path, prepend, originate, ibgp):
    """For any learned path: eBGP ``[local] * (1 + prepend) + learned`` (learned dropped when
    originating), iBGP the learned path alone (or nothing); lan_routes and the wire agree."""
    prepend = 0 if ibgp else prepend
    cfg = config(as_path="originate" if originate else "aws", remote_asn=ASN if ibgp else 65010, prepend=prepend)
    (n,) = cfg.lan_neighbors
    learned = tuple(path) if not originate else ()
    (r,) = lan_routes({VPC: LearnedPath(seq(*path) if path else ())}, n)
    assert tuple(r.as_path_list()) == (ASN,) * prepend + learned
    lan = LanBgp(lambda: [])
    ln = lan.add(n)
    router = BgpSession(BgpPeerConfig(str(n.address), str(n.local_address), n.remote_asn, n.local_asn, "10.200.0.10"))
    ln.session.start(0.0)
    router.start(0.0)
    ln.session.connection_made(0.0, outbound=True)
    router.connection_made(0.0, outbound=False)
    got = {}
    lan.exchange.set_carried("vpn-0123456789abcdef0", {VPC: LearnedPath(seq(*path) if path else ())})
    lan.refresh_lan()
    for _ in range(10):
        for a, b, d in ((ln.session, router, False), (router, ln.session, True)):
            data = a.data_to_send(not d)
            if data:
                b.receive_data(data, 0.0, outbound=d)
        while (ev := router.next_event()) is not None:
            if isinstance(ev, RoutesReceived):
                got.update({x.prefix: x for x in ev.announced})
    assert tuple(got[VPC].as_path_list()) == ((ASN,) * (1 + prepend) if not ibgp else ()) + learned


# ------------------------------------------------------------ failover: the path follows, nothing flaps

def test_a_failover_to_a_tunnel_with_the_same_path_re_sends_nothing():
    s = Site(config())
    for i in (0, 1):
        s.tunnel(i, True)
        announce(s, i, seq(AWS))
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS)
    before = updates_to_router(s)
    assert before >= 1, "the counter counts"
    s.tunnel(0, False)                       # the best route moves to tun2, same path
    assert VPC in s.got and updates_to_router(s) == before, "no UPDATE for an equal path"
    s.tunnel(0, True)
    announce(s, 0, seq(AWS))                 # and back to tun1
    assert updates_to_router(s) == before
    announce(s, 0, seq(AWS))                 # AWS repeats itself: still nothing
    assert updates_to_router(s) == before


def test_a_failover_to_a_tunnel_with_another_path_re_sends_the_prefix_with_that_path():
    s = Site(config())
    s.tunnel(0, True)
    announce(s, 0, seq(AWS))
    s.tunnel(1, True)
    announce(s, 1, seq(AWS, AWS))            # AWS prepends on its backup tunnel
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS), "the best route (shorter path) is tun1's"
    n0 = updates_to_router(s)
    s.tunnel(0, False)
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS, AWS), "the path followed the best route to tun2"
    assert updates_to_router(s) == n0 + 1
    s.tunnel(0, True)
    announce(s, 0, seq(AWS))
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS) and updates_to_router(s) == n0 + 2


def test_a_new_path_on_the_same_tunnel_is_re_sent_though_the_next_hop_did_not_move():
    s = Site(config())
    s.tunnel(0, True)
    announce(s, 0, seq(AWS))
    announce(s, 0, seq(AWS, 65300))
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS, 65300)
    s.tunnel(1, True)
    n0 = updates_to_router(s)
    announce(s, 1, seq(AWS, 65300, 65301))    # a longer path on the tunnel not selected: nothing
    assert updates_to_router(s) == n0 and tuple(s.got[VPC].as_path_list()) == (ASN, AWS, 65300)


def test_the_rib_reports_a_replaced_selected_route_and_nothing_for_an_equal_one():
    rib = Rib(import_policy=ImportPolicy("any"), max_prefix=None)
    rib.tunnel_up("t1", "cgw-t1", "169.254.10.1")
    rib.tunnel_up("t2", "cgw-t2", "169.254.11.1")
    ch, _ = rib.update("t1", [Route(VPC, "169.254.10.1", seq(AWS))], [])
    assert ch.add and not ch.updated and rib.learned_path(VPC) == LearnedPath(seq(AWS))
    ch, _ = rib.update("t1", [Route(VPC, "169.254.10.1", seq(AWS))], [])
    assert not ch and not ch.updated and ch.selection_touched() == []
    ch, _ = rib.update("t1", [Route(VPC, "169.254.10.1", seq(AWS), ORIGIN_INCOMPLETE)], [])
    assert not ch, "nothing for the kernel"
    assert ch.updated == {VPC} and ch.selection_touched() == [VPC]
    ch, _ = rib.update("t2", [Route(VPC, "169.254.11.1", seq(AWS, AWS))], [])
    ch, _ = rib.update("t2", [Route(VPC, "169.254.11.1", seq(AWS, AWS, AWS))], [])
    assert not ch.updated, "t2's route is not the selected one"
    assert rib.carried() == {VPC: LearnedPath(seq(AWS), ORIGIN_INCOMPLETE)}
    rib.tunnel_down("t1")
    assert rib.learned_path(VPC) == LearnedPath(seq(AWS, AWS, AWS))
    rib.tunnel_down("t2")
    assert rib.learned_path(VPC) is None and rib.carried() == {}


def test_ecmp_carries_the_path_of_the_lowest_tunnel_index():
    cfg = config(base=BASE.replace('advertise = ["10.200.0.0/24"]', 'advertise = ["10.200.0.0/24"]\necmp = true'))
    s = Site(cfg)
    for i in (0, 1):
        s.tunnel(i, True)
    announce(s, 1, seq(AWS, 65301))
    announce(s, 0, seq(AWS, 65300))
    assert len(s.routing.rib.selected[VPC]) == 2
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS, 65300)
    s.tunnel(0, False)
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS, 65301)


def test_a_prefix_two_vpns_carry_goes_with_the_shorter_path_then_the_first_vpn_served():
    ex = LanExchange()
    ex.set_carried("a", {VPC: LearnedPath(seq(AWS, AWS))})
    ex.set_carried("b", {VPC: LearnedPath(seq(64513))})
    assert ex.to_lan(["a", "b"]) == {VPC: LearnedPath(seq(64513))}
    ex.set_carried("a", {VPC: LearnedPath(seq(AWS))})
    assert ex.to_lan(["a", "b"]) == {VPC: LearnedPath(seq(AWS))}
    assert ex.to_lan(["b", "a"]) == {VPC: LearnedPath(seq(64513))}
    assert ex.selection_changed("a", {VPC: LearnedPath(seq(AWS))}) is False, "equal: nothing to re-send"
    assert ex.selection_changed("a", {VPC: None}) is True and ex.to_lan(["a"]) == {}


# ------------------------------------------------------------ static VPNs, summaries

def test_a_static_vpns_prefixes_are_originated_whatever_as_path_says():
    for mode, want in (("aws", (ASN,)), ("originate", (ASN,))):
        cfg = parse_config(STATIC_VPN + f'as_path = "{mode}"\n')
        vpn = cfg.vpns[0]
        routing = RoutingTable(RoutingSettings.from_config(cfg, vpn), kernel=None, name=vpn.name)
        lan = LanBgp(lambda: [])
        lan.attach(vpn.name, routing)
        n = lan.add(cfg.lan_neighbors[0])
        routing.offer("st1", [StaticRoute(VPC)])
        routing.tunnel_up("st1", "cgw-st1", "169.254.10.1", 0)
        assert lan.exchange.to_lan(n.cfg.vpns) == {VPC: ORIGINATED}
        (r,) = n.session.advertised()
        assert tuple(r.as_path_list()) == want and r.origin == ORIGIN_IGP, mode


def test_a_summary_to_aws_is_originated_by_cgwd_without_atomic_aggregate():
    cfg = config(extra='summarise = ["10.50.0.0/16"]')
    s = Site(cfg)
    s.router.announce([Route("10.50.1.0/24", "10.200.0.10", seq(65010, 65020))])
    s.router._flush_updates()
    s.pump()
    got = {r.prefix: r for r in s.parts[0].session.advertised()}
    assert "10.50.1.0/24" not in got
    r = got["10.50.0.0/16"]
    assert tuple(r.as_path_list()) == (ASN,), "our ASN alone, as every LAN prefix AWS is sent"
    assert not r.atomic_aggregate and r.aggregator is None


# ------------------------------------------------------------ config and reload

LOOP = "would find its own ASN in the path"


@pytest.mark.parametrize("as_path, remote_asn, error", [
    (None, 64512, "as_path (default \"aws\") carries AWS's AS path, which starts with AS64512"),
    ("aws", 64512, "as_path = \"aws\" carries AWS's AS path"),
    ("originate", 64512, None),
    ("aws", 64513, None),
    ("carry", 65010, "must be one of aws, originate; got 'carry'"),
    ("Originate", 65010, "did you mean 'originate'?"),
])
def test_config_refuses_a_router_in_aws_asn_unless_cgwd_originates(as_path, remote_asn, error):
    text = BASE + f"""
[[lan_neighbor]]
address = "10.200.0.10"
local_address = "10.200.0.1"
remote_asn = {remote_asn}
import = []
""" + (f'as_path = "{as_path}"\n' if as_path is not None else "")
    if error is None:
        (n,) = parse_config(text).lan_neighbors
        assert n.as_path == (as_path or "aws")
        return
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    msg = str(e.value)
    assert "lan_neighbor[0]" in msg and "as_path" in msg and error in msg, msg
    if remote_asn == 64512:
        assert LOOP in msg and 'as_path = "originate"' in msg and "vpn-0123456789abcdef0" in msg, msg


def test_the_loop_check_looks_only_at_the_bgp_vpns_the_router_is_sent():
    other = BASE.replace('name = "vpn-0123456789abcdef0"', 'name = "vpn-b"').replace("remote_asn = 64512", "remote_asn = 64513")
    other = other.replace('"tun1"', '"tun3"').replace('"tun2"', '"tun4"').replace("203.0.113.2", "203.0.113.3")
    other = other.replace("169.254.10.", "169.254.20.").replace("169.254.11.", "169.254.21.")
    other = other.replace("[daemon]\nlog_level = \"info\"\n", "")
    two = BASE + other
    lan = """
[[lan_neighbor]]
address = "10.200.0.10"
local_address = "10.200.0.1"
remote_asn = 64513
import = []
"""
    with pytest.raises(ConfigError) as e:
        parse_config(two + lan)
    assert "vpn-b" in str(e.value) and LOOP in str(e.value)
    (n,) = parse_config(two + lan + 'vpns = ["vpn-0123456789abcdef0"]\n').lan_neighbors
    assert n.as_path == "aws"
    (n,) = parse_config(STATIC_VPN.replace("remote_asn = 65010", "remote_asn = 64512")).lan_neighbors
    assert n.as_path == "aws", "a static VPN has no AWS path to loop on"


def test_a_reload_switches_as_path_in_place_re_sends_and_reads_back():
    s = Site(config())
    s.tunnel(0, True)
    announce(s, 0, seq(AWS))
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS)
    st0 = s.lan.status()["neighbors"][0]
    assert st0["as_path"] == "aws"
    assert "as_path aws" in "\n".join(format_lan(s.lan.status(), 0.0))
    new = config(as_path="originate").lan_neighbors[0]
    ch = s.n.cfg.changes(new)
    assert ch.in_place == {"as_path"} and not ch.restart
    out = asyncio.run(s.lan.reconfigure([new]))
    assert out["applied"] == {"core1": ["as_path"]} and not out["restarted"]
    s.pump()
    assert s.lan.neighbors["core1"] is s.n and s.n.session.state == "Established", "the session was kept"
    assert tuple(s.got[VPC].as_path_list()) == (ASN,), "re-sent as originated"
    assert s.lan.status()["neighbors"][0]["as_path"] == "originate"
    assert "as_path originate" in "\n".join(format_lan(s.lan.status(), 0.0))
    n0 = updates_to_router(s)
    asyncio.run(s.lan.reconfigure([new]))
    s.pump()
    assert updates_to_router(s) == n0, "an unchanged reload re-sends nothing"
    asyncio.run(s.lan.reconfigure([dataclasses.replace(new, as_path="aws")]))
    s.pump()
    assert tuple(s.got[VPC].as_path_list()) == (ASN, AWS)


def test_a_path_from_aws_that_holds_the_routers_asn_further_along_is_shown_as_looped():
    """The config check sees AWS's first ASN only; a path with the router's ASN further along
    (a Transit Gateway's peers) is still sent (the router decides, as BGP does) and status says
    the router drops it."""
    s = Site(config())
    s.tunnel(0, True)
    announce(s, 0, seq(AWS, 65010))
    announce(s, 0, seq(AWS), prefix="10.101.0.0/16")
    st = s.lan.status()["neighbors"][0]
    assert st["sent"] == [VPC, "10.101.0.0/16"] and st["looped"] == [VPC]
    text = "\n".join(format_lan(s.lan.status(), 0.0))
    assert "! 1 carry AS65010 in their AS path (from AWS): the router drops them as loops" in text, text
    asyncio.run(s.lan.reconfigure([dataclasses.replace(s.n.cfg, as_path="originate")]))
    s.pump()
    assert s.lan.status()["neighbors"][0]["looped"] == [] and tuple(s.got[VPC].as_path_list()) == (ASN,)
    assert "carry AS65010" not in "\n".join(format_lan(s.lan.status(), 0.0))


def test_with_no_router_configured_the_tables_are_read_afresh_when_one_is_added():
    """No neighbor: selection changes are not followed (no cost on a box without LAN BGP); the
    first neighbor added (at start or by reload) reads every VPN's table, paths included."""
    cfg = config()
    vpn = cfg.vpns[0]
    routing = RoutingTable(RoutingSettings.from_config(cfg, vpn), kernel=None, name=vpn.name)
    lan = LanBgp(lambda: [])
    lan.attach(vpn.name, routing)
    routing.tunnel_up("tun1", "cgw-tun1", "169.254.10.1", 0)
    routing.routes_received("tun1", [Route(VPC, "169.254.10.1", seq(AWS, 65300))], [])
    assert lan.exchange.to_lan([vpn.name]) == {}, "not followed without a router"
    n = lan.add(cfg.lan_neighbors[0])
    assert lan.exchange.to_lan([vpn.name]) == {VPC: LearnedPath(seq(AWS, 65300))}
    assert [tuple(r.as_path_list()) for r in n.session.advertised()] == [(ASN, AWS, 65300)]
    asyncio.run(lan.reconfigure([]))
    routing.tunnel_down("tun1")
    n = lan.add(cfg.lan_neighbors[0])
    assert n.sent() == [] and lan.exchange.to_lan([vpn.name]) == {}
