"""Issue 12's low items that live in IKE, each reproduced end to end in memory."""

from __future__ import annotations

import ipaddress

import pytest

from cgwd.ike.v1 import constants as C
from cgwd.ike.v1.codec import DeletePayload, NotifyPayload, decode_header
from cgwd.ike.events import IpsecSaDown, IpsecSaUp, PeerDead, Phase1Up
from cgwd.ike.v1 import IkePeer, IkePeerConfig
from test_ike_session import A_ADDR, B_ADDR, PSK, established, make_pair

V4_ANY = ipaddress.ip_network("0.0.0.0/0")


def _ts(pair):
    return str(pair.local_ts), str(pair.remote_ts)


# ------------------------------------------------------------------ selectors


def test_responder_narrows_the_peers_selectors_to_its_own():
    # the peer proposes 0/0 <-> 0/0; we are configured for 10.1/16 <-> 10.2/16: both ends
    # install the narrowed selectors (our kernel and userspace paths get the same)
    net = make_pair(b_kw={"local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16"})
    ua, ub = established(net)
    assert _ts(ub.pair) == ("10.1.0.0/16", "10.2.0.0/16")
    assert _ts(ua.pair) == ("10.2.0.0/16", "10.1.0.0/16")


def test_responder_keeps_selectors_within_its_own_and_refuses_others():
    net = make_pair(a_kw={"local_ts": "10.2.3.0/24", "remote_ts": "10.1.0.0/16"},
                    b_kw={"local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16"})
    ua, ub = established(net)
    assert _ts(ub.pair) == ("10.1.0.0/16", "10.2.3.0/24") and _ts(ua.pair) == ("10.2.3.0/24", "10.1.0.0/16")
    net = make_pair(a_kw={"local_ts": "192.168.0.0/16", "remote_ts": "10.1.0.0/16"},
                    b_kw={"local_ts": "10.1.0.0/16", "remote_ts": "10.2.0.0/16"})
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.b, IpsecSaUp) and net.b.peer.counters["drop_ts_unacceptable"] == 1
    assert "outside ours" in net.b.peer.status()["last_error"]
    assert "INVALID-ID-INFORMATION" in net.a.peer.status()["last_error"]


def test_initiator_refuses_selectors_wider_than_it_asked_for():
    net = make_pair(a_kw={"local_ts": "10.2.0.0/16", "remote_ts": "10.1.0.0/16"})
    b = net.b.peer
    b.narrow_ts = lambda proposed, configured: configured  # a sloppy responder: 0/0 back
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.a, IpsecSaUp)
    assert "not within ours" in net.a.peer.status()["last_error"]
    assert net.a.peer.counters["drop_bad_ts"] == 1


def test_ipv6_selectors_are_negotiated_or_cleanly_refused():
    six = {"local_ts": "::/0", "remote_ts": "::/0"}
    ua, ub = established(make_pair(a_kw=six, b_kw=six))
    assert ua.pair.inner_family == ub.pair.inner_family == 6
    # an IPv4 tunnel asked for IPv6 (and the other way round): a refusal, no traceback
    for a_kw, b_kw in ((six, {}), ({}, six)):
        net = make_pair(a_kw=a_kw, b_kw=b_kw)
        net.a.peer.start(0)
        net.pump()
        assert not net.ev(net.a, IpsecSaUp) and not net.ev(net.b, IpsecSaUp)
        assert net.b.peer.counters["drop_ts_unacceptable"] == 1
        for p in (net.a.peer, net.b.peer):
            assert not p.counters.get("drop_internal_error")
    with pytest.raises(ValueError, match="one family"):
        IkePeerConfig(A_ADDR, B_ADDR, PSK, local_ts="::/0", remote_ts="0.0.0.0/0")


def test_ids_of_two_families_from_the_peer_are_refused():
    net = make_pair()
    a = net.a.peer
    a.config.local_ts_net = ipaddress.ip_network("::/0")  # a peer offering IPv6 <-> IPv4
    a.start(0)
    net.pump()
    assert not net.ev(net.b, IpsecSaUp) and net.b.peer.counters["drop_bad_ts"] == 1
    assert not net.b.peer.counters.get("drop_internal_error")


# ------------------------------------------------------------------ INITIAL-CONTACT


def test_initial_contact_after_a_dpd_restart_too():
    # only A runs DPD; the link dies, A declares the peer dead and restarts: its first phase 1
    # after that carries INITIAL-CONTACT, so B drops the pair it still holds of A's old life
    net = make_pair(a_kw={"dpd_interval": 10, "dpd_retries": 3, "dpd_action": "restart"},
                    b_kw={"dpd_interval": 0})
    _, ub = established(net)
    net.drop = lambda s, d: True
    net.advance(net.now + 45)
    assert net.ev(net.a, PeerDead)
    net.drop = lambda s, d: False
    net.advance(net.now + 120)
    assert len(net.ev(net.a, Phase1Up)) == 2
    assert net.b.peer.counters["initial_contact_received"] == 2
    assert (ub.pair.spi_in, "initial-contact") in [(d.spi_in, d.reason) for d in net.ev(net.b, IpsecSaDown)]
    assert len(net.b.peer.status()["ipsec_sas"]) == 1


def test_no_initial_contact_while_we_hold_pairs():
    # the peer deleted only the ISAKMP SA: our pairs stay, so the new phase 1 must not ask the
    # peer to drop everything
    net = make_pair()
    established(net)
    b = net.b.peer
    b.send_info(b.current_sa(), [DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[b.current_sa().cookies])])
    b.remove_sa(b.current_sa())
    net.pump()
    assert len(net.ev(net.a, Phase1Up)) == 2
    assert net.b.peer.counters["initial_contact_received"] == 1
    assert not net.ev(net.b, IpsecSaDown)


# ------------------------------------------------------------------ peer-started phase 1


def test_peer_started_bring_up_makes_one_pair():
    # both ends keep the tunnel up; the peer starts phase 1 (and its quick mode): we must not
    # start a second quick mode of our own
    net = make_pair(a_kw={"initiator": True}, b_kw={"initiator": True})
    a, b = net.a.peer, net.b.peer
    a._started = True  # (as started, without initiating first)
    b.start(0)
    net.pump()
    net.advance(30)
    assert len(net.ev(net.a, IpsecSaUp)) == 1 and len(net.ev(net.b, IpsecSaUp)) == 1
    assert len(a.status()["ipsec_sas"]) == len(b.status()["ipsec_sas"]) == 1
    assert not a.counters.get("rekey_collisions") and not b.counters.get("rekey_collisions")
    # and when no quick mode of the peer's arrives, ours follows after the grace time
    net = make_pair(a_kw={"initiator": True}, b_kw={"initiator": True})
    net.a.peer._started = True
    def b_quick_mode_of_its_own(s, d):  # (what B sends for quick modes it started)
        if s is not net.b or d.raw or decode_header(d.data).exchange != C.EXCH_QUICK:
            return False
        mid = decode_header(d.data).message_id
        return any(q.initiator and q.mid == mid for sa in net.b.peer.sas for q in sa.qm.values())

    net.drop = b_quick_mode_of_its_own
    net.b.peer.start(0)
    net.pump()
    assert not net.ev(net.a, IpsecSaUp)
    net.advance(10)
    ups = net.ev(net.a, IpsecSaUp)
    assert len(ups) == 1 and ups[0].initiator


# ------------------------------------------------------------------ replay of protected informationals


def _info(peer, payloads):
    sa = peer.current_sa()
    peer.send_info(sa, payloads)
    return peer.datagrams_to_send()[-1]


def test_an_old_informational_cannot_be_replayed_later_in_the_sas_life():
    net = make_pair()
    _, ub = established(net)
    a, b = net.a.peer, net.b.peer
    cookies = b.current_sa().cookies
    # a DELETE of the pair, captured on the wire (B sends it; A processes it: the pair goes)
    delete = _info(b, [DeletePayload(protocol=C.PROTO_IPSEC_ESP, spi_size=4, spis=[ub.pair.spi_in.to_bytes(4, "big")])])
    # ... later: 300 more protected informationals (an hour of DPD each way)
    for i in range(300):
        d = _info(b, [NotifyPayload(notify_type=C.N_R_U_THERE, protocol=C.PROTO_ISAKMP, spi=cookies,
                                    data=(1000 + i).to_bytes(4, "big"))])
        a.receive_datagram(d.data, (B_ADDR, 500), 500, net.now)
    a.receive_datagram(delete.data, (B_ADDR, 500), 500, net.now)  # first time: acted upon
    a.datagrams_to_send()
    assert a.counters["dpd_answered"] == 300
    pairs = len(a.children)
    for i in range(300):
        d = _info(b, [NotifyPayload(notify_type=C.N_R_U_THERE, protocol=C.PROTO_ISAKMP, spi=cookies,
                                    data=(5000 + i).to_bytes(4, "big"))])
        a.receive_datagram(d.data, (B_ADDR, 500), 500, net.now)
    a._rx_cache.clear()  # (the retransmission cache would answer it as a duplicate anyway)
    a.receive_datagram(delete.data, (B_ADDR, 500), 500, net.now)
    assert a.counters["drop_replay"] == 1 and len(a.children) == pairs


def test_message_ids_of_an_sa_are_bounded_and_the_sa_renewed(monkeypatch):
    import cgwd.ike.v1.peer as v1peer

    monkeypatch.setattr(v1peer, "MAX_MIDS_PER_SA", 40)
    net = make_pair()
    established(net)
    a, b = net.a.peer, net.b.peer
    cookies = b.current_sa().cookies
    for i in range(60):
        d = _info(b, [NotifyPayload(notify_type=C.N_R_U_THERE, protocol=C.PROTO_ISAKMP, spi=cookies,
                                    data=i.to_bytes(4, "big"))])
        a.receive_datagram(d.data, (B_ADDR, 500), 500, net.now)
    assert a.counters["drop_message_ids_exhausted"] >= 20
    assert len(a.sas[0].done_mids) <= 40
    net.pump()
    net.advance(net.now + 5)
    assert len(net.ev(net.a, Phase1Up)) == 2  # re-authenticated: a fresh SA takes new exchanges


# ------------------------------------------------------------------ DPD liveness only from valid content


def test_dpd_is_not_satisfied_by_a_malformed_or_unexpected_answer():
    net = make_pair(a_kw={"dpd_interval": 10, "dpd_retries": 3, "dpd_action": "clear"}, b_kw={"dpd_interval": 0})
    established(net)
    a, b = net.a.peer, net.b.peer
    cookies = b.current_sa().cookies
    net.drop = lambda s, d: True  # the peer's real answers are lost; only these arrive
    t = net.now
    while not net.ev(net.a, PeerDead) and net.now < t + 100:
        net.advance(net.now + 2)
        for data in (b"\0\0\0", (a.liveness.seq + 7).to_bytes(4, "big")):  # malformed; another probe's ACK
            d = _info(b, [NotifyPayload(notify_type=C.N_R_U_THERE_ACK, protocol=C.PROTO_ISAKMP, spi=cookies,
                                        data=data)])
            a.receive_datagram(d.data, (B_ADDR, 500), 500, net.now)
    assert net.ev(net.a, PeerDead)
    assert a.counters["drop_bad_dpd"] >= 3 and a.counters["dpd_unexpected_ack"] >= 3
    # a matching ACK still counts
    net = make_pair(a_kw={"dpd_interval": 10})
    established(net)
    net.advance(net.now + 100)
    assert not net.ev(net.a, PeerDead) and net.a.peer.counters["dpd_acked"] >= 5


# ------------------------------------------------------------------ phase-1 lifetime bounds


def _mm1_with_lifetime(life: int) -> bytes:
    x = IkePeer(IkePeerConfig(A_ADDR, B_ADDR, PSK, ike_lifetime=life), name="x")
    x.start(0)
    return x


def test_responder_bounds_the_phase1_lifetime():
    net = make_pair(a_kw={"ike_lifetime": 2**31}, b_kw={"ike_lifetime": 28800})
    established(net)
    st = net.b.peer.status()
    assert st["expires_at"] - st["established_at"] == 28800
    assert net.a.peer.status()["expires_at"] - net.a.peer.status()["established_at"] == 28800  # as the answer said
    net = make_pair(a_kw={"ike_lifetime": 5})
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.b, Phase1Up) and net.b.peer.counters["drop_no_proposal_chosen"] == 1


# ------------------------------------------------------------------ a peer's re-authentication without DELETE


def _established_sas(peer):
    return [s for s in peer.sas if s.established]


def test_responder_deletes_the_isakmp_sas_a_reauthenticating_peer_left_behind():
    # A's quick mode goes unanswered: A gives the ISAKMP SA up (without a DELETE: the peer is
    # not answering) and authenticates again, without INITIAL-CONTACT since it keeps its pair.
    # B must take the new SA as a re-authentication (strongSwan's adopt_children_job): the
    # SAs that were up before the new main mode began are deleted a few seconds later, at
    # B and (DELETE) at A, and the pair stays.
    from cgwd.ike.v1.peer import SUPERSEDED_DELETE_DELAY

    net = make_pair(a_kw={"retransmit_tries": 2})
    ua, ub = established(net)
    a, b = net.a.peer, net.b.peer
    old = b.current_sa()
    net.drop = lambda s, d: s is net.b and not d.raw and decode_header(d.data).exchange == C.EXCH_QUICK
    a.rekey_ipsec(net.now)
    net.advance(net.now + 20)
    assert a.counters["phase1_unresponsive"] == 1 and len(net.ev(net.a, Phase1Up)) == 2
    assert a.status()["ike_spi"] != {"initiator": old.icookie.hex(), "responder": old.rcookie.hex()}
    assert b.counters["initial_contact_received"] == 1  # (only the first phase 1 carried it)
    assert len(_established_sas(b)) == 2 and old in b.sas  # the new one is current, the old one kept a while
    net.drop = lambda s, d: False
    net.advance(net.now + SUPERSEDED_DELETE_DELAY + 1)
    assert _established_sas(b) == [b.current_sa()] and old not in b.sas
    assert b.counters["isakmp_superseded"] == 1
    assert b.current_sa().cookies == a.current_sa().cookies and len(_established_sas(a)) == 1
    net.advance(net.now + 60)
    # the pair was only ever replaced by its rekey (retried on the new SA), never lost
    assert {d.reason for d in net.ev(net.a, IpsecSaDown) + net.ev(net.b, IpsecSaDown)} <= {"rekeyed"}
    assert a.status()["state"] == b.status()["state"] == "established"
    assert {(c.pair.spi_in, c.pair.spi_out) for c in a.children.installed()} == {
        (c.pair.spi_out, c.pair.spi_in) for c in b.children.installed()} != set()


def test_crossing_main_modes_are_not_taken_for_a_reauthentication():
    # both ends bring the tunnel up at once: each main mode began before the other was
    # complete, so neither SA supersedes the other (each end would delete a different one)
    net = make_pair(a_kw={"initiator": True}, b_kw={"initiator": True})
    net.a.peer.start(0)
    net.b.peer.start(0)
    net.pump()
    net.advance(60)
    a, b = net.a.peer, net.b.peer
    assert len(_established_sas(a)) == len(_established_sas(b)) == 2
    assert not a.counters.get("isakmp_superseded") and not b.counters.get("isakmp_superseded")
    assert a.status()["state"] == b.status()["state"] == "established"


def test_our_reauthentication_deletes_the_old_isakmp_sa_only_after_a_grace_time():
    # strongSwan moves the pairs to the new IKE SA in a job of its own after the new SA is up
    # (adopt_children_job); a DELETE of the old SA that arrives first takes the pairs with it.
    # So the old SA is deleted REAUTH_DELETE_DELAY after the new one is established, not at once.
    from cgwd.ike.v1.peer import REAUTH_DELETE_DELAY

    net = make_pair()
    established(net)
    a, b = net.a.peer, net.b.peer
    old = a.current_sa()
    a.rekey_ike(net.now)
    net.pump()
    assert a.current_sa() is not old and old in a.sas and len(_established_sas(b)) == 2
    assert a.counters["rekeys_ike"] == 1
    t0 = net.now
    net.advance(t0 + 1.0)  # the peer's adoption job has had a second at least
    assert old in a.sas and len(_established_sas(b)) == 2
    net.advance(t0 + REAUTH_DELETE_DELAY + 0.5)
    assert old not in a.sas and _established_sas(b) == [b.current_sa()]
    assert b.current_sa().cookies == a.current_sa().cookies
    assert not a.counters.get("isakmp_superseded") and not b.counters.get("isakmp_superseded")
    assert net.ev(net.a, IpsecSaDown) == [] and net.ev(net.b, IpsecSaDown) == []
