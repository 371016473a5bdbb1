"""BGP over IPv6 as AWS's Transit Gateway runs it on an IPv6 VPN tunnel: an IPv6-only session
over the /126 inside addresses carrying IPv6 unicast (RFC 4760 MP_REACH/MP_UNREACH, RFC 2545
next hops), RFC 7606 handling of malformed MP attributes, the policies, the RIB and kernel
layer with IPv6 prefixes.

Independent checks: scapy decodes what we encode and encodes what we decode; bytes BIRD 2
sent on a real IPv6-only session (tests/unit/data/bgp6_bird.json, captured by
tests/interop/capture_bgp6_bird.py) decode to the routes BIRD was configured with.
"""
import ipaddress
import json
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from cgwd.bgp import message as m
from cgwd.bgp.message import BgpError, Route, seq
from cgwd.bgp.policy import ExportPolicy, ImportPolicy
from cgwd.bgp.session import (BgpPeerConfig, BgpSession, EndOfRib, RoutesReceived, SessionUp,
                              derive_router_id)
from cgwd.routing.kernel import KernelRoutes
from cgwd.routing.rib import NextHop, Rib
from test_bgp_session import Net, cfg_a, cfg_b
from test_routing_kernel import FakeIPR

DATA = Path(__file__).parent / "data"
T, O = m.FLAG_TRANSITIVE, m.FLAG_OPTIONAL
OURS, AWS = "fd00:0:0:10::2", "fd00:0:0:10::1"
VPC6 = "2001:db8:100::/56"


def body_of(msg: bytes) -> bytes:
    return msg[m.HEADER_LEN:]


def attr(flags, code, value):
    if len(value) > 255 or flags & m.FLAG_EXTENDED:
        return struct.pack("!BBH", flags | m.FLAG_EXTENDED, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def update(attrs: bytes, nlri: bytes = b"", withdrawn: bytes = b"") -> bytes:
    return struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri


ORIGIN = attr(T, 1, b"\x00")
ASPATH = attr(T, 2, bytes([2, 1]) + struct.pack("!I", 64512))
V6NLRI = bytes([56]) + ipaddress.IPv6Address("2001:db8:100::").packed[:7]
GLOBAL = ipaddress.IPv6Address(AWS).packed
LL = ipaddress.IPv6Address("fe80::1").packed


def mp_reach(nh: bytes = GLOBAL, nlri: bytes = V6NLRI, afi: int = 2, safi: int = 1, flags: int = O) -> bytes:
    return attr(flags, 14, struct.pack("!HBB", afi, safi, len(nh)) + nh + b"\x00" + nlri)


def mp_unreach(nlri: bytes, afi: int = 2, safi: int = 1) -> bytes:
    return attr(O, 15, struct.pack("!HB", afi, safi) + nlri)


def cfg6_a(**kw):
    return cfg_a(**{"local_address": OURS, "remote_address": AWS, "ipv4": False, "ipv6": True, **kw})


def cfg6_b(**kw):
    return cfg_b(**{"local_address": AWS, "remote_address": OURS, "ipv4": False, "ipv6": True, **kw})


def up(a, b):
    net = Net(a, b)
    a.start(0)
    b.start(0)
    a.wants_connect()
    net.connect(a)
    net.pump()
    return net


# --------------------------------------------------------------- codec round trips
V6_PREFIX = st.builds(lambda a, n: str(ipaddress.IPv6Network((a, n), strict=False)),
                      st.integers(0, 2**128 - 1), st.integers(1, 128))


@settings(max_examples=200, deadline=None)
@given(announce=st.lists(st.tuples(V6_PREFIX, st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=6),
                                   st.none() | st.integers(0, 2**32 - 1)), max_size=300),
       withdraw=st.lists(V6_PREFIX, max_size=600), link_local=st.booleans(), as4=st.booleans())
def test_ipv6_update_round_trip(announce, withdraw, link_local, as4):
    """Whatever is announced and withdrawn comes back exactly, in messages of at most 4096
    octets whose MP attribute is the very first one (RFC 7606 5.1)."""
    routes = {}
    for p, path, med in announce:
        routes[p] = Route(p, OURS, seq(*path), med=med)
    wd = sorted(set(withdraw) - set(routes))
    ll = "fe80::2" if link_local else None
    got, gone = {}, []
    for raw in m.encode_update(wd, list(routes.values()), as4=as4, link_local=ll):
        assert len(raw) <= m.MAX_MESSAGE_LEN
        body = body_of(raw)
        wlen = struct.unpack_from("!H", body)[0]
        assert wlen == 0                                  # IPv6 never in the IPv4 fields
        assert body[5] in (m.ATTR_MP_REACH, m.ATTR_MP_UNREACH)
        res = m.decode_update(body, as4=as4, mp_nlri=True)
        assert not res.errors and not res.treat_as_withdraw
        got.update({r.prefix: r for r in res.announced})
        gone += res.withdrawn
        if res.announced:
            assert res.link_local == ll
    assert got == routes
    assert sorted(gone) == wd


def test_link_local_next_hop_is_32_octets_global_first():
    [raw] = m.encode_update([], [Route(VPC6, OURS, seq(65000))], link_local="fe80::2")
    body = body_of(raw)
    assert body[4:6] == bytes([O, m.ATTR_MP_REACH])        # the first attribute
    i = body.index(bytes([0, 2, 1, 32]))                  # AFI 2, SAFI 1, next hop length 32
    assert body[i + 4:i + 20] == ipaddress.IPv6Address(OURS).packed
    assert body[i + 20:i + 36] == ipaddress.IPv6Address("fe80::2").packed
    assert body[i + 36] == 0                              # reserved


def test_ipv6_end_of_rib_is_an_empty_mp_unreach():
    raw = m.encode_end_of_rib(m.AFI_IPV6)
    assert body_of(raw) == update(mp_unreach(b""))
    assert m.decode_update(body_of(raw), as4=True, mp_nlri=True).eor == (2, 1)


# --------------------------------------------------------------- independent decoders
def test_scapy_decodes_our_ipv6_updates():
    pytest.importorskip("scapy")
    from scapy.contrib.bgp import BGPHeader, bgp_module_conf
    old = bgp_module_conf.use_2_bytes_asn
    bgp_module_conf.use_2_bytes_asn = False
    try:
        [raw] = m.encode_update([], [Route(VPC6, OURS, seq(65000, 4200000000), med=7)], link_local="fe80::2")
        up_ = BGPHeader(raw)
        attrs = {a.type_code: a.attribute for a in up_.path_attr}
        assert up_.path_attr[0].type_code == 14
        reach = attrs[14]
        assert (reach.afi, reach.safi, reach.nh_addr_len) == (2, 1, 32)
        assert reach.nh_v6_global == OURS and reach.nh_v6_link_local == "fe80::2"
        assert [n.prefix for n in reach.nlri] == [VPC6]
        assert attrs[2].segments[0].segment_value == [65000, 4200000000]
        assert attrs[4].med == 7 and 3 not in attrs          # no IPv4 NEXT_HOP
        [raw] = m.encode_update(["2001:db8:9::/48", "2001:db8:a::/47"], [])
        unreach = BGPHeader(raw).path_attr[0].attribute
        assert (unreach.afi, unreach.safi) == (2, 1)
        assert [n.prefix for n in unreach.afi_safi_specific.withdrawn_routes] == ["2001:db8:9::/48",
                                                                                "2001:db8:a::/47"]
    finally:
        bgp_module_conf.use_2_bytes_asn = old


def test_we_decode_what_scapy_encodes():
    pytest.importorskip("scapy")
    from scapy.contrib.bgp import (BGPNLRI_IPv6, BGPPAAS4BytesPath, BGPPAMPReachNLRI, BGPPAOrigin,
                                   BGPPathAttr, BGPUpdate)
    seg = BGPPAAS4BytesPath.ASPathSegment(segment_type=2, segment_value=[64512])
    reach = BGPPAMPReachNLRI(afi=2, safi=1, nh_addr_len=32, nh_v6_global=AWS, nh_v6_link_local="fe80::1",
                             nlri=[BGPNLRI_IPv6(prefix=VPC6), BGPNLRI_IPv6(prefix="2001:db8:200::/48")])
    upd = BGPUpdate(path_attr=[BGPPathAttr(type_flags=0x80, type_code=14, attribute=reach),
                               BGPPathAttr(type_flags=0x40, type_code=1, attribute=BGPPAOrigin(origin=0)),
                               BGPPathAttr(type_flags=0x40, type_code=2,
                                           attribute=BGPPAAS4BytesPath(segments=[seg]))])
    res = m.decode_update(bytes(upd), as4=True, mp_nlri=True)
    assert not res.errors
    assert [(r.prefix, r.next_hop, r.as_path) for r in res.announced] == [
        (VPC6, AWS, seq(64512)), ("2001:db8:200::/48", AWS, seq(64512))]
    assert res.link_local == "fe80::1"


def test_bird_ipv6_session_bytes_decode_to_birds_routes():
    cap = json.loads((DATA / "bgp6_bird.json").read_text())
    msgs = [bytes.fromhex(h) for h in cap["first"]]
    op = m.decode_open(body_of(msgs[0]))
    assert op.multiprotocol() == {(2, 1)}                   # BIRD with one ipv6 channel
    assert op.peer_asn() == 64512
    got, eor = {}, []
    for raw in msgs[1:]:
        length, mtype = m.check_header(raw)
        assert length == len(raw)
        if mtype != m.UPDATE:
            continue
        res = m.decode_update(body_of(raw), as4=True, mp_nlri=True)
        assert not res.errors and not res.treat_as_withdraw
        if res.eor:
            eor.append(res.eor)
        for r in res.announced:
            got[r.prefix] = r
            assert r.next_hop == cap["bird_address"]
            assert res.link_local is not None and ipaddress.IPv6Address(res.link_local).is_link_local
    assert {p: r.med for p, r in got.items()} == {r["prefix"]: r["med"] for r in cap["routes"]}
    assert all(r.as_path == seq(64512) for r in got.values())
    assert eor == [(2, 1)]
    withdrawn = []
    for raw in (bytes.fromhex(h) for h in cap["after_reconfigure"]):
        if m.check_header(raw)[1] == m.UPDATE:
            withdrawn += m.decode_update(body_of(raw), as4=True, mp_nlri=True).withdrawn
    assert withdrawn == cap["withdrawn_after_reconfigure"]


def test_a_session_takes_birds_bytes_and_answers_with_ipv6_only():
    """Our IPv6-only session fed BIRD's own bytes: Established, BIRD's routes learned."""
    cap = json.loads((DATA / "bgp6_bird.json").read_text())
    s = BgpSession(cfg6_a(remote_asn=64512, remote_address=cap["bird_address"]))
    s.start(0)
    s.wants_connect()
    s.connection_made(0, outbound=True)
    sent = s.data_to_send()
    assert m.decode_open(body_of(sent)).multiprotocol() == {(2, 1)}
    s.receive_data(b"".join(bytes.fromhex(h) for h in cap["first"]), 0.1)
    assert s.state == "Established"
    evs = list(iter(s.next_event, None))
    learned = {r.prefix for e in evs if isinstance(e, RoutesReceived) for r in e.announced}
    assert learned == {r["prefix"] for r in cap["routes"]}
    assert [(e.afi, e.safi) for e in evs if isinstance(e, EndOfRib)] == [(2, 1)]
    s.receive_data(b"".join(bytes.fromhex(h) for h in cap["after_reconfigure"]), 0.2)
    wd = [p for e in iter(s.next_event, None) if isinstance(e, RoutesReceived) for p in e.withdrawn]
    assert wd == cap["withdrawn_after_reconfigure"]


# --------------------------------------------------------------- RFC 7606 on MP attributes
MP_CASES = [
    # (name, body, session carries IPv6 (mp_nlri), expectation)
    ("IPv6 next hop of 4 octets", update(mp_reach(nh=bytes(4)) + ORIGIN + ASPATH), True, ("reset", 3, 9)),
    ("IPv6 next hop of 24 octets", update(mp_reach(nh=bytes(24)) + ORIGIN + ASPATH), True, ("reset", 3, 9)),
    ("IPv6 next hop overruns", update(attr(O, 14, struct.pack("!HBB", 2, 1, 32) + GLOBAL) + ORIGIN + ASPATH),
     True, ("reset", 3, 9)),
    ("MP_REACH shorter than 5 octets", update(attr(O, 14, b"\x00\x02\x01\x10")), True, ("reset", 3, 9)),
    ("IPv6 prefix length 129", update(mp_reach(nlri=bytes([129]) + bytes(17)) + ORIGIN + ASPATH), True,
     ("reset", 3, 9)),
    ("IPv6 prefix truncated", update(mp_reach(nlri=bytes([64, 0x20, 0x01])) + ORIGIN + ASPATH), True,
     ("reset", 3, 9)),
    ("MP_UNREACH prefix truncated", update(mp_unreach(bytes([48, 0x20]))), True, ("reset", 3, 9)),
    ("MP_UNREACH shorter than 3 octets", update(attr(O, 15, b"\x00\x02")), True, ("reset", 3, 9)),
    ("MP_REACH twice", update(mp_reach() + mp_reach() + ORIGIN + ASPATH), True, ("reset", 3, 1)),
    ("MP_UNREACH twice", update(mp_unreach(V6NLRI) + mp_unreach(V6NLRI)), True, ("reset", 3, 1)),
    ("MP_REACH flagged transitive", update(mp_reach(flags=O | T) + ORIGIN + ASPATH), True, ("reset", 3, 4)),
    ("MP_REACH flagged well-known", update(mp_reach(flags=T) + ORIGIN + ASPATH), True, ("reset", 3, 4)),
    ("attribute list breaks before MP_REACH", update(ORIGIN + b"\x40\x02\xc8" + mp_reach()), True,
     ("reset", 3, 1)),
    ("attribute list breaks after MP_REACH (an MP_UNREACH may follow)",
     update(mp_reach() + ORIGIN + ASPATH + b"\x40\x05\x09\x00"), True, ("reset", 3, 1)),
    ("list breaks after MP_REACH on an IPv4 session", update(mp_reach() + ORIGIN + ASPATH + b"\x40\x05\x09"),
     False, ("withdraw", [VPC6])),
    ("MP_REACH without ORIGIN", update(mp_reach() + ASPATH), True, ("withdraw", [VPC6])),
    ("MP_REACH without AS_PATH", update(mp_reach() + ORIGIN), True, ("withdraw", [VPC6])),
    ("malformed AS_PATH", update(mp_reach() + ORIGIN + attr(T, 2, bytes([2, 2, 0, 0]))), True,
     ("withdraw", [VPC6])),
    ("ORIGIN value 9", update(mp_reach() + attr(T, 1, b"\x09") + ASPATH), True, ("withdraw", [VPC6])),
    ("MED of 3 octets", update(mp_reach() + ORIGIN + ASPATH + attr(O, 4, bytes(3))), True,
     ("withdraw", [VPC6])),
    ("treat-as-withdraw takes MP_UNREACH too",
     update(mp_reach() + mp_unreach(bytes([48]) + ipaddress.IPv6Address("2001:db8:9::").packed[:6])
            + attr(T, 1, b"\x07") + ASPATH), True, ("withdraw", [VPC6, "2001:db8:9::/48"])),
    ("no NEXT_HOP needed with only MP NLRI", update(mp_reach() + ORIGIN + ASPATH), True, ("accept", None)),
    ("malformed NEXT_HOP ignored with only MP NLRI (RFC 4760 3)",
     update(mp_reach() + ORIGIN + ASPATH + attr(T, 3, bytes(5))), True, ("accept", "ignored")),
    ("32-octet next hop whose second half is not link-local",
     update(mp_reach(nh=GLOBAL + GLOBAL) + ORIGIN + ASPATH), True, ("accept", None)),
    ("MP_REACH of an unknown AFI/SAFI is ignored", update(mp_reach(afi=25, safi=65) + ORIGIN + ASPATH), True,
     ("nothing", None)),
]


@pytest.mark.parametrize("name,body,mp_nlri,want", MP_CASES, ids=[c[0] for c in MP_CASES])
def test_mp_attribute_errors_rfc7606(name, body, mp_nlri, want):
    if want[0] == "reset":
        with pytest.raises(BgpError) as ei:
            m.decode_update(body, as4=True, mp_nlri=mp_nlri)
        assert (ei.value.code, ei.value.subcode) == want[1:]
        return
    res = m.decode_update(body, as4=True, mp_nlri=mp_nlri)
    if want[0] == "withdraw":
        assert res.treat_as_withdraw and not res.announced and res.errors
        assert sorted(res.withdrawn) == sorted(want[1])
    elif want[0] == "accept":
        assert not res.treat_as_withdraw
        assert [(r.prefix, r.next_hop) for r in res.announced] == [(VPC6, AWS)]
        assert bool(res.errors) == (want[1] == "ignored")
    else:
        assert not res.announced and not res.withdrawn and not res.treat_as_withdraw


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_mp_attributes_only_bgp_errors(tail, mp_nlri):
    """Random bytes inside and after an MP_REACH: a BGP error or a clean result, never an
    exception escaping, never an IPv6 route with a malformed prefix."""
    body = update(attr(O, 14, struct.pack("!HBB", 2, 1, 16) + GLOBAL + b"\x00" + tail[:60]) + tail[60:])
    try:
        res = m.decode_update(body, as4=True, mp_nlri=mp_nlri)
    except BgpError as e:
        assert e.code == 3
        return
    for r in res.announced:
        ipaddress.IPv6Network(r.prefix)


# --------------------------------------------------------------- the session
def test_ipv6_only_session_as_a_transit_gateway_runs_it():
    a, b = BgpSession(cfg6_a()), BgpSession(cfg6_b())
    a.announce(["2001:db8:200::/64"])
    b.announce([VPC6])
    net = up(a, b)
    assert a.state == b.state == "Established"
    first = net.sent[id(a)][0]
    assert m.check_header(first)[1] == m.OPEN
    assert m.decode_open(body_of(first[:m.check_header(first)[0]])).multiprotocol() == {(2, 1)}  # no IPv4
    caps = net.ev(a, SessionUp)[0].capabilities
    assert caps["multiprotocol"] == caps["families"] == ["ipv6/unicast"]
    got = {r.prefix: r for e in net.ev(a, RoutesReceived) for r in e.announced}
    assert got == {VPC6: Route(VPC6, AWS, seq(64512))}
    assert [(e.afi, e.safi) for e in net.ev(a, EndOfRib)] == [(2, 1)]      # no IPv4 End-of-RIB
    sent = b"".join(net.sent[id(a)])
    assert m.encode_end_of_rib() not in sent and m.encode_end_of_rib(2) in sent
    assert [r.prefix for e in net.ev(b, RoutesReceived) for r in e.announced] == ["2001:db8:200::/64"]
    assert a.status()["families"] == ["ipv6/unicast"] and a.status()["prefixes_advertised"] == 1
    # withdraw: MP_UNREACH
    b.withdraw([VPC6])
    net.pump()
    assert net.ev(a, RoutesReceived)[-1].withdrawn == [VPC6]
    assert a.status()["prefixes_received"] == 0
    # route refresh asks for IPv6 unicast
    assert a.request_refresh()
    net.pump()
    assert b.status()["messages_in"]["route_refresh"] == 1
    assert len([e for e in net.ev(a, RoutesReceived) if e.announced]) == 1   # nothing to re-send


def test_no_common_family_is_refused_with_unsupported_capability():
    a = BgpSession(cfg6_a())
    a.start(0)
    a.wants_connect()
    a.connection_made(0, outbound=True)
    a.data_to_send()
    a.receive_data(m.encode_open(64512, 30, "10.0.0.1", [m.cap_mp(1), m.cap_as4(64512)]), 0.1)
    out = a.data_to_send()
    assert out == m.encode_notification(2, 7, bytes([1, 4, 0, 2, 0, 1]))   # our MP cap: IPv6 unicast
    assert a.state in ("Idle", "Active")
    assert "no common address family" in a.status()["last_error"]
    # a peer that sends no MP capability at all implies IPv4 unicast only (RFC 4760 8)
    c = BgpSession(cfg6_a())
    c.start(0)
    c.wants_connect()
    c.connection_made(0, outbound=True)
    c.data_to_send()
    c.receive_data(m.encode_open(64512, 30, "10.0.0.1", [m.cap_as4(64512)]), 0.1)
    assert c.data_to_send() == m.encode_notification(2, 7, bytes([1, 4, 0, 2, 0, 1]))


def test_a_peer_offering_both_families_gets_an_ipv6_only_session():
    a, b = BgpSession(cfg6_a()), BgpSession(cfg_b(local_address=AWS, remote_address=OURS, ipv6=True))
    b.announce([VPC6, "10.100.0.0/16"])
    net = up(a, b)
    assert a.state == "Established"
    assert net.ev(a, SessionUp)[0].capabilities["families"] == ["ipv6/unicast"]
    assert net.ev(b, SessionUp)[0].capabilities["families"] == ["ipv6/unicast"]
    got = [r.prefix for e in net.ev(a, RoutesReceived) for r in e.announced]
    assert got == [VPC6]
    assert b.status()["prefixes_not_advertised"] == ["10.100.0.0/16"]


def test_nlri_and_end_of_rib_of_a_family_not_carried_are_ignored():
    net, a, b = None, BgpSession(cfg6_a()), BgpSession(cfg6_b())
    net = up(a, b)
    n0 = len(net.ev(a, EndOfRib))
    # a misbehaving peer: IPv4 NLRI and an IPv4 End-of-RIB on an IPv6-only session
    ipv4 = m.encode_update([], [Route("10.100.0.0/16", "169.254.10.1", seq(64512))])[0]
    a.receive_data(ipv4 + m.encode_end_of_rib() + m.encode_update([], [Route(VPC6, AWS, seq(64512))])[0], 1)
    evs = list(iter(a.next_event, None))
    assert [r.prefix for e in evs if isinstance(e, RoutesReceived) for r in e.announced] == [VPC6]
    assert not [e for e in evs if isinstance(e, EndOfRib)] and len(net.ev(a, EndOfRib)) == n0
    assert a.status()["unnegotiated_ignored"] == 1 and a.state == "Established"


def test_dual_family_speaker_holds_back_what_an_ipv6_only_peer_does_not_carry():
    a = BgpSession(cfg_a(local_address=OURS, remote_address=AWS, ipv6=True))
    b = BgpSession(cfg6_b())
    a.announce([Route("2001:db8:200::/64"), Route("192.168.50.0/24", "169.254.10.2")])
    net = up(a, b)
    got = [r.prefix for e in net.ev(b, RoutesReceived) for r in e.announced]
    assert got == ["2001:db8:200::/64"]
    st_ = a.status()
    assert st_["prefixes_advertised"] == 1 and st_["prefixes_not_advertised"] == ["192.168.50.0/24"]
    assert not any(m.encode_end_of_rib() in x for x in net.sent[id(a)])


def test_link_local_next_hop_reaches_the_peer():
    a = BgpSession(cfg6_a(link_local_next_hop="fe80::2"))
    b = BgpSession(cfg6_b())
    a.announce(["2001:db8:200::/64"])
    net = up(a, b)
    assert [r.next_hop for e in net.ev(b, RoutesReceived) for r in e.announced] == [OURS]
    raw = b"".join(net.sent[id(a)])
    assert ipaddress.IPv6Address("fe80::2").packed in raw
    with pytest.raises(ValueError, match="link-local"):
        cfg6_a(link_local_next_hop="2001:db8::1")


@pytest.mark.parametrize("kw,match", [
    ({"ipv4": False, "ipv6": False}, "IPv4 unicast, IPv6 unicast or both"),
    ({"router_id": "fd00::2"}, "IPv4"),
])
def test_bad_peer_config(kw, match):
    with pytest.raises(ValueError, match=match):
        cfg_a(**kw)


def test_router_id_for_an_ipv6_only_gateway():
    assert derive_router_id("203.0.113.2") == "203.0.113.2"
    rid = derive_router_id("2001:db8:203::2")
    assert rid == derive_router_id("2001:db8:203:0::2")                     # stable
    assert rid != derive_router_id("2001:db8:203::3")
    BgpPeerConfig(local_address=OURS, remote_address=AWS, local_asn=65000, remote_asn=64512, router_id=rid)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**128 - 1))
def test_derived_router_ids_are_unicast_looking_and_non_zero(addr):
    rid = int(ipaddress.IPv4Address(derive_router_id(str(ipaddress.IPv6Address(addr)))))
    assert 0x01000000 <= rid < 0xE0000000


def test_any_non_zero_peer_identifier_is_accepted_rfc6286():
    a = BgpSession(cfg6_a())
    b = BgpSession(cfg6_b(router_id="240.0.0.7"))
    up(a, b)
    assert a.state == "Established" and a.status()["peer_id"] == "240.0.0.7"


def test_collision_with_equal_identifiers_is_settled_by_the_as_numbers():
    a = BgpSession(cfg6_a(router_id="10.0.0.9"))
    b = BgpSession(cfg6_b(router_id="10.0.0.9", passive=False))
    net = Net(a, b)
    a.start(0)
    b.start(0)
    assert a.wants_connect() and b.wants_connect()
    wa = net.connect(a)
    wb = net.connect(b)
    net.pump()
    assert a.state == b.state == "Established"
    alive = [w for w in net.wires if w.up]
    # RFC 6286 2.3: the connection of the speaker with the larger AS (a: 65000) survives
    assert alive == [wa] and wb not in alive


# --------------------------------------------------------------- policies
@pytest.mark.parametrize("prefix,ok,why", [
    (VPC6, True, "accepted"),
    ("::/0", False, "default route"),
    ("fe80::/10", False, "IPv6 link-local"),
    ("fe80::/64", False, "IPv6 link-local"),
    ("ff00::/8", False, "multicast"),
    ("::1/128", False, "loopback"),
    ("fd00:0:0:10::/126", False, "inside CIDR"),
    ("fd00:0:0:10::1/128", False, "inside CIDR"),
    ("fd00:0:0:10::/64", True, "accepted"),
    ("fd12:3456::/48", True, "accepted"),
    ("2001:db8:200::/64", False, "own advertised"),
    ("2001:db8:200::/80", False, "own advertised"),
    ("2001:db8:200::/56", True, "accepted"),
])
def test_aws_default_import_ipv6(prefix, ok, why):
    p = ImportPolicy.aws_default(["2001:db8:200::/64"]).with_inside(["fd00:0:0:10::/126", "fd00:0:0:20::/126"])
    assert p.accepts(prefix) is ok
    assert why in p.reason(prefix)


def test_rfc8212_and_prefix_lists_for_ipv6():
    assert not ImportPolicy("deny").accepts(VPC6)
    lst = ImportPolicy("prefix-list", allow=("2001:db8:100::/48",), inside=("fd00:0:0:10::/126",))
    assert lst.accepts("2001:db8:100:5::/64") and not lst.accepts("2001:db8:200::/64")
    assert not lst.accepts("::/0")
    assert ImportPolicy("any").accepts("::/0")
    assert lst.with_inside(["fd00:0:0:20::/126"]) == ImportPolicy(
        "prefix-list", allow=("2001:db8:100::/48",), inside=("fd00:0:0:20::/126", "fd00:0:0:10::/126"))
    assert lst != lst.with_inside(["fd00:0:0:20::/126"])


def test_export_policy_of_an_ipv6_vpn():
    exp = ExportPolicy(("2001:db8:200::/64",), default_route=True, prepend=1, med=5, limit=1000, family=6)
    assert [r.prefix for r in exp.routes(65000)] == ["2001:db8:200::/64", "::/0"]
    with pytest.raises(ValueError, match="1001 prefixes"):
        ExportPolicy(tuple(f"2001:db8:{i:x}::/48" for i in range(1001)), limit=1000, family=6).routes(65000)


# --------------------------------------------------------------- RIB and kernel
NHA = NextHop("t1", "cgw-a", "fd00:0:0:10::1")
NHB = NextHop("t2", "cgw-b", "fd00:0:0:20::1")


def rib6(**kw):
    kw.setdefault("import_policy", ImportPolicy.aws_default(["2001:db8:200::/64"]).with_inside(
        ["fd00:0:0:10::/126", "fd00:0:0:20::/126"]))
    r = Rib(**kw)
    r.tunnel_up("t1", "cgw-a", NHA.gateway, index=0)
    r.tunnel_up("t2", "cgw-b", NHB.gateway, index=1)
    return r


def test_rib_ipv6_best_path_ecmp_failover_and_fail_closed():
    rb = rib6(ecmp=True, fail_closed=True)
    ch, _ = rb.update("t1", [Route(VPC6, AWS, seq(64512))], [])
    assert ch.add == {VPC6: (NHA,)} and ch.guard_add == {VPC6}
    ch, _ = rb.update("t2", [Route(VPC6, "fd00:0:0:20::1", seq(64512))], [])
    assert ch.replace == {VPC6: (NHA, NHB)}
    ch = rb.tunnel_down("t1")
    assert ch.replace == {VPC6: (NHB,)}
    ch = rb.tunnel_down("t2")
    assert ch.remove == [VPC6] and rb.unreachable() == [VPC6]


def test_rib_refuses_inside_cidrs_and_prefixes_covering_ipv6_outside_addresses():
    rb = rib6(protected=("2001:db8:51:1::2", "2001:db8:203::2"))
    routes = [Route(p, AWS, seq(64512)) for p in ("::/1", "2001:db8::/32", "2001:db8:51::/48",
                                                  "fd00:0:0:10::/126", VPC6)]
    ch, _ = rb.update("t1", routes, [])
    assert list(ch.add) == [VPC6]
    assert rb.counts("t1")["refused"] == {"covers_outside_address": 3, "import_policy": 1}


def test_end_of_rib_flushes_only_its_familys_stale_routes():
    rb = Rib(import_policy=ImportPolicy("any"))
    rb.tunnel_up("t1", "cgw-a", AWS, index=0)
    rb.update("t1", [Route(VPC6, AWS, seq(64512)), Route("10.100.0.0/16", "169.254.10.1", seq(64512))], [])
    rb.session_down("t1", graceful=True, restart_time=120, now=0)
    ch = rb.end_of_rib("t1", 6)
    assert ch.remove == [VPC6] and "10.100.0.0/16" in rb.selected
    ch = rb.end_of_rib("t1", 4)
    assert ch.remove == ["10.100.0.0/16"] and rb.get_timer() is None


def test_kernel_installs_ipv6_routes_ecmp_and_unreachable_with_family_inet6():
    ipr = FakeIPR()
    ipr.links.update({"cgw-a": 7, "cgw-b": 8})
    k = KernelRoutes(254, 100, 157, iproute=ipr)
    rb = rib6(ecmp=True, fail_closed=True)
    k.apply(rb.update("t1", [Route(VPC6, AWS, seq(64512))], [])[0])
    k.apply(rb.update("t2", [Route(VPC6, "fd00:0:0:20::1", seq(64512))], [])[0])
    r = ipr.routes[(VPC6, 254, 100)]
    assert r["family"] == socket.AF_INET6 and r["proto"] == 157
    assert sorted((h["gateway"], h["oif"]) for h in r["multipath"]) == [(NHA.gateway, 7), (NHB.gateway, 8)]
    u = ipr.routes[(VPC6, 254, 1100)]
    assert u["type"] == "unreachable" and u["family"] == socket.AF_INET6 and "oif" not in u
    assert k.dump() == {VPC6: sorted([(NHA.gateway, 7), (NHB.gateway, 8)], key=str)}
    assert k.dump_unreachable() == {VPC6}
    k.apply(rb.tunnel_down("t1"))
    k.apply(rb.tunnel_down("t2"))
    assert (VPC6, 254, 100) not in ipr.routes and (VPC6, 254, 1100) in ipr.routes
    assert k.reconcile({}, {VPC6}) == {"added": 0, "removed": 0, "fixed": 0}
    k.remove_all()
    assert not ipr.routes


# --------------------------------------------------------------- the asyncio speaker over IPv6
def test_speakers_over_ipv6_tcp_carry_ipv6_routes():
    """A real TCP connection over IPv6 (::1, one side listening): routes both ways, the
    socket marked CS6 by its IPv6 traffic class, keepalive probes on."""
    import asyncio

    from cgwd.bgp.speaker import BgpSpeaker
    from loopback_helpers import free_port, wait

    async def main():
        port = free_port()
        ea, eb = [], []
        sa = BgpSession(cfg6_a(local_address="::1", remote_address="::1", connect_retry=0.3))
        sb = BgpSession(cfg6_b(local_address="::1", remote_address="::1"))
        a = BgpSpeaker(sa, local_address="::1", remote_address="::1", port=port, on_event=ea.append, listen=False)
        b = BgpSpeaker(sb, local_address="::1", remote_address="::1", port=port, on_event=eb.append)
        sb.announce([Route(f"2001:db8:{i:x}::/48", "2001:db8:ffff::1") for i in range(2000)])
        sa.announce(["2001:db8:200::/64"])
        await b.start()
        await a.start()
        await wait(lambda: any(isinstance(e, EndOfRib) for e in ea), 20)
        got = {r.prefix for e in ea if isinstance(e, RoutesReceived) for r in e.announced}
        assert len(got) == 2000 and sa.status()["families"] == ["ipv6/unicast"]
        await wait(lambda: any(isinstance(e, RoutesReceived) for e in eb), 5)
        sk = next(iter(a._protos.values())).transport.get_extra_info("socket")
        assert sk.family == socket.AF_INET6
        assert sk.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS) == 0xC0
        assert sk.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        await a.stop("bye")
        await b.stop()
    asyncio.run(main())


def test_link_local_set_later_re_announces_ipv6_routes():
    """The tunnel interface's link-local address is known only once it exists: set on a
    running session, the IPv6 routes go out again with the 32-octet next hop."""
    a, b = BgpSession(cfg6_a()), BgpSession(cfg6_b())
    a.announce(["2001:db8:200::/64"])
    net = up(a, b)
    n = len(net.ev(b, RoutesReceived))
    a.set_link_local_next_hop("fe80::1:2")
    net.pump()
    assert len(net.ev(b, RoutesReceived)) == n + 1
    assert ipaddress.IPv6Address("fe80::1:2").packed in net.sent[id(a)][-1]
    a.set_link_local_next_hop("fe80::1:2")                # unchanged: nothing sent
    net.pump()
    assert len(net.ev(b, RoutesReceived)) == n + 1
    with pytest.raises(ValueError, match="link-local"):
        a.set_link_local_next_hop("fd00::1")


def test_link_local_of_reads_the_interfaces_link_local_address(tmp_path):
    from cgwd.tunnel.bgp_part import link_local_of
    p = tmp_path / "if_inet6"
    p.write_text("fd000000000000100000000000000002 07 7e 00 80 cgw-t1\n"
                 "fe80000000000000a1b2c3d4e5f60718 07 40 20 80 cgw-t1\n"
                 "fe800000000000000000000000000009 08 40 20 80 cgw-t2\n")
    assert link_local_of("cgw-t1", str(p)) == "fe80::a1b2:c3d4:e5f6:718"
    assert link_local_of("cgw-t3", str(p)) is None
    assert link_local_of("cgw-t1", str(tmp_path / "missing")) is None
