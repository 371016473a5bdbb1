"""BGP FSM timelines with a fake clock: two sans-IO cores wired to each other in memory."""
import struct

import pytest

from cgwd.bgp import message as m
from cgwd.bgp.message import Route, seq
from cgwd.bgp.session import (BgpPeerConfig, BgpSession, EndOfRib, RoutesReceived, SessionDown,
                              SessionUp)


def cfg_a(**kw):
    d = dict(local_address="169.254.10.2", remote_address="169.254.10.1", local_asn=65000,
             remote_asn=64512, router_id="10.0.0.2")
    d.update(kw)
    return BgpPeerConfig(**d)


def cfg_b(**kw):
    d = dict(local_address="169.254.10.1", remote_address="169.254.10.2", local_asn=64512,
             remote_asn=65000, router_id="10.0.0.1", passive=True)
    d.update(kw)
    return BgpPeerConfig(**d)


class Wire:
    """In-memory TCP connection between a's direction da and b's direction db."""

    def __init__(self, net, a, da, b, db):
        self.net, self.a, self.da, self.b, self.db = net, a, da, b, db
        self.up = True
        self.cut = False        # silently drop traffic (peer vanished without FIN)


class Net:
    def __init__(self, a, b):
        self.a, self.b = a, b
        self.now = 0.0
        self.wires = []
        self.events = {id(a): [], id(b): []}
        self.sent = {id(a): [], id(b): []}   # raw bytes each side wrote

    def connect(self, initiator, da=True):
        other = self.b if initiator is self.a else self.a
        w = Wire(self, initiator, da, other, not da)
        self.wires.append(w)
        initiator.connection_made(self.now, outbound=da)
        other.connection_made(self.now, outbound=not da)
        return w

    def pump(self, rounds=20):
        for _ in range(rounds):
            moved = False
            for w in list(self.wires):
                if not w.up:
                    continue
                for src, ds, dst, dd in ((w.a, w.da, w.b, w.db), (w.b, w.db, w.a, w.da)):
                    data = src.data_to_send(ds)
                    if data:
                        self.sent[id(src)].append(data)
                        if not w.cut:
                            dst.receive_data(data, self.now, outbound=dd)
                            moved = True
            for s in (self.a, self.b):
                for d in s.connections_to_close():
                    for w in self.wires:
                        if w.up and ((w.a is s and w.da == d) or (w.b is s and w.db == d)):
                            # deliver the last words, then close both ends
                            data = s.data_to_send(d)
                            other, od = (w.b, w.db) if w.a is s else (w.a, w.da)
                            if data:
                                self.sent[id(s)].append(data)
                            if data and not w.cut:
                                other.receive_data(data, self.now, outbound=od)
                            w.up = False
                            s.connection_lost(self.now, outbound=d)
                            other.connection_lost(self.now, outbound=od)
                            moved = True
            for s in (self.a, self.b):
                while (ev := s.next_event()) is not None:
                    self.events[id(s)].append(ev)
            if not moved:
                break

    def advance(self, until, step=0.5):
        while self.now < until:
            self.now = min(until, self.now + step)
            for s in (self.a, self.b):
                t = s.get_timer()
                if t is not None and t <= self.now:
                    s.handle_timer(self.now)
                if s.wants_connect():
                    self.connect(s)
            self.pump()

    def ev(self, s, kind=None):
        return [e for e in self.events[id(s)] if kind is None or isinstance(e, kind)]


def established_pair(a_kw=None, b_kw=None):
    a, b = BgpSession(cfg_a(**(a_kw or {}))), BgpSession(cfg_b(**(b_kw or {})))
    net = Net(a, b)
    a.start(0)
    b.start(0)
    assert a.state == "Connect" and b.state == "Active"
    assert a.wants_connect() and not a.wants_connect()
    net.connect(a)
    assert a.state == "OpenSent"
    net.pump()
    return net, a, b


def test_establish_exchange_routes_and_eor():
    a, b = BgpSession(cfg_a()), BgpSession(cfg_b())
    a.announce(["192.168.50.0/24"])
    b.announce([Route("10.100.0.0/16")])
    net = Net(a, b)
    a.start(0)
    b.start(0)
    a.wants_connect()
    net.connect(a)
    net.pump()
    assert a.state == b.state == "Established"
    up = net.ev(a, SessionUp)[0]
    assert (up.hold_time, up.keepalive, up.peer_asn, up.peer_id) == (30, 10, 64512, "10.0.0.1")
    rr = net.ev(a, RoutesReceived)[0]
    assert rr.announced == [Route("10.100.0.0/16", "169.254.10.1", seq(64512))]
    assert net.ev(a, EndOfRib)
    got = net.ev(b, RoutesReceived)[0].announced[0]
    assert got.prefix == "192.168.50.0/24" and got.as_path == seq(65000) and got.next_hop == "169.254.10.2"
    st = a.status()
    assert st["prefixes_received"] == 1 and st["prefixes_advertised"] == 1
    assert st["messages_in"]["open"] == 1 and st["capabilities"]["four_octet_as"]


def test_hold_negotiated_to_lower_and_keepalives_on_time():
    net, a, b = established_pair(b_kw={"hold_time": 9})
    assert a.status()["hold_time"] == 9 and a.status()["keepalive"] == 3
    ka0 = a.status()["messages_out"]["keepalive"]
    net.advance(60.0, step=0.25)
    assert a.state == b.state == "Established"
    sent = a.status()["messages_out"]["keepalive"] - ka0
    assert 19 <= sent <= 21          # every 3 s over 60 s
    assert not net.ev(a, SessionDown)


def test_hold_timer_expiry_sends_notification():
    net, a, b = established_pair()
    net.wires[0].cut = True           # peer silent
    net.advance(29.0)
    assert a.state == "Established"
    net.advance(30.5)
    down = net.ev(a, SessionDown)
    assert down and down[0].notification[:2] == (4, 0) and down[0].sent
    assert a.state == "Idle"
    assert any(x.startswith(m.encode_notification(4, 0)) or m.encode_notification(4, 0) in x
               for x in net.sent[id(a)])
    assert "Hold Timer Expired" in a.status()["last_error"]


def test_hold_zero_means_no_keepalives():
    net, a, b = established_pair(a_kw={"hold_time": 0})
    assert a.state == b.state == "Established"
    assert a.get_timer() is None and b.get_timer() is None
    ka0 = a.status()["messages_out"]["keepalive"]
    net.advance(1000.0, step=10)
    assert a.state == "Established"
    assert a.status()["messages_out"]["keepalive"] == ka0


@pytest.mark.parametrize("a_id,survivor_outbound_of", [("10.0.0.2", "a"), ("10.0.0.0", "b")])
def test_collision_keeps_connection_of_higher_id(a_id, survivor_outbound_of):
    a = BgpSession(cfg_a(router_id=a_id))
    b = BgpSession(cfg_b(passive=False))
    net = Net(a, b)
    a.start(0)
    b.start(0)
    assert a.wants_connect() and b.wants_connect()
    wa = net.connect(a)        # a outbound <-> b inbound
    wb = net.connect(b)        # b outbound <-> a inbound
    net.pump()
    assert a.state == b.state == "Established"
    alive = [w for w in net.wires if w.up]
    assert len(alive) == 1
    assert alive[0] is (wa if survivor_outbound_of == "a" else wb)
    # the dumped connection got Cease / Connection Collision Resolution
    assert any(m.encode_notification(6, 7) in x for x in net.sent[id(a)] + net.sent[id(b)])
    assert len(net.ev(a, SessionUp)) == 1 and not net.ev(a, SessionDown)


def test_second_connection_while_established_is_rejected():
    net, a, b = established_pair()
    b2 = net.connect(b, da=True)     # peer opens another connection
    net.pump()
    assert not b2.up
    assert a.state == b.state == "Established"


def test_malformed_input_gives_notification_not_exception():
    net, a, b = established_pair()
    a.receive_data(b"\x00" * 16 + struct.pack("!HB", 19, 4), net.now)
    net.pump()
    down = net.ev(a, SessionDown)[0]
    assert down.notification[:2] == (1, 1)
    assert net.ev(b, SessionDown)[0].notification[:2] == (1, 1)


@pytest.mark.parametrize("b_kw,want", [
    ({"local_asn": 64513}, (2, 2)),
    ({"hold_time": 2}, (2, 6)),
    ({"router_id": "0.0.0.0"}, (2, 3)),
])
def test_open_errors(b_kw, want):
    a, b = BgpSession(cfg_a()), BgpSession(cfg_b(**b_kw))
    net = Net(a, b)
    a.start(0)
    b.start(0)
    a.wants_connect()
    net.connect(a)
    net.pump()
    assert a.state in ("Idle", "Active")
    assert a.status()["last_error"].startswith("sent: OPEN Message Error")
    assert any(m.encode_notification(*want) in x for x in net.sent[id(a)])


def test_unexpected_message_in_opensent_is_fsm_error():
    a = BgpSession(cfg_a())
    a.start(0)
    a.wants_connect()
    a.connection_made(0, outbound=True)
    a.data_to_send()
    a.receive_data(m.encode_keepalive(), 0.1)
    assert m.encode_notification(5, 1) in a.data_to_send()
    assert a.state == "Idle" and a.connections_to_close() == [True]


def test_unknown_capability_ignored_and_old_speaker():
    a = BgpSession(cfg_a(local_asn=4200000001))
    a.start(0)
    a.wants_connect()
    a.connection_made(0, outbound=True)
    a.data_to_send()
    # an OLD speaker (no 4-octet capability) with an unknown capability 200
    op = m.encode_open(64512, 30, "10.0.0.1", [m.cap_mp(1), m.Capability(200, b"zz")])
    a.receive_data(op + m.encode_keepalive(), 0.1)
    assert a.state == "Established"
    assert a.status()["capabilities"]["unknown"] == [200]
    out = a.data_to_send()
    assert m.encode_notification(2, 7)[:19] not in out


def test_as_path_not_starting_with_peer_as_is_withdraw():
    net, a, b = established_pair()
    body = m.encode_update([], [Route("10.1.0.0/16", "169.254.10.1", seq(65555))], as4=True)[0]
    a.receive_data(body, net.now)
    rr = a.next_event()
    while rr is not None and not isinstance(rr, RoutesReceived):
        rr = a.next_event()
    assert rr.announced == [] and rr.withdrawn == ["10.1.0.0/16"]
    assert a.state == "Established"
    assert a.status()["updates_treated_as_withdraw"] == 1


def test_update_burst_is_coalesced_and_keepalive_sent_when_due():
    net, a, b = established_pair()
    routes = [Route(f"10.{i // 256}.{i % 256}.0/24", "169.254.10.1", seq(64512)) for i in range(3000)]
    data = b"".join(m.encode_update([], routes, as4=True))
    a.data_to_send()
    ka_deadline = a.get_timer()
    a.receive_data(data, ka_deadline + 0.01)
    evs = []
    while (e := a.next_event()) is not None:
        evs.append(e)
    assert len(evs) == 1 and len(evs[0].announced) == 3000
    assert a.data_to_send() == m.encode_keepalive()   # the due keepalive went out during input


def test_withdraw_and_route_refresh():
    net, a, b = established_pair()
    a.announce(["192.168.1.0/24", "192.168.2.0/24"])
    net.pump()
    assert {r.prefix for r in net.ev(b, RoutesReceived)[-1].announced} == {"192.168.1.0/24", "192.168.2.0/24"}
    a.withdraw(["192.168.1.0/24"])
    net.pump()
    assert net.ev(b, RoutesReceived)[-1].withdrawn == ["192.168.1.0/24"]
    a.receive_data(m.encode_route_refresh(), net.now)
    net.pump()
    assert [r.prefix for r in net.ev(b, RoutesReceived)[-1].announced] == ["192.168.2.0/24"]


def test_graceful_restart_on_connection_loss():
    net, a, b = established_pair(b_kw={"restart_time": 120})
    # peer advertises GR with IPv4 unicast (AWS: restart time 120)
    a2 = BgpSession(cfg_a())
    a2.start(0)
    a2.wants_connect()
    a2.connection_made(0, outbound=True)
    op = m.encode_open(64512, 30, "10.0.0.1", [m.cap_mp(1), m.cap_as4(64512),
                                               m.cap_graceful_restart(120, [(1, 1, True)])])
    a2.receive_data(op + m.encode_keepalive(), 1)
    assert a2.state == "Established"
    a2.connection_lost(2, outbound=True)
    downs = []
    while (e := a2.next_event()) is not None:
        if isinstance(e, SessionDown):
            downs.append(e)
    assert downs[0].graceful_restart and downs[0].restart_time == 120
    # and automatic restart later
    assert a2.state == "Idle"
    a2.handle_timer(a2.get_timer())
    assert a2.state == "Connect" and a2.wants_connect()


def test_hold_expiry_is_not_graceful():
    a = BgpSession(cfg_a())
    a.start(0)
    a.wants_connect()
    a.connection_made(0, outbound=True)
    op = m.encode_open(64512, 30, "10.0.0.1", [m.cap_graceful_restart(120, [(1, 1, True)])])
    a.receive_data(op + m.encode_keepalive(), 1)
    a.handle_timer(31.5)
    evs = [e for e in iter(a.next_event, None) if isinstance(e, SessionDown)]
    assert evs[0].notification[:2] == (4, 0) and not evs[0].graceful_restart


def test_stop_sends_cease_and_reset_max_prefix():
    net, a, b = established_pair()
    a.stop(net.now, "maintenance")
    net.pump()
    down = net.ev(b, SessionDown)[0]
    assert down.notification[:2] == (6, 2) and "maintenance" in down.reason
    assert a.state == "Idle" and a.get_timer() is None
    net2, a2, b2 = established_pair()
    a2.reset(net2.now, 6, 1, b"\x00\x01\x01\x00\x00\x03\xe8", reason="max prefix")
    net2.pump()
    assert net2.ev(b2, SessionDown)[0].notification[:2] == (6, 1)
    assert "Maximum Number of Prefixes" in b2.status()["last_error"]


def test_connect_failure_goes_active_and_retries():
    a = BgpSession(cfg_a(connect_retry=5))
    a.start(0)
    assert a.wants_connect()
    a.connection_lost(0.5, outbound=True)        # TCP connect failed
    assert a.state == "Active" and not a.wants_connect()
    assert a.get_timer() == 5.5
    a.handle_timer(5.5)
    assert a.state == "Connect" and a.wants_connect()


# ---------------------------------------------------------------- malformed corpus, session level
def is_notification(out: bytes, want) -> bool:
    return out[:16] == m.MARKER and out[18] == m.NOTIFICATION and (out[19], out[20]) == tuple(want)


from test_bgp_message import UPDATE_CASES  # noqa: E402


@pytest.mark.parametrize("name,body,want", UPDATE_CASES, ids=[c[0] for c in UPDATE_CASES])
def test_malformed_update_reaction_in_session(name, body, want):
    net, a, b = established_pair()
    for _ in iter(a.next_event, None):
        pass
    a.data_to_send()
    a.receive_data(m.frame(m.UPDATE, body), net.now)       # never raises
    out = a.data_to_send()
    evs = list(iter(a.next_event, None))
    if want[0] == "reset":
        assert is_notification(out, want[1:])
        down = [e for e in evs if isinstance(e, SessionDown)]
        assert down and down[0].notification[:2] == want[1:]
        assert a.state == "Idle"
    else:
        assert a.state == "Established" and m.NOTIFICATION not in [out[18:19]]
        rr = [e for e in evs if isinstance(e, RoutesReceived)]
        if want[0] == "withdraw":
            assert rr[0].announced == [] and "10.100.0.0/16" in rr[0].withdrawn
        else:
            assert [r.prefix for r in rr[0].announced] == ["10.100.0.0/16"]


@pytest.mark.parametrize("raw,want", [
    (b"\x00" * 16 + struct.pack("!HB", 19, 4), (1, 1)),
    (m.MARKER + struct.pack("!HB", 5000, 2), (1, 2)),
    (m.MARKER + struct.pack("!HB", 19, 7), (1, 3)),
    (m.encode_open(64512, 30, "10.0.0.1", []), (5, 3)),
    (m.MARKER + struct.pack("!HB", 24, 5) + bytes(5), (7, 1)),
])
def test_malformed_messages_in_established(raw, want):
    net, a, b = established_pair()
    a.data_to_send()
    a.receive_data(raw, net.now)
    assert is_notification(a.data_to_send(), want)
    assert a.state == "Idle"


def test_byte_at_a_time_framing():
    a = BgpSession(cfg_a())
    a.start(0)
    a.wants_connect()
    a.connection_made(0, outbound=True)
    data = (m.encode_open(64512, 30, "10.0.0.1", [m.cap_as4(64512)]) + m.encode_keepalive()
            + m.encode_update([], [Route("10.100.0.0/16", "169.254.10.1", seq(64512))])[0])
    for i in range(len(data)):
        a.receive_data(data[i:i + 1], 0.1)
    assert a.state == "Established"
    rr = [e for e in iter(a.next_event, None) if isinstance(e, RoutesReceived)]
    assert [r.prefix for x in rr for r in x.announced] == ["10.100.0.0/16"]


def test_ipv6_unicast_session_over_ipv6_inside_addresses():
    a = BgpSession(cfg_a(local_address="fd00:10::2", remote_address="fd00:10::1", ipv6=True))
    b = BgpSession(cfg_b(local_address="fd00:10::1", remote_address="fd00:10::2", ipv6=True))
    a.announce(["2001:db8:50::/48"])
    b.announce(["2001:db8:100::/40", "10.100.0.0/16"])
    net = Net(a, b)
    a.start(0)
    b.start(0)
    a.wants_connect()
    net.connect(a)
    net.pump()
    assert a.state == "Established"
    assert net.ev(a, SessionUp)[0].capabilities["multiprotocol"] == ["ipv4/unicast", "ipv6/unicast"]
    got = {r.prefix: r for e in net.ev(a, RoutesReceived) for r in e.announced}
    assert got["2001:db8:100::/40"].next_hop == "fd00:10::1"
    assert "10.100.0.0/16" not in got          # IPv4 NLRI cannot carry an IPv6 next hop
    assert b.status()["prefixes_not_advertised"] == ["10.100.0.0/16"]
    assert {(e.afi, e.safi) for e in net.ev(a, EndOfRib)} == {(1, 1), (2, 1)}
    assert [r.prefix for e in net.ev(b, RoutesReceived) for r in e.announced] == ["2001:db8:50::/48"]


def test_request_refresh_makes_peer_resend():
    net, a, b = established_pair()
    b.announce(["10.100.0.0/16"])
    net.pump()
    n = len(net.ev(a, RoutesReceived))
    assert a.request_refresh()
    net.pump()
    assert len(net.ev(a, RoutesReceived)) == n + 1
    assert b.status()["messages_in"]["route_refresh"] == 1


def test_new_connection_from_gr_peer_replaces_established_one():
    """RFC 4724 4.2: with GR, an OPEN on a new connection means the peer restarted."""
    a = BgpSession(cfg_a())
    a.start(0)
    a.wants_connect()
    a.connection_made(0, outbound=True)
    op = m.encode_open(64512, 30, "10.0.0.1", [m.cap_as4(64512), m.cap_graceful_restart(120, [(1, 1, True)])])
    a.receive_data(op + m.encode_keepalive(), 1, outbound=True)
    assert a.state == "Established"
    list(iter(a.next_event, None))
    a.connection_made(5, outbound=False)          # the restarted peer connects again
    a.receive_data(op, 5, outbound=False)
    downs = [e for e in iter(a.next_event, None) if isinstance(e, SessionDown)]
    assert downs and downs[0].graceful_restart and downs[0].restart_time == 120
    assert True in a.connections_to_close()       # the old connection is closed
    a.receive_data(m.encode_keepalive(), 5.1, outbound=False)
    assert a.state == "Established"
    ups = [e for e in iter(a.next_event, None) if isinstance(e, SessionUp)]
    assert ups


def test_new_connection_without_gr_is_rejected_while_established():
    a = BgpSession(cfg_a())
    a.start(0)
    a.wants_connect()
    a.connection_made(0, outbound=True)
    op = m.encode_open(64512, 30, "10.0.0.1", [m.cap_as4(64512)])
    a.receive_data(op + m.encode_keepalive(), 1, outbound=True)
    a.data_to_send(True)
    a.connection_made(5, outbound=False)
    a.data_to_send(False)
    a.receive_data(op, 5, outbound=False)
    out = a.data_to_send(False)
    assert out[18] == m.NOTIFICATION and (out[19], out[20]) == (6, 7)
    assert a.connections_to_close() == [False] and a.state == "Established"
