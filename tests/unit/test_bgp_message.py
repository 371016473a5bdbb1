"""BGP codec: round trips, scapy cross-check, malformed corpus (RFC 4271 / 7606), fuzz."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from cgwd.bgp import message as m
from cgwd.bgp.message import BgpError, Route, seq


def body_of(msg: bytes) -> bytes:
    return msg[m.HEADER_LEN:]


def attr(flags, code, value):
    if len(value) > 255 or flags & m.FLAG_EXTENDED:
        return struct.pack("!BBH", flags | m.FLAG_EXTENDED, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


T, O = m.FLAG_TRANSITIVE, m.FLAG_OPTIONAL
ORIGIN = attr(T, 1, b"\x00")
ASPATH4 = attr(T, 2, bytes([2, 1]) + struct.pack("!I", 64512))
NH = attr(T, 3, bytes([169, 254, 10, 1]))
NLRI = bytes([16, 10, 100])


def update(attrs: bytes, nlri: bytes = NLRI, withdrawn: bytes = b"") -> bytes:
    return struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri


# --------------------------------------------------------------- round trips
def test_open_round_trip():
    caps = [m.cap_mp(1), m.cap_mp(2), m.cap_as4(4200000000), m.cap_route_refresh(),
            m.cap_graceful_restart(120, [(1, 1, True)]), m.Capability(99, b"xyz")]
    raw = m.encode_open(4200000000, 30, "10.0.0.1", caps)
    assert m.check_header(raw) == (len(raw), m.OPEN)
    op = m.decode_open(body_of(raw))
    assert op.asn == m.AS_TRANS and op.peer_asn() == 4200000000
    assert op.hold_time == 30 and op.router_id == "10.0.0.1"
    assert op.multiprotocol() == {(1, 1), (2, 1)}
    assert op.route_refresh()
    assert op.graceful_restart() == {"restart_time": 120, "restarting": False, "afis": {(1, 1): True}}
    assert any(c.code == 99 and c.value == b"xyz" for c in op.capabilities)


@pytest.mark.parametrize("as4", [True, False])
def test_update_round_trip(as4):
    routes = [Route(f"10.{i}.0.0/16", "169.254.10.2", seq(65000, 64512), med=50,
                    communities=(65000 << 16 | 1,)) for i in range(3)]
    routes.append(Route("192.168.0.0/24", "169.254.10.2",
                        ((m.AS_SEQUENCE, (65000,)), (m.AS_SET, (1, 2, 3))), origin=m.ORIGIN_INCOMPLETE))
    routes.append(Route("0.0.0.0/0", "169.254.10.2", seq(65000)))
    msgs = m.encode_update(["172.16.0.0/12", "10.255.255.0/24"], routes, as4=as4)
    got, wd = {}, []
    for raw in msgs:
        assert len(raw) <= 4096
        res = m.decode_update(body_of(raw), as4=as4)
        assert not res.errors and not res.treat_as_withdraw
        got.update({r.prefix: r for r in res.announced})
        wd += res.withdrawn
    assert sorted(wd) == ["10.255.255.0/24", "172.16.0.0/12"]
    assert got == {r.prefix: r for r in routes}


def test_ipv6_mp_reach_round_trip():
    routes = [Route("2001:db8:1::/48", "fd00::2", seq(65000)), Route("2001:db8::/32", "fd00::2", seq(65000))]
    msgs = m.encode_update(["2001:db8:9::/48"], routes, as4=True)
    ann, wd = [], []
    for raw in msgs:
        res = m.decode_update(body_of(raw), as4=True)
        ann += res.announced
        wd += res.withdrawn
    assert {r.prefix for r in ann} == {"2001:db8:1::/48", "2001:db8::/32"}
    assert all(r.next_hop == "fd00::2" for r in ann)
    assert wd == ["2001:db8:9::/48"]


def test_many_nlri_packed_efficiently():
    routes = [Route(f"10.{i // 256}.{i % 256}.0/24", "169.254.10.2", seq(65000)) for i in range(5000)]
    msgs = m.encode_update([], routes, as4=True)
    assert all(len(x) <= 4096 for x in msgs)
    # 4 octets per /24: about 1000 prefixes per message
    assert len(msgs) == 5
    assert sum(len(m.decode_update(body_of(x), as4=True).announced) for x in msgs) == 5000


def test_as_trans_and_as4_path_for_old_speaker():
    r = Route("10.0.0.0/8", "169.254.10.2", seq(4200000000, 65001, 4200000001),
              aggregator=(4200000000, "1.1.1.1"))
    [raw] = m.encode_update([], [r], as4=False)
    b = body_of(raw)
    # the 2-octet AS_PATH carries AS_TRANS
    assert struct.pack("!HHH", m.AS_TRANS, 65001, m.AS_TRANS) in b
    res = m.decode_update(b, as4=False)
    assert res.announced[0].as_path == seq(4200000000, 65001, 4200000001)
    assert res.announced[0].aggregator == (4200000000, "1.1.1.1")


def test_as4_path_merge_rfc6793():
    # AS_PATH has more ASes than AS4_PATH: leading ones kept from AS_PATH
    as_path = seq(65001, m.AS_TRANS, m.AS_TRANS)
    as4 = seq(4200000000, 4200000001)
    assert m.merge_as4_path(as_path, as4) == seq(65001, 4200000000, 4200000001)
    # AS4_PATH longer than AS_PATH: ignored
    assert m.merge_as4_path(seq(m.AS_TRANS), seq(1, 2)) == seq(m.AS_TRANS)


def test_as4_path_ignored_when_aggregator_not_as_trans():
    ap = attr(T, 2, bytes([2, 2]) + struct.pack("!HH", 65001, m.AS_TRANS))
    as4p = attr(O | T, 17, bytes([2, 1]) + struct.pack("!I", 4200000000))
    agg = attr(O | T, 7, struct.pack("!H", 65001) + bytes(4))
    as4agg = attr(O | T, 18, struct.pack("!I", 4200000000) + bytes(4))
    res = m.decode_update(update(ORIGIN + ap + NH + as4p + agg + as4agg), as4=False)
    assert res.announced[0].as_path == seq(65001, m.AS_TRANS)


def test_end_of_rib():
    assert m.decode_update(body_of(m.encode_end_of_rib()), as4=True).eor == (1, 1)
    assert m.decode_update(body_of(m.encode_end_of_rib(2)), as4=True).eor == (2, 1)


def test_notification_and_route_refresh():
    raw = m.encode_notification(6, 2, m.shutdown_data("maintenance"))
    n = m.decode_notification(body_of(raw))
    assert n.text() == "Cease / Administrative Shutdown: maintenance"
    rr = m.decode_route_refresh(body_of(m.encode_route_refresh()))
    assert (rr.afi, rr.safi) == (1, 1)


def test_scapy_decodes_what_we_encode():
    pytest.importorskip("scapy")
    from scapy.contrib.bgp import BGPHeader, bgp_module_conf
    old = bgp_module_conf.use_2_bytes_asn
    bgp_module_conf.use_2_bytes_asn = False
    try:
        op = BGPHeader(m.encode_open(4200000000, 30, "10.0.0.1",
                                     [m.cap_mp(1), m.cap_as4(4200000000), m.cap_route_refresh(),
                                      m.cap_graceful_restart(120)]))
        assert op.type == 1 and op.hold_time == 30 and op.my_as == m.AS_TRANS
        caps = [p.param_value for p in op.opt_params]
        assert any(getattr(c, "asn", None) == 4200000000 for c in caps)
        assert any(getattr(c, "restart_time", None) == 120 for c in caps)
        r = Route("10.100.0.0/16", "169.254.10.1", seq(64512, 4200000000), med=7)
        [raw] = m.encode_update(["10.9.0.0/16"], [], as4=True)
        up = BGPHeader(raw)
        assert up.type == 2 and up.withdrawn_routes[0].prefix == "10.9.0.0/16"
        [raw] = m.encode_update([], [r], as4=True)
        up = BGPHeader(raw)
        assert up.nlri[0].prefix == "10.100.0.0/16"
        attrs = {a.type_code: a.attribute for a in up.path_attr}
        assert attrs[2].segments[0].segment_value == [64512, 4200000000]
        assert attrs[3].next_hop == "169.254.10.1"
        assert attrs[4].med == 7
        ka = BGPHeader(m.encode_keepalive())
        assert ka.type == 4 and ka.len == 19
        no = BGPHeader(m.encode_notification(4, 0))
        assert no.type == 3 and no.error_code == 4
    finally:
        bgp_module_conf.use_2_bytes_asn = old


# --------------------------------------------------------------- malformed corpus
HEADER_CASES = [
    ("bad marker", b"\x00" * 16 + struct.pack("!HB", 19, 4), (1, 1)),
    ("length below 19", m.MARKER + struct.pack("!HB", 18, 4), (1, 2)),
    ("length above 4096", m.MARKER + struct.pack("!HB", 4097, 2), (1, 2)),
    ("keepalive with body", m.MARKER + struct.pack("!HB", 20, 4) + b"\x00", (1, 2)),
    ("short open", m.MARKER + struct.pack("!HB", 28, 1) + bytes(9), (1, 2)),
    ("short update", m.MARKER + struct.pack("!HB", 22, 2) + bytes(3), (1, 2)),
    ("bad type", m.MARKER + struct.pack("!HB", 19, 9), (1, 3)),
    ("route refresh bad length", m.MARKER + struct.pack("!HB", 22, 5) + bytes(3), (7, 1)),
]


@pytest.mark.parametrize("name,raw,want", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_header_errors(name, raw, want):
    with pytest.raises(BgpError) as ei:
        m.check_header(raw)
    assert (ei.value.code, ei.value.subcode) == want
    if want == (1, 2):
        assert ei.value.data == raw[16:18]          # the erroneous length field
    if want == (1, 3):
        assert ei.value.data == raw[18:19]


OPEN_CASES = [
    ("version 3", bytes([3]) + struct.pack("!HH4sB", 64512, 30, bytes([1, 1, 1, 1]), 0), (2, 1)),
    ("unknown optional parameter", bytes([4]) + struct.pack("!HH4sB", 64512, 30, bytes([1, 1, 1, 1]), 3)
     + b"\x01\x01\x00", (2, 4)),
    ("capability overrun", bytes([4]) + struct.pack("!HH4sB", 64512, 30, bytes([1, 1, 1, 1]), 4)
     + b"\x02\x02\x01\x09", (2, 0)),
    ("opt len mismatch", bytes([4]) + struct.pack("!HH4sB", 64512, 30, bytes([1, 1, 1, 1]), 9), (2, 0)),
]


@pytest.mark.parametrize("name,body,want", OPEN_CASES, ids=[c[0] for c in OPEN_CASES])
def test_open_errors(name, body, want):
    with pytest.raises(BgpError) as ei:
        m.decode_open(body)
    assert (ei.value.code, ei.value.subcode) == want


# (name, update body, expectation): ("reset", code, subcode) | ("withdraw",) | ("discard", attr check)
UPDATE_CASES = [
    ("withdrawn length overruns", struct.pack("!H", 50) + b"\x00\x00", ("reset", 3, 1)),
    ("attribute length overruns message", struct.pack("!HH", 0, 200) + ORIGIN, ("reset", 3, 1)),
    ("bad NLRI prefix length", update(ORIGIN + ASPATH4 + NH, bytes([33, 1, 2, 3, 4, 5])), ("reset", 3, 10)),
    ("truncated NLRI", update(ORIGIN + ASPATH4 + NH, bytes([24, 10, 1])), ("reset", 3, 10)),
    ("bad withdrawn prefix", update(b"", b"", bytes([40, 1, 1, 1, 1, 1])), ("reset", 3, 10)),
    ("unknown well-known attribute", update(ORIGIN + ASPATH4 + NH + attr(T, 99, b"\x01")), ("reset", 3, 2)),
    ("MP_REACH twice", update(attr(O, 14, struct.pack("!HBB", 1, 1, 4) + bytes(4) + b"\x00") * 2 + ORIGIN
                              + ASPATH4, b""), ("reset", 3, 1)),
    ("MP_REACH bad flags", update(attr(T, 14, struct.pack("!HBB", 1, 1, 4) + bytes(4) + b"\x00") + ORIGIN
                                  + ASPATH4, b""), ("reset", 3, 4)),
    ("MP_REACH truncated next hop", update(attr(O, 14, struct.pack("!HBB", 2, 1, 16) + bytes(4)) + ORIGIN
                                           + ASPATH4, b""), ("reset", 3, 9)),
    ("MP_UNREACH bad prefix", update(attr(O, 15, struct.pack("!HB", 1, 1) + bytes([99])), b""),
     ("reset", 3, 9)),
    ("missing ORIGIN", update(ASPATH4 + NH), ("withdraw",)),
    ("missing AS_PATH", update(ORIGIN + NH), ("withdraw",)),
    ("missing NEXT_HOP", update(ORIGIN + ASPATH4), ("withdraw",)),
    ("ORIGIN value 3", update(attr(T, 1, b"\x03") + ASPATH4 + NH), ("withdraw",)),
    ("ORIGIN length 2", update(attr(T, 1, b"\x00\x00") + ASPATH4 + NH), ("withdraw",)),
    ("ORIGIN flagged optional", update(attr(O | T, 1, b"\x00") + ASPATH4 + NH), ("withdraw",)),
    ("truncated AS_PATH", update(ORIGIN + attr(T, 2, bytes([2, 3]) + struct.pack("!I", 64512)) + NH),
     ("withdraw",)),
    ("AS_PATH segment type 9", update(ORIGIN + attr(T, 2, bytes([9, 1]) + struct.pack("!I", 1)) + NH),
     ("withdraw",)),
    ("AS_PATH empty segment", update(ORIGIN + attr(T, 2, bytes([2, 0])) + NH), ("withdraw",)),
    ("NEXT_HOP length 5", update(ORIGIN + ASPATH4 + attr(T, 3, bytes(5))), ("withdraw",)),
    ("MED length 3", update(ORIGIN + ASPATH4 + NH + attr(O, 4, bytes(3))), ("withdraw",)),
    ("MED flagged transitive", update(ORIGIN + ASPATH4 + NH + attr(O | T, 4, bytes(4))), ("withdraw",)),
    ("COMMUNITIES length 5", update(ORIGIN + ASPATH4 + NH + attr(O | T, 8, bytes(5))), ("withdraw",)),
    ("attribute overruns attribute list", update(ORIGIN + ASPATH4 + NH + b"\x40\x05\x09\x00"), ("withdraw",)),
    ("ATOMIC_AGGREGATE length 1", update(ORIGIN + ASPATH4 + NH + attr(T, 6, b"\x01")),
     ("discard", lambda r: not r.atomic_aggregate)),
    ("AGGREGATOR length 5", update(ORIGIN + ASPATH4 + NH + attr(O | T, 7, bytes(5))),
     ("discard", lambda r: r.aggregator is None)),
    ("AGGREGATOR flags wrong", update(ORIGIN + ASPATH4 + NH + attr(O, 7, bytes(8))),
     ("discard", lambda r: r.aggregator is None)),
    ("LOCAL_PREF from eBGP malformed", update(ORIGIN + ASPATH4 + NH + attr(T, 5, bytes(3))),
     ("discard", lambda r: r.local_pref is None)),
    ("duplicate ORIGIN", update(ORIGIN + attr(T, 1, b"\x02") + ASPATH4 + NH),
     ("discard", lambda r: r.origin == 0)),
    ("unknown optional attribute", update(ORIGIN + ASPATH4 + NH + attr(O | T, 250, b"abc")),
     ("accept", lambda r: True)),
]


@pytest.mark.parametrize("name,body,want", UPDATE_CASES, ids=[c[0] for c in UPDATE_CASES])
def test_update_rfc7606_reactions(name, body, want):
    if want[0] == "reset":
        with pytest.raises(BgpError) as ei:
            m.decode_update(body, as4=True)
        assert (ei.value.code, ei.value.subcode) == want[1:]
        return
    res = m.decode_update(body, as4=True)
    if want[0] == "withdraw":
        assert res.treat_as_withdraw and not res.announced
        assert "10.100.0.0/16" in res.withdrawn
        assert res.errors
    else:
        assert not res.treat_as_withdraw
        assert [r.prefix for r in res.announced] == ["10.100.0.0/16"]
        assert want[1](res.announced[0])
        if want[0] == "discard":
            assert res.errors


def test_treat_as_withdraw_covers_mp_reach():
    mp = attr(O, 14, struct.pack("!HBB", 2, 1, 16) + bytes(15) + b"\x01" + b"\x00" + bytes([32, 0x20, 1, 0xd, 0xb8]))
    res = m.decode_update(update(mp + attr(T, 1, b"\x07") + ASPATH4, b""), as4=True)
    assert res.treat_as_withdraw and res.withdrawn == ["2001:db8::/32"]


def test_route_refresh_long_is_rfc7313_error():
    with pytest.raises(BgpError) as ei:
        m.decode_route_refresh(bytes(5))
    assert (ei.value.code, ei.value.subcode) == (7, 1)


def test_host_bits_are_masked():
    assert m.decode_prefixes(bytes([20, 10, 1, 0xff])) == ["10.1.240.0/20"]


# --------------------------------------------------------------- fuzz
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_decode_update_only_bgp_errors(data, as4):
    try:
        res = m.decode_update(data, as4=as4)
    except BgpError as e:
        assert 1 <= e.code <= 7
        return
    for r in res.announced:
        assert "/" in r.prefix


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_decode_open_only_bgp_errors(data):
    try:
        m.decode_open(data)
    except BgpError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=40),
       st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=10), st.booleans())
def test_fuzz_round_trip_prefixes(pfx, path, as4):
    import ipaddress
    prefixes = sorted({str(ipaddress.ip_network((a, l), strict=False)) for a, l in pfx})
    routes = [Route(p, "169.254.10.2", seq(*path)) for p in prefixes]
    got = []
    for raw in m.encode_update([], routes, as4=as4):
        res = m.decode_update(body_of(raw), as4=as4)
        got += res.announced
    assert sorted(r.prefix for r in got) == prefixes
    assert all(r.as_path == seq(*path) for r in got)
