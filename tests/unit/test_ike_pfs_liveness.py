"""Quick mode with ESP proposals of different PFS groups (both ends in memory), rekeys close
together, and the lab-only short lifetimes. (Inbound ESP as DPD liveness and make-before-break
on the data path are the tunnel's: tests/unit/test_tunnel.py.)"""

from __future__ import annotations

import pytest

from cgwd.config import ConfigError, parse_config
from cgwd.ike.v1 import constants as C
from cgwd.ike.v1.codec import KePayload, SaPayload, decode_header, decode_payloads
from cgwd.ike.events import IpsecSaUp
from cgwd.ike.v1 import IkePeer, quick_mode
from cgwd.ike.v1.peer import QM_RETRY_DELAY
from unit_config import BASE
from test_ike_session import assert_pairs_match, established, make_pair

GCM_2048 = "aes128gcm16-modp2048"
CBC_1024 = "aes128-sha1-modp1024"


def qm1_offer(net, mark: int) -> tuple[list[int | None], int]:
    """(PFS groups of the proposals, KE length) of the first quick mode A sent after `mark`."""
    for side, d in net.log[mark:]:
        if side != "a" or d.raw:
            continue
        hdr = decode_header(d.data)
        if hdr.exchange != C.EXCH_QUICK:
            continue
        sa = net.a.peer.current_sa()
        # decrypt with A's own state: the IV of a first quick-mode message is derived
        from cgwd.ike.v1 import keys

        iv = keys.phase2_iv(sa.algs.hash, sa.p1_last_block, hdr.message_id)
        pt = keys.decrypt(sa.keys.enc_key, iv, d.data[C.HEADER_LEN:])
        payloads = decode_payloads(hdr.next_payload, pt, allow_padding=True)
        sap = [p for p in payloads if isinstance(p, SaPayload)][0]
        groups = []
        for prop in sap.proposals:
            g = None
            for a in prop.transforms[0].attributes:
                if a.type == C.P2_GROUP:
                    g = a.value
            groups.append(g)
        ke = [p for p in payloads if isinstance(p, KePayload)]
        return groups, len(ke[0].data) if ke else 0
    raise AssertionError("no quick mode from A")


def test_initiator_offers_every_group_with_the_ke_of_the_first():
    net = make_pair(esp=[GCM_2048, CBC_1024])
    ua, ub = established(net)
    groups, ke_len = qm1_offer(net, 0)
    assert groups == [14, 2] and ke_len == 256  # both offered, KE for modp2048 (the first)
    assert ua.pair.encryption == "aes128gcm16" and ua.pair.pfs_group == 14
    assert_pairs_match(ua.pair, ub.pair)


def test_responder_with_only_the_second_group_then_initiator_leads_with_it():
    # AWS-like responder that only has the default proposal: the first quick mode (KE for
    # modp2048) cannot be answered with modp1024 -> NO-PROPOSAL-CHOSEN; the next attempt
    # leads with modp1024 and succeeds; rekeys keep leading with the group that worked.
    net = make_pair(esp=[GCM_2048, CBC_1024], b_kw={"esp": [CBC_1024]},
                    a_kw={"ipsec_lifetime": 300, "rekey_margin": 60, "rekey_fuzz": 0})
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.a, IpsecSaUp)
    assert net.b.peer.counters["drop_no_proposal_chosen"] == 1
    mark = len(net.log)
    net.advance(QM_RETRY_DELAY + 1)
    ups = net.ev(net.a, IpsecSaUp)
    assert len(ups) == 1
    assert ups[0].pair.pfs_group == 2 and ups[0].pair.encryption == "aes128"
    assert_pairs_match(ups[0].pair, net.ev(net.b, IpsecSaUp)[0].pair)
    groups, ke_len = qm1_offer(net, mark)
    assert groups == [2, 14] and ke_len == 128
    mark = len(net.log)
    net.advance(net.now + 250)  # the rekey at 240 s
    ups = net.ev(net.a, IpsecSaUp)
    assert len(ups) == 2 and ups[1].pair.pfs_group == 2
    assert qm1_offer(net, mark)[0] == [2, 14]
    assert net.b.peer.counters["drop_no_proposal_chosen"] == 1  # no second refusal


def test_responder_picks_the_proposal_whose_group_the_ke_is_for():
    # modp2048 and modp2048s256 have KEs of the same length: the responder must not take
    # the KE of one for the other (the keys would differ and ESP fail authentication).
    s256 = "aes128-sha1-modp2048s256"
    m2048 = "aes128-sha1-modp2048"
    net = make_pair(esp=[s256, m2048], b_kw={"esp": [m2048]})
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.b, IpsecSaUp)  # not chosen with a KE for modp2048s256
    assert net.b.peer.counters["drop_no_proposal_chosen"] == 1
    net.advance(QM_RETRY_DELAY + 1)
    ua, ub = net.ev(net.a, IpsecSaUp)[0], net.ev(net.b, IpsecSaUp)[0]
    assert ua.pair.pfs_group == ub.pair.pfs_group == 14
    assert_pairs_match(ua.pair, ub.pair)
    # and with both groups configured on the responder, the first one is taken at once
    net = make_pair(esp=[s256, m2048])
    ua, ub = established(net)
    assert ua.pair.pfs_group == ub.pair.pfs_group == 24
    assert_pairs_match(ua.pair, ub.pair)


def test_initiator_gives_up_at_once_on_a_responder_that_chose_another_group(monkeypatch):
    s256 = "aes128-sha1-modp2048s256"
    m2048 = "aes128-sha1-modp2048"
    net = make_pair(esp=[s256, m2048])
    # a sloppy responder that judges the KE by its length only (takes it for modp2048)
    monkeypatch.setattr(quick_mode, "ke_group", lambda sap, ke: 14)  # (only B responds)
    net.b.peer.config.esp_algs = [a for a in net.b.peer.config.esp_algs if a.group == 14]
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.a, IpsecSaUp)
    assert net.a.peer.counters["phase2_failures"] == 1
    assert "our KE was for modp2048s256" in net.a.peer.status()["last_error"]
    assert not net.a.peer.counters.get("retransmits")  # no retransmitting in vain
    net.advance(QM_RETRY_DELAY + 1)
    ua = net.ev(net.a, IpsecSaUp)[0]
    assert ua.pair.pfs_group == 14
    assert_pairs_match(ua.pair, net.ev(net.b, IpsecSaUp)[-1].pair)


def test_no_pfs_proposal_next_to_pfs_ones():
    net = make_pair(esp=["aes128-sha1", CBC_1024], b_kw={"esp": [CBC_1024]})
    net.a.peer.start(0)
    net.pump()
    net.advance(QM_RETRY_DELAY + 1)
    ua = net.ev(net.a, IpsecSaUp)[0]
    assert ua.pair.pfs_group == 2
    assert_pairs_match(ua.pair, net.ev(net.b, IpsecSaUp)[0].pair)


# ----------------------------------------------------------------------- short lifetimes


def test_short_lifetimes_only_when_asked_for():
    short = BASE.replace('inside_cidr = "169.254.10.0/30"\n',
                         'inside_cidr = "169.254.10.0/30"\n  esp_lifetime = 60\n  rekey_margin = 30\n', 1)
    with pytest.raises(ConfigError) as e:
        parse_config(short)
    assert "esp_lifetime" in str(e.value) and "between 900 and 3600" in str(e.value)
    cfg = parse_config(short.replace("esp_lifetime = 60\n", "esp_lifetime = 60\n  short_lifetimes = true\n", 1))
    t = cfg.tunnels[0]
    assert t.esp_lifetime == 60 and t.rekey_margin == 30
    assert any("short_lifetimes" in w for w in cfg.warnings)
    # still bounded: the margin at most half the lifetime, the lifetime at least 60 s
    bad = short.replace("esp_lifetime = 60\n", "esp_lifetime = 30\n  short_lifetimes = true\n", 1)
    with pytest.raises(ConfigError):
        parse_config(bad)


# ----------------------------------------------------------------------- rekeys close together


@pytest.mark.parametrize("seed", range(1, 7))
def test_rekeys_one_after_the_other_are_not_a_collision(seed):
    # A rekeys; a second later B rekeys the pair A's rekey made (as strongSwan does when its
    # timer fires just after ours). That is no collision: B's pair is the newest on both
    # ends and survives, whatever the SPIs; the pair it replaced is deleted.
    net = make_pair(b_kw={"initiator": True}, seed=seed)
    established(net)
    net.b.peer._started = True
    net.advance(60)
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    assert len(net.ev(net.a, IpsecSaUp)) == 2
    net.advance(net.now + 1)
    net.b.peer.rekey_ipsec(net.now)
    net.pump()
    newest = net.ev(net.b, IpsecSaUp)[-1].pair
    net.advance(net.now + 30)
    sa_a = [(s["spi_in"], s["spi_out"]) for s in net.a.peer.status()["ipsec_sas"]]
    sa_b = [(s["spi_in"], s["spi_out"]) for s in net.b.peer.status()["ipsec_sas"]]
    assert sa_b == [(f"{newest.spi_in:08x}", f"{newest.spi_out:08x}")]
    assert sa_a == [(f"{newest.spi_out:08x}", f"{newest.spi_in:08x}")]
    assert not net.a.peer.counters.get("rekey_collisions") and not net.b.peer.counters.get("rekey_collisions")


def test_crossing_rekeys_with_a_slow_link_settle_on_one_pair():
    # the quick modes cross on the wire: every message takes 0.3 s
    net = make_pair(b_kw={"initiator": True})
    established(net)
    net.b.peer._started = True
    net.advance(60)
    held: list = []
    net.drop = lambda s, d: (held.append((s, d)) or True) if not d.raw else False
    net.a.peer.rekey_ipsec(net.now)
    net.b.peer.rekey_ipsec(net.now)
    for _ in range(20):
        net.pump()
        batch, held[:] = list(held), []
        net.now += 0.3
        for s, d in batch:
            o = net.other(s)
            o.peer.receive_datagram(d.data, (s.public_addr, s.public_port(d.local_port)),
                                    o.local_port_for(d.remote[1]), net.now)
        for side in (net.a, net.b):
            side.peer.handle_timer(net.now) if (side.peer.get_timer() or 1e9) <= net.now else None
    net.drop = lambda s, d: False
    net.advance(net.now + 30)
    st_a = {(s["spi_in"], s["spi_out"]): s["state"] for s in net.a.peer.status()["ipsec_sas"]}
    st_b = {(s["spi_out"], s["spi_in"]): s["state"] for s in net.b.peer.status()["ipsec_sas"]}
    assert net.a.peer.counters.get("rekey_collisions", 0) + net.b.peer.counters.get("rekey_collisions", 0) >= 1
    # each end sends on a pair the other end still has (nothing deleted under anyone's feet)
    sending_a = [p for p, st in st_a.items() if st == "installed"]
    sending_b = [p for p, st in st_b.items() if st == "installed"]
    assert len(sending_a) == 1 and len(sending_b) == 1
    assert sending_a[0] in st_b and sending_b[0] in st_a
    # the next rekey of either end leaves one and the same pair on both
    net.b.peer.rekey_ipsec(net.now)
    net.advance(net.now + 30)
    sa_a = {(s["spi_in"], s["spi_out"]) for s in net.a.peer.status()["ipsec_sas"]}
    sa_b = {(s["spi_out"], s["spi_in"]) for s in net.b.peer.status()["ipsec_sas"]}
    assert sa_a == sa_b and len(sa_a) == 1
