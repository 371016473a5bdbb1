"""What unauthenticated input may change (issue 12 item 4): nothing of a tunnel.

Ports belong to an ISAKMP SA and become the tunnel's only once that SA's HASH verified; the
limits on unauthenticated work (half-open exchanges, DH computations) keep the real peer's
exchange apart from spoofed initiations from its address. And NAT state is an SA's too: a new
SA that finds no NAT turns encapsulation and keepalives off.
"""

from __future__ import annotations

from cgwd.ike.v1 import constants as C
from cgwd.ike.v1.codec import decode_header
from cgwd.ike.events import IpsecSaUp, NatDetected, Phase1Up
from cgwd.ike.v1 import IkePeer
from cgwd.ike.v1.main_mode import HALF_OPEN_LIMIT, Mm
from cgwd.ike.v1.peer import DH_BURST
from test_ike_session import A_ADDR, B_ADDR, established, make_pair, seeded_random


def spoofed_mm1(victim_cfg, seed: int) -> bytes:
    """A well-formed MM1 as anyone can forge it with the peer's address as source."""
    x = IkePeer(victim_cfg, random_bytes=seeded_random(seed), name="spoof")
    x.start(0.0)
    return x.datagrams_to_send()[0].data


def test_spoofed_mm1_during_our_main_mode_does_not_move_where_mm3_and_mm5_go():
    net = make_pair()
    a = net.a.peer
    a.start(0.0)  # our MM1 is on its way
    icookie = a.sas[0].icookie
    # the attacker's MM1 "from" the peer's address, another port, while ours is under way
    a.receive_datagram(spoofed_mm1(net.b.peer.config, 7), (B_ADDR, 31337), 500, 0.0)
    net.pump()
    assert net.ev(net.a, Phase1Up) and net.ev(net.a, IpsecSaUp)
    ours = [d for s, d in net.log if s == "a" and not d.raw and d.data[:8] == icookie]
    assert len(ours) >= 4  # MM1, MM3, MM5, quick mode ...
    assert {d.remote for d in ours} == {(B_ADDR, 500)}, [d.remote for d in ours]
    assert a.status()["remote_port"] == 500
    # the spoofed exchange got its own answer, to its own port, and changed nothing else
    theirs = [d for s, d in net.log if s == "a" and d.data[:8] != icookie and decode_header(d.data).exchange == C.EXCH_MAIN]
    assert all(d.remote == (B_ADDR, 31337) for d in theirs)


def test_a_few_spoofed_mm1s_per_30s_do_not_lock_out_the_peer():
    # the peer (B) initiates; four spoofed MM1s from its address every 10 s keep more
    # half-open exchanges alive than HALF_OPEN_LIMIT at every moment
    net = make_pair(a_kw={"initiator": False}, b_kw={"initiator": True})
    a, b = net.a.peer, net.b.peer
    seed = 1000
    t = 0.5
    while t < 200:
        net.advance(t)
        for _ in range(4):
            seed += 1
            a.receive_datagram(spoofed_mm1(b.config, seed), (B_ADDR, 20000 + seed), 500, net.now)
        net.pump()
        if t == 40.5:
            b.start(net.now)
            net.pump()
        t += 10
    assert net.ev(net.b, Phase1Up) and net.ev(net.a, Phase1Up)
    assert net.ev(net.a, IpsecSaUp) and net.ev(net.b, IpsecSaUp)
    assert "drop_half_open_limit" not in a.counters


def test_a_flood_between_the_peers_mm1_and_mm3_leaves_its_exchange_alone():
    net = make_pair(a_kw={"initiator": False}, b_kw={"initiator": True})
    a, b = net.a.peer, net.b.peer
    b.start(0.0)
    mm1 = b.datagrams_to_send()[0]
    a.receive_datagram(mm1.data, (B_ADDR, 500), 500, 0.0)
    mm2 = a.datagrams_to_send()[0]
    for i in range(200):  # one round trip's worth of a 2000 packet/s flood
        a.receive_datagram(spoofed_mm1(b.config, 5000 + i), (B_ADDR, 500), 500, 0.05)
    a.datagrams_to_send()
    b.receive_datagram(mm2.data, (A_ADDR, 500), 500, 0.1)
    net.now = 0.1
    net.pump()
    assert net.ev(net.b, IpsecSaUp) and net.ev(net.a, IpsecSaUp)


def test_dh_work_only_for_return_routable_exchanges_and_rationed():
    # an on-path attacker sees our MM2s and answers them: each MM3 costs us a DH computation;
    # those are rationed, and the real peer's exchange still completes (it retransmits)
    net = make_pair(a_kw={"initiator": False}, b_kw={"initiator": True})
    a, b = net.a.peer, net.b.peer
    attackers = [IkePeer(b.config, random_bytes=seeded_random(900 + i), name=f"x{i}") for i in range(30)]
    for x in attackers:
        x.start(0.0)
        a.receive_datagram(x.datagrams_to_send()[0].data, (B_ADDR, 500), 500, 0.0)
        x.receive_datagram(a.datagrams_to_send()[0].data, (A_ADDR, 500), 500, 0.0)
        a.receive_datagram(x.datagrams_to_send()[0].data, (B_ADDR, 500), 500, 0.0)
        a.datagrams_to_send()
    assert a.counters["drop_dh_rate_limit"] == 30 - DH_BURST
    routable = [s for s in a.sas if s.state is Mm.R4]
    assert len(routable) == HALF_OPEN_LIMIT and a.counters["half_open_evicted"] == DH_BURST - HALF_OPEN_LIMIT
    b.start(0.2)
    net.now = 0.2
    net.advance(20)
    assert net.ev(net.b, IpsecSaUp) and net.ev(net.a, IpsecSaUp)


def test_nat_state_resets_when_the_nat_disappears():
    # a port-translating middlebox in front of A (same address, other ports) is detected
    # as a NAT; once it is gone, the next ISAKMP SA finds no NAT: its pairs are plain ESP and
    # the keepalives stop
    net = make_pair(a_kw={"local_address": "203.0.113.5", "ike_lifetime": 600, "rekey_margin": 60, "rekey_fuzz": 0,
                          "ipsec_lifetime": 3600},
                    b_kw={"remote_address": "203.0.113.5"},
                    a_ports={500: 31000, 4500: 31001})
    ua, ub = established(net)
    assert ua.pair.udp_encap and net.a.peer.status()["nat"]["udp_encap"]
    net.advance(100)
    assert net.a.peer.counters.get("keepalives_sent", 0) >= 4
    net.a.port_map.clear()  # the middlebox is gone
    net.advance(545)  # the ISAKMP SA is re-authenticated (from 4500, where it floated)
    assert len(net.ev(net.a, Phase1Up)) == 2
    assert net.ev(net.a, NatDetected)[-1] == NatDetected(False, False)
    st = net.a.peer.status()["nat"]
    assert st["udp_encap"] is False and st["local_behind_nat"] is False
    sent = net.a.peer.counters["keepalives_sent"]
    net.a.peer.rekey_ipsec(net.now)
    net.advance(net.now + 100)
    new = net.ev(net.a, IpsecSaUp)[-1].pair
    assert not new.udp_encap and not net.ev(net.b, IpsecSaUp)[-1].pair.udp_encap
    assert net.a.peer.counters["keepalives_sent"] == sent
