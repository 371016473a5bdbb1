"""SA model: replay window, sequence numbers, lifetimes, stats."""

import os

import pytest

from cgwd.esp.packet import EspDecoder, EspDrop, EspEncoder, SequenceExhaustedError
from cgwd.esp.sa import (
    SEQ_HARD_LIMIT,
    SEQ_SOFT_LIMIT,
    Lifetime,
    ReplayWindow,
    SaPair,
)
from cgwd.ipsec_sa import IpsecSaPair


def make_pair(lifetime_seconds=3600, lifetime_kilobytes=0, **kw):
    k1, k2, i1, i2 = os.urandom(16), os.urandom(16), os.urandom(20), os.urandom(20)
    return IpsecSaPair(0x1001, 0x2002, "aes128", "sha1", k1, k2, i1, i2,
                       lifetime_seconds=lifetime_seconds, lifetime_kilobytes=lifetime_kilobytes, **kw)


def test_window_sizes_validated():
    for bad in (0, 32, 63, 2049, 4096):
        with pytest.raises(ValueError):
            ReplayWindow(bad)
    for good in (64, 1024, 2048):
        assert ReplayWindow(good).size == good


def test_window_duplicate_and_in_order():
    w = ReplayWindow(64)
    for s in range(1, 100):
        assert w.check(s) is None
        w.update(s)
        assert w.check(s) == "replay_duplicate"
    assert w.top == 99


def test_window_seq_zero_rejected():
    assert ReplayWindow(64).check(0) == "seq_zero"


def test_window_edges():
    w = ReplayWindow(64)
    w.update(100)
    # 100-63 = 37 is the oldest in-window number, 36 is too old
    assert w.check(37) is None
    assert w.check(36) == "replay_too_old"
    w.update(37)
    assert w.check(37) == "replay_duplicate"
    # out of order inside the window
    assert w.check(50) is None
    w.update(50)
    assert w.check(50) == "replay_duplicate"
    # slide by less than the window: old bits move along
    w.update(110)
    assert w.check(100) == "replay_duplicate"
    assert w.check(50) == "replay_duplicate"
    assert w.check(47) is None  # 110 - 63: oldest number still in the window
    assert w.check(46) == "replay_too_old"
    assert w.check(37) == "replay_too_old"  # was received, has slid out

def test_window_edge_exact():
    w = ReplayWindow(64)
    w.update(200)
    assert w.check(200 - 63) is None
    assert w.check(200 - 64) == "replay_too_old"


def test_window_big_jump_clears_bitmap():
    w = ReplayWindow(1024)
    for s in range(1, 1025):
        w.update(s)
    w.update(1024 + 5000)
    assert w.bitmap == 1
    assert w.check(1024 + 4999) is None
    assert w.check(1024 + 5000) == "replay_duplicate"
    assert w.check(1024) == "replay_too_old"


def test_window_near_seq_wrap():
    w = ReplayWindow(2048)
    w.update(SEQ_HARD_LIMIT)
    assert w.check(SEQ_HARD_LIMIT) == "replay_duplicate"
    assert w.check(SEQ_HARD_LIMIT - 1) is None
    # no ESN: a "wrapped" small sequence number is far outside the window
    assert w.check(1) == "replay_too_old"


def test_window_bitmap_bounded():
    w = ReplayWindow(64)
    import random

    rnd = random.Random(1)
    for _ in range(5000):
        w.update(w.top + rnd.randint(0, 70) or 1)
        assert w.bitmap < (1 << 64)


def test_outbound_sequence_soft_and_hard():
    sp = SaPair(make_pair(lifetime_seconds=0), now=0.0)
    enc = EspEncoder(sp.outbound)
    sp.outbound.seq = SEQ_SOFT_LIMIT - 1
    enc.encrypt(b"\x45" + bytes(39))
    assert sp.check_lifetime(1.0) == "soft"
    assert sp.check_lifetime(2.0) is None  # reported once
    sp.outbound.seq = SEQ_HARD_LIMIT - 1
    pkt = enc.encrypt(b"\x45" + bytes(39))
    assert int.from_bytes(pkt[4:8], "big") == SEQ_HARD_LIMIT
    with pytest.raises(SequenceExhaustedError):
        enc.encrypt(b"\x45" + bytes(39))
    assert sp.outbound.seq == SEQ_HARD_LIMIT  # never reused, never wrapped


def test_sequence_never_reused():
    sp = SaPair(make_pair())
    enc = EspEncoder(sp.outbound)
    seqs = [int.from_bytes(enc.encrypt(bytes(40))[4:8], "big") for _ in range(100)]
    assert seqs == list(range(1, 101))


def test_time_lifetimes():
    sp = SaPair(make_pair(lifetime_seconds=3600), now=100.0)
    assert sp.lifetime.hard_seconds == 3600
    assert sp.lifetime.soft_seconds == 3600 - 540
    assert sp.check_lifetime(100.0 + 3000) is None
    assert sp.check_lifetime(100.0 + 3060) == "soft"
    assert sp.check_lifetime(100.0 + 3100) is None
    assert sp.check_lifetime(100.0 + 3600) == "hard"
    assert sp.check_lifetime(100.0 + 9999) is None


def test_short_lifetime_margin_capped():
    lt = Lifetime.for_pair(make_pair(lifetime_seconds=900))
    assert lt.soft_seconds == 720


def test_byte_lifetimes():
    sp = SaPair(make_pair(lifetime_seconds=0, lifetime_kilobytes=10), now=0.0)
    assert sp.lifetime.hard_bytes == 10240 and sp.lifetime.soft_bytes == 9216
    sp.outbound.counters.bytes = 9216
    assert sp.check_lifetime(0) == "soft"
    sp.inbound.counters.bytes = 10240
    assert sp.check_lifetime(0) == "hard"


def test_stats_are_secret_free():
    pair = make_pair()
    sp = SaPair(pair)
    st = sp.stats()
    text = repr(st) + repr(sp) + repr(sp.inbound) + repr(sp.outbound)
    for secret in (pair.enc_key_in, pair.enc_key_out, pair.integ_key_in, pair.integ_key_out):
        assert secret.hex() not in text
        assert repr(secret) not in text
    assert st["spi_in"] == 0x1001 and st["spi_out"] == 0x2002
    for k in ("packets_in", "packets_out", "bytes_in", "bytes_out", "replay_drops",
              "auth_failures", "drops", "established_at", "encryption", "integrity", "udp_encap"):
        assert k in st


def test_gcm_salt_is_last_four_bytes():
    key = bytes(range(16)) + b"SALT"
    pair = IpsecSaPair(0x1001, 0x2002, "aes128gcm16", None, key, key)
    sp = SaPair(pair)
    assert sp.inbound.enc_key == bytes(range(16)) and sp.inbound.salt == b"SALT"


def test_replayed_packet_counted():
    a = make_pair()
    b = IpsecSaPair(0x2002, 0x1001, "aes128", "sha1", a.enc_key_out, a.enc_key_in, a.integ_key_out, a.integ_key_in)
    sa, sb = SaPair(a), SaPair(b)
    enc, dec = EspEncoder(sa.outbound), EspDecoder(sb.inbound)
    p1 = enc.encrypt(bytes(40))
    dec.decrypt(p1)
    with pytest.raises(EspDrop) as ei:
        dec.decrypt(p1)
    assert ei.value.reason == "replay_duplicate"
    assert sb.inbound.counters.replay_drops == 1
    assert sb.inbound.counters.packets == 1
