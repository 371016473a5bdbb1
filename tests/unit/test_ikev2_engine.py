"""The IKEv2 engine in memory, both ends, fake clock: IKE_SA_INIT + IKE_AUTH for every AWS
algorithm set, identities, NAT-T, COOKIE, INVALID_KE_PAYLOAD, lost and duplicated messages,
the responder-only mode, the IkeEngine contract and the status keys."""

from __future__ import annotations

import pytest

from cgwd.ike.engine import ChildState, IkeEngine
from cgwd.ike.events import IpsecSaUp, NatDetected, Phase1Down, Phase1Up
from cgwd.ike.session import IkePeer, IkePeerConfig
from cgwd.ike.v2.peer import Ikev2Peer, Ikev2PeerConfig

from test_ikev2_harness import A_ADDR, B_ADDR, PSK, Net, pairs_match

IKE_SETS = ["aes128-sha1-modp1024", "aes256-sha256-modp2048", "aes128-sha384-ecp384", "aes256-sha512-ecp521",
            "aes128-sha256-prfsha1-modp2048s256", "aes256-sha1-modp3072", "aes128gcm16-prfsha256-ecp256",
            "aes256gcm16-prfsha384-ecp384", "aes256gcm16-prfsha512-modp2048", "aes128-sha1-modp1024s160",
            "aes128-sha256-modp2048s224"]
ESP_SETS = ["aes128-sha1-modp1024", "aes256-sha256-modp2048", "aes128-sha384", "aes256-sha512-ecp256",
            "aes128gcm16-modp2048", "aes256gcm16-ecp384", "aes256gcm16", "aes128-sha1-modp1536"]


@pytest.mark.parametrize("ike", IKE_SETS)
def test_ike_sa_init_and_ike_auth_for_every_ike_set(ike):
    net = Net({"ike_proposals": [ike]}, {"ike_proposals": [ike]}).up()
    assert net.both_established()
    a, b = net.a.peer.status(), net.b.peer.status()
    assert a["algorithms"] == b["algorithms"] == ike
    assert (a["role"], b["role"]) == ("initiator", "responder")
    assert a["ike_spi"] == b["ike_spi"]
    assert pairs_match(net.a, net.b)
    assert net.a.of(Phase1Up)[0].algorithms == ike
    # exactly four messages: IKE_SA_INIT and IKE_AUTH, no retransmission
    assert len(net.wire) == 4 and a["counters"]["retransmits"] == 0


@pytest.mark.parametrize("esp", ESP_SETS)
def test_first_child_sa_for_every_esp_set(esp):
    net = Net({"esp_proposals": [esp]}, {"esp_proposals": [esp]}).up()
    up = net.a.ups()[0].pair
    want = esp.split("-")
    assert up.encryption == want[0]
    assert up.integrity == (None if want[0].endswith("gcm16") else want[1])
    assert up.pfs_group is None  # the Child SA of IKE_AUTH has no key exchange of its own
    assert pairs_match(net.a, net.b)
    assert net.a.installed()[0]["algorithms"] == net.b.installed()[0]["algorithms"]


def test_several_proposals_the_responder_picks_its_first_acceptable():
    net = Net({"ike_proposals": ["aes256gcm16-prfsha384-ecp384", "aes128-sha1-modp2048"],
               "esp_proposals": ["aes256gcm16-ecp384", "aes128-sha1-modp2048"]},
              {"ike_proposals": ["aes128-sha1-modp2048", "aes256gcm16-prfsha384-ecp384"],
               "esp_proposals": ["aes128-sha1-modp2048"]}).up()
    # B prefers modp2048 but A's KE is for ecp384, which B also accepts: no INVALID_KE round trip
    assert net.a.peer.status()["algorithms"] == "aes256gcm16-prfsha384-ecp384"
    assert net.a.ups()[0].pair.encryption == "aes128"
    assert len(net.wire) == 4


def test_invalid_ke_payload_is_answered_and_the_initiator_retries_with_that_group():
    net = Net({"ike_proposals": ["aes128-sha1-ecp256", "aes128-sha1-modp2048"]},
              {"ike_proposals": ["aes128-sha1-modp2048"]}).up()
    assert net.both_established()
    assert net.a.peer.status()["algorithms"] == "aes128-sha1-modp2048"
    assert net.b.peer.counters["invalid_ke_sent"] == 1
    assert net.a.peer.counters["invalid_ke_received"] == 1
    assert len(net.wire) == 6


def test_no_proposal_chosen_fails_and_reconnects_later():
    net = Net({"ike_proposals": ["aes128-sha1-modp2048"]}, {"ike_proposals": ["aes256-sha512-ecp521"]}).up()
    assert not net.both_established()
    st = net.a.peer.status()
    assert "NO_PROPOSAL_CHOSEN" in st["last_error"]
    assert net.a.peer.get_timer() is not None  # the reconnect
    sent = len(net.wire)
    net.advance(6)
    assert len(net.wire) > sent  # tried again


def test_cookie_when_half_open_sas_pass_the_threshold():
    net = Net(b_kw={"cookie_threshold": 0}).up()
    assert net.both_established()
    assert net.b.peer.counters["cookies_sent"] == 1 and net.b.peer.counters["cookies_verified"] == 1
    assert net.a.peer.counters["cookies_received"] == 1
    # the retried IKE_SA_INIT carries the COOKIE first and message ID 0
    from cgwd.ike.v2.codec import NotifyPayload, decode_message

    retry = [d for src, d in net.wire if src == "A"][1]
    h, ps = decode_message(retry.data)
    assert h.message_id == 0 and isinstance(ps[0], NotifyPayload) and ps[0].notify_type == 16390


def test_a_forged_cookie_is_answered_with_a_new_one_and_makes_no_state():
    net = Net(b_kw={"cookie_threshold": 0})
    net.a.peer.start(0)
    first = net.a.peer.datagrams_to_send()[0]
    from cgwd.ike.v2.codec import NotifyPayload, decode_message, encode_message

    h, ps = decode_message(first.data)
    forged = encode_message(h, [NotifyPayload(16390, data=b"\x01" + b"x" * 32), *ps])
    net.b.peer.receive_datagram(forged, (A_ADDR, 500), 500, 0)
    out = net.b.peer.datagrams_to_send()
    assert len(out) == 1 and net.b.peer.status()["ike_sas"] == []
    h2, ps2 = decode_message(out[0].data)
    assert ps2[0].notify_type == 16390 and ps2[0].data != b"\x01" + b"x" * 32


def test_half_open_limit_evicts_the_oldest_and_they_expire():
    net = Net(b_kw={"cookie_threshold": 100, "half_open_limit": 3})
    from cgwd.ike.v2.codec import Header, KePayload, NoncePayload, SaPayload, encode_message
    from cgwd.ike.v2.proposals import ike_offer, parse_ike_proposal
    from cgwd.ike.crypto import DiffieHellman

    dh = DiffieHellman(14)
    for i in range(6):
        h = Header(bytes([i + 1]) * 8, bytes(8), 0, 34, 0x08, 0)
        msg = encode_message(h, [SaPayload(ike_offer([parse_ike_proposal("aes128-sha256-modp2048")])),
                                 KePayload(14, dh.public), NoncePayload(bytes([i]) * 32)])
        net.b.peer.receive_datagram(msg, (A_ADDR, 500), 500, float(i))
    assert len(net.b.peer.status()["ike_sas"]) == 3
    assert net.b.peer.counters["half_open_evicted"] == 3
    net.now = 5
    net.advance(40)
    assert net.b.peer.status()["ike_sas"] == []
    assert net.b.peer.counters["half_open_expired"] == 3


def test_psk_mismatch_fails_closed_on_both_sides():
    net = Net(b_kw={"psk": b"another-key"}).up()
    assert not net.both_established()
    assert net.b.peer.counters["auth_failures"] == 1
    assert "pre-shared key" in net.b.peer.status()["last_error"]
    assert "refused our authentication" in net.a.peer.status()["last_error"]
    assert net.a.ups() == [] and net.b.ups() == []
    assert net.b.peer.status()["ike_sas"] == []


@pytest.mark.parametrize("a_id,b_expects,ok", [
    ("fqdn:cgw.example.com", "fqdn:cgw.example.com", True),
    ("keyid:tunnel-1", "keyid:tunnel-1", True),
    ("ops@example.com", "userfqdn:ops@example.com", True),
    ("fqdn:cgw.example.com", "fqdn:other.example.com", False),
    (None, "198.51.100.7", False),
])
def test_identities(a_id, b_expects, ok):
    net = Net({"local_id": a_id}, {"remote_id": b_expects}).up()
    assert net.both_established() is ok
    if not ok:
        assert "does not match" in net.b.peer.status()["last_error"]
        assert net.b.peer.counters["id_mismatch"] == 1


def test_initiator_checks_the_responder_identity():
    net = Net({"remote_id": "fqdn:aws.example"}).up()
    assert net.a.peer.status()["state"] != "established"
    assert "does not match" in net.a.peer.status()["last_error"]
    assert net.a.ups() == []


def test_nat_detected_both_ways_and_ike_auth_moves_to_4500():
    net = Net(nat=True).up()
    assert net.a.of(NatDetected) == [NatDetected(True, False)]
    assert net.b.of(NatDetected) == [NatDetected(False, True)]
    ports = [(src, d.local_port, d.remote[1]) for src, d in net.wire]
    assert ports[:2] == [("A", 500, 500), ("B", 500, net.nat_ports[500])]
    assert ports[2:] == [("A", 4500, 4500), ("B", 4500, net.nat_ports[4500])]
    pa, pb = net.a.ups()[0].pair, net.b.ups()[0].pair
    assert pa.udp_encap and pb.udp_encap and pb.remote_port == net.nat_ports[4500]


def test_keepalives_behind_nat_and_port_following():
    net = Net(nat=True).up()
    net.advance(21)
    assert net.a.peer.counters["keepalives_sent"] >= 1
    assert "keepalives_sent" not in net.b.peer.counters  # B is not behind the NAT
    ka = [d for src, d in net.wire if src == "A" and d.raw]
    assert ka and ka[0].data == b"\xff" and ka[0].local_port == 4500
    # the NAT forgets its mapping: A's next request comes from another port; B follows
    net.nat_ports[4500] = 42000
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    assert net.b.peer.remote_port == 42000
    assert net.b.peer.counters["peer_port_changes"] == 1


def test_forced_nat_traversal_makes_the_peer_see_a_nat():
    net = Net({"nat_traversal": "force"}).up()
    assert net.b.of(NatDetected) == [NatDetected(False, True)]
    assert net.a.of(NatDetected) == [NatDetected(True, False)]
    assert net.a.ups()[0].pair.udp_encap


def test_nat_traversal_off_stays_on_500_with_raw_esp():
    net = Net({"nat_traversal": "off"}, {"nat_traversal": "off"}).up()
    assert all(d.local_port == 500 for _, d in net.wire)
    assert not net.a.ups()[0].pair.udp_encap


def test_lost_ike_auth_response_is_answered_from_the_cache():
    net = Net()
    dropped = []

    def drop(src, d):
        if src is net.b and len(dropped) < 1 and d.data[18] == 35:
            dropped.append(d)
            return True
        return False

    net.drop = drop
    net.up()
    assert not net.both_established() or net.a.peer.status()["state"] != "established"
    net.advance(3)
    assert net.both_established()
    assert net.a.peer.counters["retransmits"] == 1
    assert net.b.peer.counters["retransmits_answered"] == 1
    # processed once: one IKE SA, one Child SA at B
    assert len(net.b.of(Phase1Up)) == 1 and len(net.b.ups()) == 1
    assert pairs_match(net.a, net.b)


def test_duplicated_messages_are_processed_once():
    net = Net()
    net.dup = lambda src, d: True
    net.up()
    assert net.both_established()
    assert len(net.a.ups()) == len(net.b.ups()) == 1
    assert net.b.peer.counters["retransmits_answered"] >= 2
    # A gets each response twice: the second is not an answer to anything outstanding
    assert net.a.peer.counters.get("drop_unexpected_response", 0) >= 1 or \
        net.a.peer.counters.get("drop_unknown_spi", 0) >= 1
    net.advance(30)
    assert len(net.a.ups()) == len(net.b.ups()) == 1


def test_lost_ike_sa_init_is_retransmitted_with_backoff():
    net = Net()
    net.drop = lambda src, d: src is net.b
    net.a.peer.start(0)
    net.pump()
    sends = []
    for _ in range(10):
        t = net.a.peer.get_timer()
        if t is None or t > 200:
            break
        net.now = t
        net.a.peer.handle_timer(t)
        sends.append(t)
        net.pump()
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    assert gaps[:4] == [4.0, 8.0, 16.0, 32.0]
    assert "no answer to IKE_SA_INIT" in net.a.peer.status()["last_error"]


def test_responder_only_waits_for_the_peer():
    net = Net({"initiator": False}, {"initiator": False})
    net.up()
    assert net.wire == []
    assert net.a.peer.status()["state"] == "waiting" and net.a.peer.status()["waiting_for_peer"]
    net.advance(100)
    assert net.wire == []
    # the peer (AWS, startup action "start") initiates: we answer
    net.b.peer.config.initiator = True
    net.b.peer.start(net.now)
    net.pump()
    assert net.both_established()
    assert net.a.peer.status()["role"] == "responder"


def test_responder_only_never_reinitiates_after_the_peer_deletes():
    net = Net({"initiator": False}, {"initiator": True}, b_initiator=True)
    net.b.peer.start(0)
    net.a.peer.start(0)
    net.pump()
    assert net.both_established()
    before = len([1 for src, _ in net.wire if src == "A"])
    net.b.peer.stop(net.now)
    net.pump()
    assert net.a.peer.status()["state"] == "waiting"
    assert net.a.of(Phase1Down)
    net.advance(60)
    assert len([1 for src, _ in net.wire if src == "A"]) == before + 1  # only the answer to the DELETE


def test_implements_the_ike_engine_protocol_with_the_ikev1_status_keys():
    p2 = Ikev2Peer(Ikev2PeerConfig(A_ADDR, B_ADDR, PSK))
    p1 = IkePeer(IkePeerConfig(A_ADDR, B_ADDR, PSK))
    assert isinstance(p2, IkeEngine) and p2.version == 2
    s1, s2 = p1.status(), p2.status()
    assert set(s1) <= set(s2)
    for k in ("nat", "dpd"):
        assert set(s1[k]) <= set(s2[k])
    assert s2["version"] == 2


def test_child_state_and_status_of_the_pairs():
    net = Net().up()
    spi = net.a.ups()[0].pair.spi_in
    assert net.a.peer.child_state(spi) is ChildState.INSTALLED
    assert net.a.peer.child_state(12345) is None
    s = net.a.peer.status()["ipsec_sas"][0]
    assert s["spi_in"] == f"{spi:08x}" and s["state"] == "installed" and s["rekey_at"] < s["expires_at"]


def test_secrets_never_in_status_or_repr():
    net = Net().up()
    text = repr(net.a.peer.status()) + repr(net.a.peer.config) + repr(net.a.ups())
    assert PSK.decode() not in text
    for e in net.a.ups():
        assert e.pair.enc_key_in.hex() not in text


def test_bad_configuration_is_refused_with_clear_errors():
    with pytest.raises(ValueError, match="empty pre-shared key"):
        Ikev2PeerConfig(A_ADDR, B_ADDR, b"")
    with pytest.raises(ValueError, match="dpd_action"):
        Ikev2PeerConfig(A_ADDR, B_ADDR, PSK, dpd_action="reboot")
    with pytest.raises(ValueError, match="unknown encryption"):
        Ikev2PeerConfig(A_ADDR, B_ADDR, PSK, ike_proposals=["des-sha1-modp1024"])
    with pytest.raises(ValueError, match="one family"):
        Ikev2PeerConfig(A_ADDR, B_ADDR, PSK, local_ts="::/0")
    with pytest.raises(ValueError, match="one family"):
        Ikev2PeerConfig(A_ADDR, "2001:db8::2", PSK)
    with pytest.raises(ValueError):
        Ikev2PeerConfig(A_ADDR, "not-an-address", PSK)


def test_ipsec_sa_up_of_the_first_pair_switches_at_once():
    net = Net().up()
    ev = net.a.of(IpsecSaUp)[0]
    assert ev.initiator is False and ev.pair.replaces_spi_in is None


def test_reconfigure_takes_new_liveness_timers_and_refuses_another_peer():
    import dataclasses

    net = Net({"dpd_interval": 60}).up()
    net.advance(5)
    assert net.a.peer.counters.get("liveness_sent", 0) == 0
    cfg = net.a.peer.config
    new = Ikev2PeerConfig(cfg.local_address, cfg.remote_address, PSK, ike_proposals=cfg.ike_proposals,
                          esp_proposals=cfg.esp_proposals, dpd_interval=3)
    net.a.peer.reconfigure(new, net.now)
    assert net.a.peer.get_timer() <= net.now + 3
    net.advance(4)
    assert net.a.peer.counters["liveness_sent"] >= 1
    with pytest.raises(ValueError, match="addresses"):
        net.a.peer.reconfigure(dataclasses.replace(new, remote_address="198.51.100.1"), net.now)


def test_ipv6_inside_and_outside():
    # AWS's IPv6 VPNs (Transit Gateway): ::/0 selectors, and IPv6 outside addresses
    from cgwd.ike.v2.peer import Ikev2Peer

    from test_ikev2_harness import DEFAULT, Side, seeded

    a6, b6 = "2001:db8::1", "2001:db8::2"
    net = Net()
    kw = dict(DEFAULT, local_ts="::/0", remote_ts="::/0")
    net.a = Side(Ikev2Peer(Ikev2PeerConfig(a6, b6, PSK, **kw), random_bytes=seeded(1), name="A"), a6)
    net.b = Side(Ikev2Peer(Ikev2PeerConfig(b6, a6, PSK, initiator=False, **kw), random_bytes=seeded(2), name="B"), b6)
    net.up()
    assert net.both_established()
    pa = net.a.ups()[0].pair
    assert str(pa.local_ts) == "::/0" and str(pa.remote_ts) == "::/0" and pa.remote_address == b6
    assert pairs_match(net.a, net.b)
    # an IPv4 offer is refused by an IPv6-only responder: the IKE SA stands, no Child SA
    net2 = Net(b_kw={"local_ts": "::/0", "remote_ts": "::/0"}).up()
    assert net2.both_established() and net2.a.ups() == []
    assert "TS_UNACCEPTABLE" in net2.a.peer.status()["last_error"]
