"""The sans-IO IKEv1 engine: our initiator against our responder, in memory, virtual time."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import pytest

from cgwd.ike.v1 import constants as C
from cgwd.ike.v1 import keys
from cgwd.ike.v1.codec import (
    DeletePayload,
    Header,
    NotifyPayload,
    Proposal,
    SaPayload,
    Transform,
    decode_header,
    encode_message,
)
from cgwd.ike.events import (
    Datagram,
    IpsecSaDown,
    IpsecSaUp,
    NatDetected,
    PeerDead,
    Phase1Down,
    Phase1Up,
)
from cgwd.ike.natt import KEEPALIVE_INTERVAL
from cgwd.ike.v1 import IkePeer, IkePeerConfig
from cgwd.ike.v1.main_mode import UNVERIFIED_LIMIT
from cgwd.ike.v1.peer import DELETE_DELAY

PSK = b"unit-test-psk-do-not-log"
A_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.2"

ALL_IKE = [
    f"{enc}-{h}-{g}"
    for enc in ("aes128", "aes256")
    for h in ("sha1", "sha256", "sha384", "sha512")
    for g in ("modp1024",)
] + [f"aes128-sha256-{g}" for g in C.GROUP_BY_NAME]
ALL_ESP = [
    "aes128-sha1", "aes256-sha1", "aes128-sha256", "aes256-sha384", "aes128-sha512",
    "aes128gcm16", "aes256gcm16", "aes128gcm16-modp2048",
] + [f"aes128-sha1-{g}" for g in C.GROUP_BY_NAME]


def seeded_random(seed: int):
    rng = random.Random(seed)
    return lambda n: bytes(rng.getrandbits(8) for _ in range(n))


@dataclass
class Side:
    peer: IkePeer
    # how the other side sees this side: address and port mapping (NAT)
    public_addr: str
    port_map: dict[int, int] = field(default_factory=dict)  # local port -> public port
    events: list = field(default_factory=list)

    def public_port(self, local_port: int) -> int:
        return self.port_map.get(local_port, local_port)

    def local_port_for(self, public_port: int) -> int:
        for k, v in self.port_map.items():
            if v == public_port:
                return k
        return public_port


class Net:
    """Two peers joined by a lossless (unless told) in-memory network with a fake clock."""

    def __init__(self, a: IkePeer, b: IkePeer, *, a_public: str | None = None, a_ports: dict | None = None):
        self.a = Side(a, a_public or a.config.local_address, dict(a_ports or {}))
        self.b = Side(b, b.config.local_address)
        self.now = 0.0
        self.drop = lambda src, d: False  # (src Side, Datagram) -> bool
        self.log: list[tuple[str, Datagram]] = []

    def other(self, s: Side) -> Side:
        return self.b if s is self.a else self.a

    def pump(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            moved = False
            for s in (self.a, self.b):
                for d in s.peer.datagrams_to_send():
                    moved = True
                    self.log.append(("a" if s is self.a else "b", d))
                    if self.drop(s, d):
                        continue
                    o = self.other(s)
                    if d.raw:
                        continue  # keepalive: the endpoint swallows it
                    src = (s.public_addr, s.public_port(d.local_port))
                    dst_port = o.local_port_for(d.remote[1])
                    o.peer.receive_datagram(d.data, src, dst_port, self.now)
            for s in (self.a, self.b):
                while (e := s.peer.next_event()) is not None:
                    s.events.append((self.now, e))
            if not moved:
                return

    def advance(self, until: float, step_limit: int = 100000) -> None:
        """Run timers in virtual time up to ``until``."""
        for _ in range(step_limit):
            self.pump()
            ts = [t for t in (self.a.peer.get_timer(), self.b.peer.get_timer()) if t is not None]
            nxt = min(ts) if ts else None
            if nxt is None or nxt > until:
                self.now = until
                self.pump()
                return
            self.now = max(self.now, nxt)
            for s in (self.a, self.b):
                t = s.peer.get_timer()
                if t is not None and t <= self.now:
                    s.peer.handle_timer(self.now)
        raise AssertionError("timer loop did not converge")

    def ev(self, side: Side, kind) -> list:
        return [e for _, e in side.events if isinstance(e, kind)]


def make_pair(ike=("aes128-sha1-modp1024",), esp=("aes128-sha1-modp1024",), *, a_kw=None, b_kw=None, seed=1, **net_kw):
    a_kw = dict(a_kw or {})
    b_kw = dict(b_kw or {})
    ca = IkePeerConfig(a_kw.pop("local_address", A_ADDR), B_ADDR, PSK, ike_proposals=list(ike), esp_proposals=list(esp), **a_kw)
    cb = IkePeerConfig(B_ADDR, b_kw.pop("remote_address", A_ADDR), PSK, ike_proposals=list(b_kw.pop("ike", ike)),
                       esp_proposals=list(b_kw.pop("esp", esp)), initiator=b_kw.pop("initiator", False), **b_kw)
    a = IkePeer(ca, random_bytes=seeded_random(seed), name="A")
    b = IkePeer(cb, random_bytes=seeded_random(seed + 1000), name="B")
    return Net(a, b, **net_kw)


def established(net: Net) -> tuple[IpsecSaUp, IpsecSaUp]:
    net.a.peer.start(net.now)
    net.pump()
    ua = net.ev(net.a, IpsecSaUp)
    ub = net.ev(net.b, IpsecSaUp)
    assert ua and ub, (net.a.peer.status(), net.b.peer.status())
    return ua[-1], ub[-1]


def established_with_late_qm3(**kw) -> tuple[Net, list[Datagram]]:
    """A initiates; what A sends once it has its IPsec SA (quick-mode message 3) is held back:
    A has installed the pair, B is still waiting. Returns the net and the held datagrams."""
    net = make_pair(**kw)
    held: list[Datagram] = []

    def late(src, d):
        if src is net.a and net.ev(net.a, IpsecSaUp) and not net.ev(net.b, IpsecSaUp):
            held.append(d)
            return True
        return False

    net.drop = late
    net.a.peer.start(net.now)
    net.pump()
    net.drop = lambda src, d: False
    return net, held


def assert_pairs_match(pa, pb):
    assert pa.spi_in == pb.spi_out and pa.spi_out == pb.spi_in
    assert pa.enc_key_in == pb.enc_key_out and pa.enc_key_out == pb.enc_key_in
    assert pa.integ_key_in == pb.integ_key_out and pa.integ_key_out == pb.integ_key_in
    assert pa.enc_key_in != pa.enc_key_out
    assert pa.encryption == pb.encryption and pa.integrity == pb.integrity


# ---------------------------------------------------------------------------- algorithms


@pytest.mark.parametrize("ike", ALL_IKE)
def test_phase1_every_ike_algorithm_and_group(ike):
    net = make_pair([ike], ["aes128-sha1"])
    ua, ub = established(net)
    assert_pairs_match(ua.pair, ub.pair)
    assert net.ev(net.a, Phase1Up)[0].algorithms == ike
    assert net.ev(net.b, Phase1Up)[0].algorithms == ike
    assert net.a.peer.status()["state"] == "established"


@pytest.mark.parametrize("esp", ALL_ESP)
def test_quick_mode_every_esp_algorithm_and_pfs_group(esp):
    net = make_pair(["aes256-sha256-modp2048"], [esp])
    ua, ub = established(net)
    assert_pairs_match(ua.pair, ub.pair)
    pa = ua.pair
    enc = esp.split("-")[0]
    assert pa.encryption == enc
    groups = [C.GROUP_BY_NAME[p] for p in esp.split("-") if p in C.GROUP_BY_NAME]
    assert pa.pfs_group == (groups[0] if groups else None)
    if enc.endswith("gcm16"):
        assert pa.integrity is None and len(pa.enc_key_in) in (20, 36)


def test_responder_picks_the_proposal_it_supports():
    net = make_pair(
        ["aes256-sha512-ecp384", "aes128-sha1-modp1024"], ["aes256gcm16-modp1024", "aes128-sha1-modp1024"],
        b_kw={"ike": ["aes128-sha1-modp1024"], "esp": ["aes128-sha1-modp1024"]},
    )
    ua, ub = established(net)
    assert net.ev(net.a, Phase1Up)[0].algorithms == "aes128-sha1-modp1024"
    assert ua.pair.encryption == "aes128" and ua.pair.pfs_group == 2
    assert_pairs_match(ua.pair, ub.pair)


def test_no_common_phase1_proposal():
    net = make_pair(["aes256-sha256-modp2048"], b_kw={"ike": ["aes128-sha1-modp1024"]})
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.a, Phase1Up)
    assert net.b.peer.counters["drop_no_proposal_chosen"] == 1
    # the initiator got an unprotected NO-PROPOSAL-CHOSEN: recorded, not acted upon
    assert "NO-PROPOSAL-CHOSEN" in (net.a.peer.status()["last_error"] or "")


def test_no_common_phase2_proposal_then_retry():
    net = make_pair(esp=["aes256-sha256"], b_kw={"esp": ["aes128-sha1"]})
    net.a.peer.start(0)
    net.pump()
    assert net.ev(net.a, Phase1Up) and not net.ev(net.a, IpsecSaUp)
    assert net.b.peer.counters["drop_no_proposal_chosen"] == 1
    assert "NO-PROPOSAL-CHOSEN" in net.a.peer.status()["last_error"]
    net.advance(25)
    assert net.b.peer.counters["drop_no_proposal_chosen"] >= 2  # retried, never stuck


def test_wrong_psk_fails_and_restarts_with_backoff():
    net = make_pair()
    net.b.peer.config.psk = b"another key"
    net.a.peer.start(0)
    net.advance(1)
    # a different PSK gives different keys: message 5 does not even decrypt (or its HASH_I fails)
    b = net.b.peer
    assert b.counters.get("drop_decrypt_failed", 0) + b.counters.get("drop_bad_hash", 0) >= 1
    assert b.counters["auth_failures"] >= 1
    assert "pre-shared key" in b.status()["last_error"]
    net.advance(200)
    downs = net.ev(net.a, Phase1Down)
    assert downs and downs[0].reason.startswith("timeout")
    assert net.a.peer.counters["retransmits"] >= 5
    assert net.a.peer.status()["state"] == "connecting"  # restarted later


def test_remote_id_mismatch_is_rejected():
    net = make_pair(a_kw={"remote_id": "fqdn:vpn.example.com"})
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.a, Phase1Up)
    assert net.a.peer.counters["drop_id_mismatch"] == 1


def test_fqdn_and_keyid_identities():
    net = make_pair(a_kw={"local_id": "fqdn:cgw.example.com"}, b_kw={"remote_id": "fqdn:cgw.example.com", "local_id": "keyid:aws"})
    net.a.peer.config.remote_id_tuple = (C.ID_KEY_ID, b"aws")
    ua, ub = established(net)
    assert_pairs_match(ua.pair, ub.pair)


# ---------------------------------------------------------------------------- retransmission


def test_lost_first_message_is_retransmitted():
    net = make_pair()
    dropped = []

    def drop(src, d):
        if src is net.a and not dropped:
            dropped.append(d)
            return True
        return False

    net.drop = drop
    net.a.peer.start(0)
    net.pump()
    assert not net.ev(net.a, Phase1Up)
    net.advance(2.5)
    assert net.ev(net.a, IpsecSaUp)
    assert net.a.peer.counters["retransmits"] == 1
    assert net.ev(net.a, Phase1Up)


def test_lost_response_is_answered_from_cache_not_reprocessed():
    net = make_pair()
    state = {"n": 0}

    def drop(src, d):
        # drop the responder's second answer (message 4) once
        if src is net.b:
            state["n"] += 1
            return state["n"] == 2
        return False

    net.drop = drop
    net.a.peer.start(0)
    net.advance(10)
    assert net.b.peer.counters.get("retransmits_answered") == 1
    assert len(net.ev(net.b, Phase1Up)) == 1
    assert net.ev(net.a, IpsecSaUp)


def test_retransmit_schedule_doubles_and_gives_up():
    net = make_pair()
    net.drop = lambda src, d: True
    net.a.peer.start(0)
    sends = []
    t = 0.0
    while t < 200 and not net.ev(net.a, Phase1Down):
        n0 = len(net.log)
        t = net.a.peer.get_timer()
        net.advance(t)
        if len(net.log) > n0:
            sends.append(round(t, 3))
    assert sends[:5] == [2.0, 6.0, 14.0, 30.0, 62.0]
    assert net.ev(net.a, Phase1Down)[0].reason.startswith("timeout")


# ---------------------------------------------------------------------------- DPD


def test_dpd_declares_dead_peer_and_restarts():
    net = make_pair(a_kw={"dpd_interval": 10, "dpd_retries": 3})
    established(net)
    t0 = net.now
    net.drop = lambda src, d: True  # the link dies
    net.advance(t0 + 39)
    assert not net.ev(net.a, PeerDead)
    assert net.a.peer.status()["dpd"]["outstanding"] == 3
    net.advance(t0 + 40.5)
    assert len(net.ev(net.a, PeerDead)) == 1
    downs = net.ev(net.a, IpsecSaDown)
    assert downs and downs[0].reason == "dpd"
    assert net.ev(net.a, Phase1Down)[-1].reason == "dpd"
    assert net.a.peer.status()["state"] == "connecting"  # dpd_action=restart


def test_dpd_clear_goes_idle():
    net = make_pair(a_kw={"dpd_action": "clear"})
    established(net)
    net.drop = lambda src, d: True
    net.advance(100)
    assert net.ev(net.a, PeerDead)
    assert net.a.peer.status()["state"] == "idle"
    assert net.a.peer.get_timer() is None


def test_dpd_answered_keeps_tunnel():
    net = make_pair(a_kw={"dpd_interval": 10}, b_kw={"dpd_interval": 15})
    established(net)
    net.advance(300)
    assert not net.ev(net.a, PeerDead) and not net.ev(net.b, PeerDead)
    sa, sb = net.a.peer.counters, net.b.peer.counters
    assert sa.get("dpd_sent", 0) + sb.get("dpd_sent", 0) >= 10
    assert sa.get("dpd_answered", 0) + sb.get("dpd_answered", 0) >= 10
    assert sa.get("dpd_acked", 0) + sb.get("dpd_acked", 0) >= 10


# ---------------------------------------------------------------------------- rekeying


def test_phase2_rekey_make_before_break():
    net = make_pair(a_kw={"ipsec_lifetime": 300, "rekey_margin": 60, "rekey_fuzz": 100})
    ua, ub = established(net)
    first = ua.pair
    net.advance(239)  # earliest rekey: 300 - 60 - 60 = 180, latest 240
    ups = net.ev(net.a, IpsecSaUp)
    assert len(ups) == 2, ups
    new = ups[1].pair
    assert new.replaces_spi_in == first.spi_in
    t_up = [t for t, e in net.a.events if isinstance(e, IpsecSaUp)][1]
    assert 180 <= t_up <= 240
    net.advance(t_up + DELETE_DELAY + 0.1)
    downs = net.ev(net.a, IpsecSaDown)
    assert [(d.spi_in, d.reason) for d in downs] == [(first.spi_in, "rekeyed")]
    t_down = [t for t, e in net.a.events if isinstance(e, IpsecSaDown)][0]
    assert t_down > t_up
    # the responder sees the new pair replacing the old and then our DELETE for the old
    bups = net.ev(net.b, IpsecSaUp)
    assert bups[1].pair.replaces_spi_in == ub.pair.spi_in
    assert [d.spi_in for d in net.ev(net.b, IpsecSaDown)] == [ub.pair.spi_in]
    assert_pairs_match(new, bups[1].pair)
    assert net.a.peer.counters["rekeys_ipsec"] == 1


def test_phase2_rekeys_for_a_day_without_drift():
    # modp2048 rather than AWS's default modp1024: OpenSSL checks the parameters of a group it
    # does not know (modp1024) at every DH computation, some 80 ms each
    net = make_pair(["aes128-sha1-modp2048"], ["aes128-sha1-modp2048"],
                    a_kw={"ipsec_lifetime": 900, "rekey_margin": 540, "rekey_fuzz": 100, "ike_lifetime": 28800})
    established(net)
    net.advance(86400)
    ups = net.ev(net.a, IpsecSaUp)
    downs = net.ev(net.a, IpsecSaDown)
    assert len(ups) >= 86400 // 900
    assert all(d.reason == "rekeyed" for d in downs)
    assert len(ups) - len(downs) == 1  # exactly one pair alive at the end
    assert not net.ev(net.a, PeerDead)
    assert net.a.peer.counters["rekeys_ike"] >= 2  # phase 1 re-authenticated too
    st_a, st_b = net.a.peer.status(), net.b.peer.status()
    assert len(st_a["ipsec_sas"]) == len(st_b["ipsec_sas"]) == 1
    assert st_a["ipsec_sas"][0]["spi_in"] == st_b["ipsec_sas"][0]["spi_out"]


def test_phase1_reauthentication_keeps_children():
    net = make_pair(a_kw={"ike_lifetime": 600, "rekey_margin": 60, "rekey_fuzz": 0, "ipsec_lifetime": 3600})
    ua, _ = established(net)
    old = net.a.peer.status()["ike_spi"]
    net.advance(545)
    assert len(net.ev(net.a, Phase1Up)) == 2
    new = net.a.peer.status()["ike_spi"]
    assert new != old
    assert net.a.peer.counters["rekeys_ike"] == 1
    assert not net.ev(net.a, IpsecSaDown) and not net.ev(net.b, IpsecSaDown)
    assert not net.ev(net.a, Phase1Down)
    # the responder dropped the old ISAKMP SA on our DELETE and keeps answering DPD on the new
    assert net.b.peer.status()["ike_spi"] == new
    net.advance(700)
    assert not net.ev(net.a, PeerDead)


def test_rekey_collision_keeps_both_sides_consistent():
    net = make_pair(b_kw={"initiator": True})
    established(net)
    net.b.peer._started = True  # the responder also keeps the tunnel up (AWS-like phase-2 rekeys)
    net.advance(60)
    net.a.peer.rekey_ipsec(net.now)
    net.b.peer.rekey_ipsec(net.now)
    net.pump()
    assert len(net.ev(net.a, IpsecSaUp)) == 3 and len(net.ev(net.b, IpsecSaUp)) == 3
    net.advance(net.now + 30)
    sa_a = {(s["spi_in"], s["spi_out"]): s["state"] for s in net.a.peer.status()["ipsec_sas"]}
    sa_b = {(s["spi_out"], s["spi_in"]): s["state"] for s in net.b.peer.status()["ipsec_sas"]}
    # the old pair is gone; of the two new ones each end sends on one the other end has
    assert set(sa_a) == set(sa_b) and len(sa_a) == 2
    assert list(sa_a.values()).count("installed") == 1 and list(sa_b.values()).count("installed") == 1
    assert net.a.peer.counters.get("rekey_collisions", 0) + net.b.peer.counters.get("rekey_collisions", 0) >= 1
    downs_a = {d.spi_in for d in net.ev(net.a, IpsecSaDown)}
    assert len(downs_a) == 1  # the old pair; the redundant new one stays until the next rekey
    # the next rekey (no collision) replaces both: one pair left, the same on both ends
    net.a.peer.rekey_ipsec(net.now)
    net.advance(net.now + 30)
    sa_a = {(s["spi_in"], s["spi_out"]) for s in net.a.peer.status()["ipsec_sas"]}
    sa_b = {(s["spi_out"], s["spi_in"]) for s in net.b.peer.status()["ipsec_sas"]}
    assert sa_a == sa_b and len(sa_a) == 1
    assert len({d.spi_in for d in net.ev(net.a, IpsecSaDown)}) == 3


def test_byte_lifetime_soft_and_hard():
    net = make_pair()
    ua, _ = established(net)
    net.a.peer.sa_expiring(ua.pair.spi_in, False, net.now + 1)
    net.now += 1
    net.pump()
    assert len(net.ev(net.a, IpsecSaUp)) == 2
    new = net.ev(net.a, IpsecSaUp)[1].pair
    net.a.peer.sa_expiring(new.spi_in, True, net.now + 1)
    net.now += 1
    net.pump()
    assert (new.spi_in, "expired") in [(d.spi_in, d.reason) for d in net.ev(net.a, IpsecSaDown)]


def test_responder_lifetime_is_honoured():
    net = make_pair(a_kw={"ipsec_lifetime": 3600}, b_kw={"ipsec_lifetime": 1200})
    ua, ub = established(net)
    assert ua.pair.lifetime_seconds == 1200 and ub.pair.lifetime_seconds == 1200


def test_hard_expiry_when_rekey_fails_then_recovers():
    net = make_pair(a_kw={"ipsec_lifetime": 100})
    ua, _ = established(net)
    net.drop = lambda s, d: not d.raw and src_is_quick(d)  # quick mode is blocked
    net.advance(101)
    downs = net.ev(net.a, IpsecSaDown)
    assert [(d.spi_in, d.reason) for d in downs] == [(ua.pair.spi_in, "expired")]
    net.drop = lambda s, d: False
    net.advance(200)
    assert net.a.peer.counters["phase2_failures"] >= 1
    assert len(net.ev(net.a, IpsecSaUp)) >= 2  # a new pair once quick mode gets through
    assert len(net.a.peer.status()["ipsec_sas"]) == 1


def src_is_quick(d: Datagram) -> bool:
    return decode_header(d.data).exchange == C.EXCH_QUICK


# ---------------------------------------------------------------------------- NAT-T


def test_nat_detection_float_and_keepalives():
    net = make_pair(
        a_kw={"local_address": "10.0.0.2", "local_id": "203.0.113.5"},
        b_kw={"remote_address": "203.0.113.5"},
        a_public="203.0.113.5",
        a_ports={500: 31000, 4500: 31001},
    )
    ua, ub = established(net)
    na = net.ev(net.a, NatDetected)[0]
    nb = net.ev(net.b, NatDetected)[0]
    assert (na.local_behind_nat, na.peer_behind_nat) == (True, False)
    assert (nb.local_behind_nat, nb.peer_behind_nat) == (False, True)
    assert ua.pair.udp_encap and ub.pair.udp_encap
    assert ub.pair.remote_port == 31001 and ua.pair.remote_port == 4500
    # message 5 onward from port 4500
    ports = [d.local_port for s, d in net.log if s == "a"]
    assert ports[:2] == [500, 500] and set(ports[2:]) == {4500}
    st = net.a.peer.status()
    assert st["nat"] == {"local_behind_nat": True, "peer_behind_nat": False, "udp_encap": True, "method": "rfc"}
    n0 = len(net.log)
    net.advance(net.now + 61)
    ka = [d for s, d in net.log[n0:] if s == "a" and d.raw]
    assert len(ka) == 3 and all(d.data == b"\xff" and d.local_port == 4500 for d in ka)
    assert not [d for s, d in net.log if s == "b" and d.raw]  # not behind NAT: no keepalives


def test_nat_port_change_is_followed():
    net = make_pair(
        a_kw={"local_address": "10.0.0.2", "local_id": "203.0.113.5", "dpd_interval": 10},
        b_kw={"remote_address": "203.0.113.5"},
        a_public="203.0.113.5",
        a_ports={500: 31000, 4500: 31001},
    )
    established(net)
    net.a.port_map[4500] = 40000  # the NAT box rebooted
    net.advance(net.now + 15)  # A's R-U-THERE arrives from the new port
    assert net.b.peer.status()["remote_port"] == 40000
    assert net.b.peer.counters["peer_port_changes"] == 1
    net.b.peer.rekey_ipsec(net.now)
    net.b.peer._started = True
    net.b.peer.config.initiator = True
    net.b.peer.rekey_ipsec(net.now)
    net.pump()
    assert net.ev(net.b, IpsecSaUp)[-1].pair.remote_port == 40000


def test_nat_t_force_encapsulates_without_nat():
    net = make_pair(a_kw={"nat_traversal": "force"})
    ua, ub = established(net)
    assert net.ev(net.a, NatDetected)[0].local_behind_nat
    assert net.ev(net.b, NatDetected)[0].peer_behind_nat
    assert ua.pair.udp_encap and ub.pair.udp_encap


def test_nat_t_off():
    net = make_pair(a_kw={"nat_traversal": "off"})
    ua, ub = established(net)
    assert not ua.pair.udp_encap and not ub.pair.udp_encap
    assert not net.ev(net.a, NatDetected)
    assert {d.local_port for _, d in net.log} == {500}


# ---------------------------------------------------------------------------- DELETE / INITIAL-CONTACT


def test_stop_sends_delete_and_peer_acts():
    net = make_pair()
    _, ub = established(net)
    net.a.peer.stop(net.now)
    net.pump()
    assert [(d.spi_in, d.reason) for d in net.ev(net.b, IpsecSaDown)] == [(ub.pair.spi_in, "deleted by peer")]
    assert net.ev(net.b, Phase1Down)[0].reason == "deleted by peer"
    assert net.ev(net.a, Phase1Down)[0].reason == "stopped"
    assert net.a.peer.status()["state"] == "idle"
    assert net.b.peer.status()["state"] == "idle"


def test_initial_contact_drops_old_sas_at_responder():
    net = make_pair()
    _, ub = established(net)
    # our side restarts (daemon crash): a fresh IkePeer with the same config
    fresh = IkePeer(net.a.peer.config, random_bytes=seeded_random(77), name="A2")
    net.a.peer = fresh
    fresh.start(net.now)
    net.pump()
    downs = net.ev(net.b, IpsecSaDown)
    assert [(d.spi_in, d.reason) for d in downs] == [(ub.pair.spi_in, "initial-contact")]
    assert len(net.b.peer.status()["ipsec_sas"]) == 1
    assert net.b.peer.counters["initial_contact_received"] == 2


def test_peer_delete_of_last_child_triggers_new_quick_mode():
    net = make_pair()
    ua, ub = established(net)
    b = net.b.peer
    sa = b.current_sa()
    b.send_delete_esp(sa, [ub.pair.spi_in])
    b.remove_child(b.children[0], "test")
    net.pump()
    assert (ua.pair.spi_in, "deleted by peer") in [(d.spi_in, d.reason) for d in net.ev(net.a, IpsecSaDown)]
    assert len(net.ev(net.a, IpsecSaUp)) == 2  # we keep the tunnel up


# ---------------------------------------------------------------------------- bad input


def _established_net():
    net = make_pair()
    established(net)
    return net


def _cookies(peer):
    st = peer.status()["ike_spi"]
    return bytes.fromhex(st["initiator"]), bytes.fromhex(st["responder"])


def test_malformed_corpus_is_counted_and_never_raises():
    net = _established_net()
    b = net.b.peer
    ci, cr = _cookies(b)
    src = (A_ADDR, 500)
    good_hdr = Header(ci, cr, C.PT_HASH, C.EXCH_INFORMATIONAL, C.FLAG_ENCRYPTION, 0x1234)
    cases = {
        "malformed_truncated": b"\x01\x02\x03",
        "malformed_length_mismatch": Header(ci, cr, 0, C.EXCH_MAIN, 0, 0).encode(0) + b"xx",
        "malformed_bad_version": bytes(Header(ci, cr, 0, C.EXCH_MAIN, 0, 0, version=0x20).encode(0)),
        "malformed_zero_cookie": Header(bytes(8), cr, 0, C.EXCH_MAIN, 0, 0).encode(0),
        "malformed_oversized": b"\x00" * 70000,
        "unknown_cookies": Header(b"\x11" * 8, b"\x22" * 8, 0, C.EXCH_INFORMATIONAL, 0, 5).encode(0),
        "unsupported_exchange": Header(ci, cr, 0, C.EXCH_AGGRESSIVE, 0, 0).encode(0),
        "bad_ciphertext_length": good_hdr.encode(5) + b"abcde",
        "decrypt_failed": good_hdr.encode(32) + bytes(range(32)),
        "unprotected_informational": encode_message(
            Header(ci, cr, 0, C.EXCH_INFORMATIONAL, 0, 0x99),
            [DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[ci + cr])]),
        "wrong_address": Header(ci, cr, 0, C.EXCH_MAIN, 0, 0).encode(0),
    }
    for reason, data in cases.items():
        before = b.counters.get("drop_" + reason, 0)
        remote = ("198.51.100.9", 500) if reason == "wrong_address" else src
        b.receive_datagram(data, remote, 500, net.now)
        assert b.counters.get("drop_" + reason, 0) == before + 1, (reason, b.counters)
    # nested proposal payload at top level of a new main mode
    hdr = Header(b"\x33" * 8, bytes(8), C.PT_PROPOSAL, C.EXCH_MAIN, 0, 0)
    body = Proposal(1, 1, b"", [Transform(1, 1, [])]).encode(True)
    b.receive_datagram(hdr.encode(len(body)) + body, src, 500, net.now)
    assert b.counters.get("drop_malformed_wrong_nesting") == 1
    # still established and working
    assert b.status()["state"] == "established"


def test_bad_hash_and_replay_in_informational():
    net = _established_net()
    a, b = net.a.peer, net.b.peer
    sa = a.current_sa()
    # capture a real protected informational (R-U-THERE) from A
    a.send_info(sa, [NotifyPayload(notify_type=C.N_R_U_THERE, protocol=C.PROTO_ISAKMP, spi=sa.cookies, data=b"\0\0\0\x07")])
    d = a.datagrams_to_send()[0]
    b.receive_datagram(d.data, (A_ADDR, d.local_port), 500, net.now)
    assert b.counters["dpd_answered"] == 1
    # the same bytes again: a duplicate (answered from cache, not reprocessed)
    b.receive_datagram(d.data, (A_ADDR, d.local_port), 500, net.now)
    assert b.counters["dpd_answered"] == 1 and b.counters["retransmits_answered"] == 1
    # same message id, different (tampered) ciphertext: replay of a used message id
    tampered = d.data[:-1] + bytes([d.data[-1] ^ 1])
    b.receive_datagram(tampered, (A_ADDR, d.local_port), 500, net.now)
    assert b.counters["drop_replay"] == 1
    # a new message id with a wrong HASH(1)
    a.send_info(sa, [NotifyPayload(notify_type=C.N_R_U_THERE, protocol=C.PROTO_ISAKMP, spi=sa.cookies, data=b"\0\0\0\x08")])
    d2 = a.datagrams_to_send()[0]
    hdr = decode_header(d2.data)
    iv = keys.phase2_iv(sa.algs.hash, sa.p1_last_block, hdr.message_id)
    pt = bytearray(keys.decrypt(sa.keys.enc_key, iv, d2.data[28:]))
    pt[4] ^= 0xFF  # first byte of HASH(1)
    forged = d2.data[:28] + keys.encrypt(sa.keys.enc_key, iv, bytes(pt))
    b.receive_datagram(forged, (A_ADDR, 500), 500, net.now)
    assert b.counters["drop_bad_hash"] == 1


def test_half_open_limit():
    # unverified responder exchanges (only MM1 seen) are bounded: the oldest gives way
    net = make_pair()
    b = net.b.peer
    a_cfg = net.a.peer.config
    for i in range(UNVERIFIED_LIMIT + 3):
        p = IkePeer(a_cfg, random_bytes=seeded_random(100 + i))
        p.start(0)
        d = p.datagrams_to_send()[0]
        b.receive_datagram(d.data, (A_ADDR, 500), 500, 0)
    assert "drop_half_open_limit" not in b.counters
    assert b.counters["half_open_evicted"] == 3
    assert len([s for s in b.sas if not s.established]) == UNVERIFIED_LIMIT
    net.advance(HALF_OPEN_TIMEOUT_PLUS)
    assert b.counters["half_open_expired"] == UNVERIFIED_LIMIT
    assert not b.sas and b.get_timer() is None


HALF_OPEN_TIMEOUT_PLUS = 31.0


def test_random_garbage_never_raises():
    net = _established_net()
    rng = random.Random(5)
    ci, cr = _cookies(net.b.peer)
    for i in range(2000):
        n = rng.randrange(0, 400)
        data = bytes(rng.getrandbits(8) for _ in range(n))
        if i % 2 and n >= 28:
            # keep the cookies and a consistent length so deeper code runs
            data = ci + cr + data[16:24] + len(data).to_bytes(4, "big") + data[28:]
            data = data[:17] + b"\x10" + data[18:]
        for p in (net.a.peer, net.b.peer):
            p.receive_datagram(data, (p.config.remote_address, rng.choice([500, 4500])), 500, net.now)
            p.handle_timer(net.now)
    assert net.a.peer.status()["state"] == "established"
    assert sum(v for k, v in net.b.peer.counters.items() if k.startswith("drop_")) >= 2000


# ---------------------------------------------------------------------------- hygiene


def test_status_and_logs_are_secret_free(caplog):
    caplog.set_level(logging.DEBUG, logger="cgwd.ike")
    net = make_pair()
    ua, _ = established(net)
    net.a.peer.stop(net.now)
    net.pump()
    text = caplog.text + repr(net.a.peer.status()) + repr(net.b.peer.status()) + repr(net.a.events) + repr(net.a.peer.config)
    assert PSK.decode() not in text and PSK.hex() not in text
    for key in (ua.pair.enc_key_in, ua.pair.enc_key_out, ua.pair.integ_key_in):
        assert key.hex() not in text
    assert "IPsec SA established" in caplog.text


def test_status_shape():
    net = make_pair()
    established(net)
    st = net.a.peer.status()
    assert st["state"] == "established"
    assert st["algorithms"] == "aes128-sha1-modp1024"
    assert set(st["nat"]) >= {"local_behind_nat", "peer_behind_nat", "udp_encap"}
    assert set(st["dpd"]) >= {"interval", "retries", "last_seen", "outstanding"}
    assert len(st["ipsec_sas"]) == 1
    sa = st["ipsec_sas"][0]
    assert set(sa) >= {"spi_in", "spi_out", "algorithms", "established_at", "expires_at", "rekey_at"}
    assert sa["rekey_at"] < sa["expires_at"]
    assert isinstance(st["counters"], dict)


def test_config_validation():
    with pytest.raises(ValueError):
        IkePeerConfig(A_ADDR, B_ADDR, PSK, ike_proposals=["3des-md5-modp768"])
    with pytest.raises(ValueError):
        IkePeerConfig(A_ADDR, B_ADDR, PSK, esp_proposals=["aes128"])
    with pytest.raises(ValueError):
        IkePeerConfig(A_ADDR, B_ADDR, PSK, dpd_action="explode")
    assert "psk" not in repr(IkePeerConfig(A_ADDR, B_ADDR, PSK))


def test_keepalive_datagram_is_raw():
    net = make_pair(a_kw={"nat_traversal": "force"})
    established(net)
    n0 = len(net.log)
    net.advance(net.now + KEEPALIVE_INTERVAL + 0.1)
    raws = [d for s, d in net.log[n0:] if d.raw]
    assert raws and raws[0] == Datagram(b"\xff", (B_ADDR, 4500), 4500, raw=True)


def test_sa_payload_of_initiator_offers_all_proposals():
    net = make_pair(["aes128-sha1-modp1024", "aes256-sha256-modp2048"])
    net.a.peer.start(0)
    d = net.a.peer.datagrams_to_send()[0]
    from cgwd.ike.v1.codec import decode_message

    _, payloads = decode_message(d.data)
    sa = [p for p in payloads if isinstance(p, SaPayload)][0]
    assert len(sa.proposals[0].transforms) == 2
    vids = [p.data for p in payloads if p.payload_type == C.PT_VENDOR_ID]
    assert C.VID_DPD in vids and C.VID_NATT_RFC3947 in vids and C.VID_NATT_DRAFT_02N in vids


def test_commit_bit_initiator_waits_for_connected():
    net = make_pair()
    net.b.peer.commit_bit = True
    ua, ub = established(net)  # CONNECTED arrived in the same exchange round
    assert_pairs_match(ua.pair, ub.pair)
    # now lose the CONNECTED notify of a rekey: the initiator must not use the new SA
    net.advance(60)
    net.drop = lambda s, d: s is net.b and not d.raw and decode_header(d.data).exchange == C.EXCH_INFORMATIONAL
    net.a.peer.rekey_ipsec(net.now)
    net.pump()
    assert len(net.ev(net.b, IpsecSaUp)) == 2
    assert len(net.ev(net.a, IpsecSaUp)) == 1
    net.drop = lambda s, d: False
    net.advance(net.now + 200)
    assert net.a.peer.counters["phase2_failures"] == 1
    assert "no CONNECTED" in net.a.peer.status()["last_error"]
