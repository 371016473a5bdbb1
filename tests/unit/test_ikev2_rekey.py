"""IKEv2 engine in memory: Child SA and IKE SA rekeys from either side, simultaneous rekeys
(2.8.1/2.8.2 nonce rule), INVALID_KE_PAYLOAD and TEMPORARY_FAILURE in CREATE_CHILD_SA, lost
messages during rekeys, deletes, stop, liveness and its death, data-path callbacks."""

from __future__ import annotations

import pytest

from cgwd.ike.engine import ChildState
from cgwd.ike.events import IpsecSaDown, IpsecSaUp, PeerDead, Phase1Down, Phase1Up
from cgwd.ike.v2.peer import REMOVE_DELAY

from test_ikev2_harness import A_ADDR, Net, pairs_match


def settle(net: Net, t: float = REMOVE_DELAY + 1) -> None:
    net.advance(t)


def one_pair_each(net: Net) -> bool:
    return len(net.a.installed()) == 1 and len(net.b.installed()) == 1 and pairs_match(net.a, net.b)


def children(side) -> list[dict]:
    return side.peer.status()["ipsec_sas"]


@pytest.mark.parametrize("who", ["a", "b"])
def test_child_rekey_from_either_side(who):
    net = Net().up()
    old_a = net.a.ups()[0].pair
    starter = getattr(net, who)
    starter.peer.rekey_ipsec(net.now)
    net.pump()
    ups_a, ups_b = net.a.ups(), net.b.ups()
    assert len(ups_a) == len(ups_b) == 2
    new_a = ups_a[1]
    # make-before-break: the new pair replaces the old one and is held outbound until the peer uses it
    assert new_a.pair.replaces_spi_in == old_a.spi_in and new_a.initiator
    assert ups_b[1].initiator and ups_b[1].pair.replaces_spi_in == ups_b[0].pair.spi_in
    assert new_a.pair.pfs_group == 14  # PFS: the ESP proposal's group
    assert net.a.peer.child_state(old_a.spi_in) is ChildState.REKEYED
    assert net.a.peer.child_state(new_a.pair.spi_in) is ChildState.INSTALLED
    # the old pair stays inbound for a moment after its DELETE, then goes
    assert net.a.downs() == [] and net.b.downs() == []
    settle(net)
    assert [d.spi_in for d in net.a.downs()] == [old_a.spi_in]
    assert [d.reason for d in net.b.downs()] == ["rekeyed"]
    assert one_pair_each(net)
    assert net.a.peer.counters["rekeys_ipsec"] == net.b.peer.counters["rekeys_ipsec"] == 1


def test_child_rekeys_on_lifetime_repeatedly_without_a_gap():
    net = Net({"ipsec_lifetime": 300, "rekey_margin": 60, "rekey_fuzz": 50},
              {"ipsec_lifetime": 300, "rekey_margin": 30, "rekey_fuzz": 0}, seed=3).up()
    for _ in range(12):
        net.advance(60)
        assert len(net.a.installed()) >= 1 and len(net.b.installed()) >= 1
    assert net.a.peer.counters["rekeys_ipsec"] >= 3
    settle(net)
    assert one_pair_each(net)
    assert net.a.peer.counters.get("dpd_dead", 0) == 0


@pytest.mark.parametrize("seed", range(1, 9))
def test_simultaneous_child_rekeys_leave_one_pair(seed):
    net = Net(seed=seed).up()
    net.a.peer.rekey_ipsec(net.now)
    net.b.peer.rekey_ipsec(net.now)
    net.pump()
    assert net.a.peer.counters["rekey_collisions"] == net.b.peer.counters["rekey_collisions"] == 1
    # both new pairs exist for a moment; the redundant one is REKEYED (standby) at both ends
    new_a = [e.pair.spi_in for e in net.a.ups()[1:]]
    states = sorted(net.a.peer.child_state(s).value for s in new_a)
    assert states == ["installed", "rekeyed"]
    settle(net, 40)
    assert one_pair_each(net)
    assert len(children(net.a)) == len(children(net.b)) == 1
    winner = net.a.installed()[0]["spi_in"]
    assert winner in {f"{s:08x}" for s in new_a}


def test_simultaneous_rekeys_on_identical_lifetimes():
    kw = {"ipsec_lifetime": 200, "rekey_margin": 50, "rekey_fuzz": 0}
    net = Net(kw, kw).up()
    net.advance(151)
    assert net.a.peer.counters["rekey_collisions"] == 1
    settle(net, 40)
    assert one_pair_each(net)


@pytest.mark.parametrize("who", ["a", "b"])
def test_ike_sa_rekey_from_either_side_keeps_the_children(who):
    net = Net().up()
    spis = net.a.peer.status()["ike_spi"]
    child = net.a.installed()[0]["spi_in"]
    getattr(net, who).peer.rekey_ike(net.now)
    net.pump()
    sa, sb = net.a.peer.status(), net.b.peer.status()
    assert sa["ike_spi"] == sb["ike_spi"] != spis
    assert len(sa["ike_sas"]) == len(sb["ike_sas"]) == 1  # the old one deleted by the rekey's initiator
    assert sa["role"] == ("initiator" if who == "a" else "responder")
    assert net.a.installed()[0]["spi_in"] == child and net.a.downs() == []
    assert net.a.peer.counters["rekeys_ike"] == net.b.peer.counters["rekeys_ike"] == 1
    assert len(net.a.of(Phase1Up)) == 2 and net.a.of(Phase1Down) == []
    # the new IKE SA carries the next exchanges (its message IDs start at 0)
    net.b.peer.rekey_ipsec(net.now)
    net.pump()
    settle(net)
    assert one_pair_each(net)
    assert net.a.installed()[0]["spi_in"] != child


def test_ike_sa_rekeys_on_lifetime():
    net = Net({"ike_lifetime": 600, "rekey_margin": 100, "rekey_fuzz": 0}, {"ike_lifetime": 3600}).up()
    first = net.a.peer.status()["ike_spi"]
    net.advance(520)
    assert net.a.peer.status()["ike_spi"] != first
    assert net.b.peer.status()["ike_spi"] == net.a.peer.status()["ike_spi"]
    net.advance(1800)
    assert net.a.peer.counters["rekeys_ike"] >= 3
    assert net.a.of(Phase1Down) == []
    assert len(net.a.peer.status()["ike_sas"]) == 1


@pytest.mark.parametrize("seed", range(1, 7))
def test_simultaneous_ike_rekeys_leave_one_ike_sa(seed):
    net = Net(seed=seed).up()
    net.a.peer.rekey_ike(net.now)
    net.b.peer.rekey_ike(net.now)
    net.pump()
    settle(net, 40)
    sa, sb = net.a.peer.status(), net.b.peer.status()
    assert len(sa["ike_sas"]) == len(sb["ike_sas"]) == 1
    assert sa["ike_spi"] == sb["ike_spi"]
    assert net.a.peer.counters["ike_rekey_collisions"] == 1
    assert one_pair_each(net)
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    settle(net)
    assert one_pair_each(net)


def test_child_rekey_colliding_with_ike_rekey():
    net = Net().up()
    net.a.peer.rekey_ipsec(net.now)
    net.b.peer.rekey_ike(net.now)
    net.pump()
    settle(net, 40)
    assert len(net.a.peer.status()["ike_sas"]) == len(net.b.peer.status()["ike_sas"]) == 1
    assert net.a.peer.status()["ike_spi"] == net.b.peer.status()["ike_spi"]
    assert one_pair_each(net)


def test_ike_rekey_while_a_child_exchange_is_outstanding_gets_temporary_failure():
    net = Net().up()
    held = []
    net.drop = lambda src, d: src is net.a and d.data[18] == 36 and not held and not held.append(d)
    net.a.peer.rekey_ipsec(net.now)  # A's CREATE_CHILD_SA is lost: it stays outstanding
    net.pump()
    net.drop = lambda src, d: False
    net.b.peer.rekey_ike(net.now)
    net.pump()
    assert net.a.peer.counters["temporary_failures_sent"] == 1
    assert net.b.peer.counters["temporary_failures"] == 1
    settle(net, 40)
    assert net.b.peer.counters["rekeys_ike"] == 1
    assert net.a.peer.status()["ike_spi"] == net.b.peer.status()["ike_spi"]
    assert one_pair_each(net)


def test_invalid_ke_in_create_child_sa():
    net = Net({"esp_proposals": ["aes128-sha1-ecp256", "aes128-sha1-modp2048"]},
              {"esp_proposals": ["aes128-sha1-modp2048"]}).up()
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    assert net.b.peer.counters["invalid_ke_sent"] == 1
    assert net.a.ups()[-1].pair.pfs_group == 14
    settle(net)
    assert one_pair_each(net)


def test_pfs_mismatch_fails_the_rekey_but_keeps_the_pair():
    net = Net({"esp_proposals": ["aes128-sha1-modp2048"]}, {"esp_proposals": ["aes128-sha1"]}).up()
    old = net.a.installed()[0]["spi_in"]
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    assert "NO_PROPOSAL_CHOSEN" in net.a.peer.status()["last_error"]
    assert net.a.installed()[0]["spi_in"] == old and net.a.downs() == []


def test_lost_create_child_sa_response_is_retransmitted_and_installed_once():
    net = Net().up()
    lost = []
    net.drop = lambda src, d: src is net.b and d.data[18] == 36 and not lost and not lost.append(d)
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    assert len(net.a.ups()) == 1 and len(net.b.ups()) == 2
    net.advance(3)
    assert len(net.a.ups()) == 2 and len(net.b.ups()) == 2
    assert net.b.peer.counters["retransmits_answered"] == 1
    settle(net)
    assert one_pair_each(net)


def test_peer_deletes_the_child_and_we_create_a_new_one():
    net = Net().up()
    c = net.b.peer.children()[0]
    net.b.peer._delete_children([c], net.now)
    net.b.peer._drop_child(c, "test")
    net.b.peer.handle_timer(net.now)
    net.pump()
    assert [d.reason for d in net.a.downs()] == ["deleted by peer"]
    net.advance(20)
    settle(net, 40)
    assert one_pair_each(net)


def test_peer_deletes_the_ike_sa_and_the_initiator_reconnects():
    net = Net().up()
    first = net.a.peer.status()["ike_spi"]
    net.b.peer.stop(net.now)
    net.pump()
    assert net.a.of(Phase1Down) and net.a.downs()
    net.b.peer.start(net.now)
    net.advance(1)
    assert net.both_established() and net.a.peer.status()["ike_spi"] != first
    assert one_pair_each(net)


def test_stop_deletes_everything_at_the_peer():
    net = Net().up()
    net.a.peer.stop(net.now)
    net.pump()
    assert net.b.peer.status()["state"] == "waiting" and net.b.peer.status()["ipsec_sas"] == []
    assert net.b.downs() and net.b.of(Phase1Down)
    assert net.a.peer.status()["ipsec_sas"] == [] and net.a.peer.get_timer() is None
    net.advance(100)
    assert net.a.peer.status()["state"] == "idle"


def test_liveness_checks_both_ways_and_esp_counts_as_liveness():
    net = Net({"dpd_interval": 10}, {"dpd_interval": 10, "initiator": False}).up()
    net.advance(11)
    assert net.a.peer.counters["liveness_sent"] >= 1 and net.b.peer.counters["liveness_answered"] >= 1
    assert net.a.peer.counters["liveness_ok"] >= 1
    a_sent = net.a.peer.counters["liveness_sent"]
    # inbound ESP at A every second: A never needs to ask
    for _ in range(30):
        net.a.peer.peer_alive(net.now)
        net.advance(1)
    assert net.a.peer.counters["liveness_sent"] == a_sent
    assert net.b.peer.counters.get("liveness_sent", 0) >= 1


@pytest.mark.parametrize("action", ["restart", "clear", "hold"])
def test_liveness_death_and_dead_peer_actions(action):
    net = Net({"dpd_interval": 10, "dpd_retries": 3, "dpd_action": action}, {"dpd_interval": 0}).up()
    dead = [False]
    net.drop = lambda src, d: dead[0] and src is net.b
    dead[0] = True
    net.advance(9)
    assert not net.a.of(PeerDead)
    net.advance(31)  # first probe at 10 s, retransmitted at 20 s and 30 s, dead at 40 s
    assert len(net.a.of(PeerDead)) == 1
    assert net.a.peer.counters["dpd_dead"] == 1
    assert [d.reason for d in net.a.downs()] == ["dpd"]
    assert net.a.peer.status()["ipsec_sas"] == []
    dead[0] = False
    net.b.peer.stop(net.now)
    net.pump()
    net.b.peer.start(net.now)
    net.advance(30)
    if action == "clear":
        assert net.a.peer.status()["state"] == "idle"
    else:
        assert net.both_established() and len(net.a.installed()) == 1


def test_liveness_status_counts_the_outstanding_probe():
    net = Net({"dpd_interval": 5, "dpd_retries": 4}).up()
    net.drop = lambda src, d: src is net.b
    net.advance(11)
    assert net.a.peer.status()["dpd"]["outstanding"] >= 2


def test_spoofed_and_unprotected_informationals_are_ignored_and_counted():
    from cgwd.ike.v2.codec import DeletePayload, Header, SkPayload, encode_message, encode_payloads

    net = Net().up()
    st = net.b.peer.status()
    spi_i, spi_r = bytes.fromhex(st["ike_spi"]["initiator"]), bytes.fromhex(st["ike_spi"]["responder"])
    # an encrypted-looking INFORMATIONAL with the right SPIs and message ID but a forged ICV
    first, body = encode_payloads([SkPayload(42, b"\x00" * 16 + b"\x11" * 32 + b"\x22" * 16)])
    h = Header(spi_i, spi_r, first, 37, 0x08, 2)
    forged = h.encode(28 + len(body)) + body
    net.b.peer.receive_datagram(forged, (A_ADDR, 500), 500, net.now)
    # an unprotected DELETE of the IKE SA
    plain = encode_message(Header(spi_i, spi_r, 0, 37, 0x08, 2), [DeletePayload(1)])
    net.b.peer.receive_datagram(plain, (A_ADDR, 500), 500, net.now)
    net.pump()
    c = net.b.peer.counters
    assert c["drop_integrity"] == 1 and c["drop_unprotected"] == 1 and c["unprotected_ignored"] == 1
    assert net.b.peer.status()["state"] == "established" and net.b.downs() == []
    assert one_pair_each(net)


def test_install_failed_deletes_the_pair_at_the_peer_and_retries():
    net = Net().up()
    spi = net.a.ups()[0].pair.spi_in
    net.a.peer.install_failed(spi, "kernel says no", net.now)
    net.pump()
    assert "kernel says no" in net.a.peer.status()["last_error"]
    assert net.b.peer.status()["ipsec_sas"] == []
    net.advance(20)
    settle(net, 40)
    assert one_pair_each(net)
    assert net.a.peer.counters["install_failures"] == 1


def test_data_path_soft_and_hard_limits():
    net = Net().up()
    spi = net.a.ups()[0].pair.spi_in
    net.a.peer.sa_expiring(spi, False, net.now)
    net.pump()
    assert len(net.a.ups()) == 2 and net.a.ups()[1].pair.replaces_spi_in == spi
    settle(net)
    spi2 = net.a.ups()[1].pair.spi_in
    net.a.peer.sa_expiring(spi2, True, net.now)
    net.pump()
    assert spi2 in [d.spi_in for d in net.a.downs()]
    net.advance(1)
    assert one_pair_each(net)


def test_lossy_network_converges():
    import random

    rng = random.Random(5)
    kw = {"ipsec_lifetime": 240, "rekey_margin": 60, "ike_lifetime": 600, "dpd_interval": 10, "dpd_retries": 5,
          "retransmit_tries": 6}
    net = Net(kw, kw).up()
    net.drop = lambda src, d: rng.random() < 0.15
    net.dup = lambda src, d: rng.random() < 0.1
    net.advance(1800)
    net.drop = lambda src, d: False
    net.dup = lambda src, d: False
    net.advance(120)
    assert net.both_established()
    assert one_pair_each(net)
    ups = {e.pair.spi_in for e in net.a.of(IpsecSaUp)}
    assert len(ups) == len(net.a.of(IpsecSaUp))  # no pair installed twice
    assert all(isinstance(d, IpsecSaDown) for d in net.a.downs())


@pytest.mark.parametrize("seed", range(1, 6))
def test_both_ends_initiating_at_once_keep_one_ike_sa(seed):
    net = Net(b_kw={"initiator": True}, seed=seed)
    net.a.peer.start(0)
    net.b.peer.start(0)
    net.pump()
    assert net.a.peer.counters["ike_sa_duplicates"] == net.b.peer.counters["ike_sa_duplicates"] == 1
    settle(net, 40)
    sa, sb = net.a.peer.status(), net.b.peer.status()
    assert len(sa["ike_sas"]) == len(sb["ike_sas"]) == 1 and sa["ike_spi"] == sb["ike_spi"]
    assert one_pair_each(net) and len(children(net.a)) == len(children(net.b)) == 1


def test_a_restarted_peer_with_initial_contact_replaces_the_old_sas():
    from cgwd.ike.v2.peer import Ikev2Peer

    from test_ikev2_harness import Side, seeded

    net = Net().up()
    old_child = net.b.ups()[0].pair.spi_in
    net.advance(5)
    # A restarts: a new engine (no state) that initiates again with INITIAL_CONTACT
    net.a = Side(Ikev2Peer(net.a.peer.config, random_bytes=seeded(99), name="A"), net.a.addr)
    net.a.peer.start(net.now)
    net.pump()
    assert net.b.peer.counters["initial_contact_received"] == 2
    assert [d.spi_in for d in net.b.downs()] == [old_child]
    assert len(net.b.peer.status()["ike_sas"]) == 1
    assert one_pair_each(net)


def test_unsupported_critical_payload_in_a_request_is_answered():
    from cgwd.ike.v2.codec import UnknownPayload, decode_message

    net = Net().up()
    sa = net.b.peer._current()
    msg = sa.protect(37, sa.take_mid(), False, [UnknownPayload(77, b"x", critical=True)])
    net.a.peer.receive_datagram(msg, ("192.0.2.2", 500), 500, net.now)
    out = net.a.peer.datagrams_to_send()
    assert net.a.peer.counters["unsupported_critical_answered"] == 1
    h, outer = decode_message(out[0].data)
    inner = sa.unprotect(out[0].data, outer[-1])
    assert inner[0].notify_type == 1 and inner[0].data == bytes([77])
    assert net.a.peer.status()["state"] == "established"


def test_only_an_authenticated_message_moves_the_peer_port():
    net = Net(nat=True).up()
    port = net.b.peer.remote_port
    st = net.b.peer.status()
    from cgwd.ike.v2.codec import Header, SkPayload, encode_payloads

    first_type, body = encode_payloads([SkPayload(0, b"\x00" * 16 + b"\x11" * 16 + b"\x22" * 16)])
    h = Header(bytes.fromhex(st["ike_spi"]["initiator"]), bytes.fromhex(st["ike_spi"]["responder"]), first_type,
               37, 0x08, 99)
    forged = h.encode(28 + len(body)) + body
    net.b.peer.receive_datagram(forged, ("203.0.113.2", 50000), 4500, net.now)
    assert net.b.peer.remote_port == port
    assert net.b.peer.counters.get("peer_port_changes", 0) == 0
