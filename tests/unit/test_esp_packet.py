"""ESP codec/crypto: round trips, known answers, drops, and cross-checks with scapy."""

import hashlib
import hmac
import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cgwd.esp.packet import EspDecoder, EspDrop, EspEncoder, PADDING
from cgwd.esp.sa import SaPair, SecurityAssociation, algorithm_spec
from cgwd.ipsec_sa import ENC_KEY_BYTES, GCM_SALT_BYTES, INTEG_KEY_BYTES, IpsecSaPair, is_aead

scapy_ipsec = pytest.importorskip("scapy.layers.ipsec")
from scapy.layers.inet import ICMP, IP, TCP  # noqa: E402

ALGS = [
    ("aes128", "sha1"),
    ("aes128", "sha256"),
    ("aes128", "sha384"),
    ("aes128", "sha512"),
    ("aes256", "sha1"),
    ("aes256", "sha256"),
    ("aes256", "sha384"),
    ("aes256", "sha512"),
    ("aes128gcm16", None),
    ("aes256gcm16", None),
]
SCAPY_CRYPT = {"aes128": "AES-CBC", "aes256": "AES-CBC", "aes128gcm16": "AES-GCM", "aes256gcm16": "AES-GCM"}
SCAPY_AUTH = {"sha1": "HMAC-SHA1-96", "sha256": "SHA2-256-128", "sha384": "SHA2-384-192",
              "sha512": "SHA2-512-256", None: None}


def mirrored(enc, integ, **kw):
    kl = ENC_KEY_BYTES[enc] + (GCM_SALT_BYTES if is_aead(enc) else 0)
    ik = INTEG_KEY_BYTES[integ] if integ else 0
    k1, k2, i1, i2 = os.urandom(kl), os.urandom(kl), os.urandom(ik), os.urandom(ik)
    a = IpsecSaPair(0x1001, 0x2002, enc, integ, k1, k2, i1, i2, **kw)
    b = IpsecSaPair(0x2002, 0x1001, enc, integ, k2, k1, i2, i1, **kw)
    return a, b


def endpoints(enc, integ):
    a, b = mirrored(enc, integ)
    sa, sb = SaPair(a), SaPair(b)
    return a, b, EspEncoder(sa.outbound), EspDecoder(sb.inbound), sb


def inner_packet(size=100):
    return bytes(IP(src="10.1.0.1", dst="10.2.0.1") / ICMP() / (b"x" * size))


@pytest.mark.parametrize("enc,integ", ALGS)
def test_round_trip_all_sizes(enc, integ):
    _, _, e, d, sb = endpoints(enc, integ)
    for size in range(0, 80):
        inner = inner_packet(size)
        pkt = e.encrypt(inner)
        spec = algorithm_spec(enc, integ)
        body = len(pkt) - 8 - spec.iv_bytes - spec.icv_bytes
        assert body % spec.block == 0
        assert body - len(inner) - 2 < spec.block  # minimal padding
        assert d.decrypt(pkt) == (4, inner)
    assert sb.inbound.counters.packets == 80


@pytest.mark.parametrize("enc,integ", ALGS)
def test_out_of_order_within_window(enc, integ):
    _, _, e, d, _ = endpoints(enc, integ)
    pkts = [e.encrypt(inner_packet(i)) for i in range(20)]
    order = [5, 1, 0, 19, 7, 2, 3, 4, 6, 18, 17, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    for i in order:
        assert d.decrypt(pkts[i])[1] == inner_packet(i)


def test_cbc_ivs_unpredictable_and_distinct():
    _, _, e, _, _ = endpoints("aes128", "sha1")
    ivs = set()
    prev_last_block = None
    for _ in range(200):
        pkt = e.encrypt(inner_packet(50))
        iv = pkt[8:24]
        assert iv not in ivs
        assert iv != prev_last_block  # not the plain "previous ciphertext block" IV
        ivs.add(iv)
        prev_last_block = pkt[-12 - 16:-12]


@pytest.mark.parametrize("enc,integ", ALGS)
def test_tampered_packets_dropped_and_counted(enc, integ):
    _, _, e, d, sb = endpoints(enc, integ)
    c = sb.inbound.counters
    good = e.encrypt(inner_packet(60))
    for pos in (9, 20, len(good) // 2, len(good) - 1):  # header seq, IV, body, ICV
        bad = bytearray(good)
        bad[pos] ^= 0x01
        with pytest.raises(EspDrop) as ei:
            d.decrypt(bytes(bad))
        assert ei.value.reason == "auth_failed"
    assert c.auth_failures == 4 and c.packets == 0
    # the genuine packet still decrypts afterwards (no state damaged, window not moved)
    assert d.decrypt(good)[1] == inner_packet(60)
    for cut in (0, 1, 8, 20):
        with pytest.raises(EspDrop) as ei:
            d.decrypt(good[:cut])
        assert ei.value.reason == "truncated"
    assert c.drops["truncated"] == 4


def test_cbc_bad_length_dropped():
    _, _, e, d, sb = endpoints("aes128", "sha1")
    good = e.encrypt(inner_packet(60))
    with pytest.raises(EspDrop) as ei:
        d.decrypt(good[:-13] + good[-12:])  # one ciphertext byte missing
    assert ei.value.reason == "bad_length"
    assert d.decrypt(good)[1] == inner_packet(60)


def _manual_cbc(key, ikey, spi, seq, plaintext, hashname="sha1", icv=12):
    iv = os.urandom(16)
    ct = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor().update(plaintext)
    body = struct.pack(">II", spi, seq) + iv + ct
    return body + hmac.new(ikey, body, hashname).digest()[:icv]


def test_bad_padding_dropped_and_counted():
    a, b = mirrored("aes128", "sha1")
    d = EspDecoder(SaPair(b).inbound)
    inner = inner_packet(44)  # 72 bytes: +2 -> 74, pad 6 to 80
    # padding bytes must be 1..n
    bad = inner + b"\x01\x02\x03\x04\x05\x07" + bytes((6, 4))
    with pytest.raises(EspDrop) as ei:
        d.decrypt(_manual_cbc(a.enc_key_out, a.integ_key_out, 0x2002, 1, bad))
    assert ei.value.reason == "bad_padding"
    # pad length longer than the payload
    bad2 = bytes(14) + bytes((200, 4))
    with pytest.raises(EspDrop) as ei:
        d.decrypt(_manual_cbc(a.enc_key_out, a.integ_key_out, 0x2002, 2, bad2))
    assert ei.value.reason == "bad_padding"
    assert d.sa.counters.drops["bad_padding"] == 2
    # well-formed manual packet with a non-minimal (but valid) padding is accepted
    ok = inner + PADDING[22] + bytes((22, 4))
    assert len(ok) % 16 == 0
    assert d.decrypt(_manual_cbc(a.enc_key_out, a.integ_key_out, 0x2002, 3, ok)) == (4, inner)


def test_icv_matches_independent_hmac():
    for integ, hname, n in (("sha1", "sha1", 12), ("sha256", "sha256", 16),
                            ("sha384", "sha384", 24), ("sha512", "sha512", 32)):
        a, _ = mirrored("aes128", integ)
        e = EspEncoder(SaPair(a).outbound)
        pkt = e.encrypt(inner_packet(30))
        assert pkt[-n:] == hmac.new(a.integ_key_out, pkt[:-n], hname).digest()[:n]


# RFC 2202 (HMAC-SHA1) and RFC 4231 (HMAC-SHA2) test case 2 ("Jefe"), truncated as ESP does.
HMAC_VECTORS = [
    ("sha1", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79", 12),
    ("sha256", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", 16),
    ("sha384", "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
               "8e2240ca5e69e2c78b3239ecfab21649", 24),
    ("sha512", "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
               "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737", 32),
]


@pytest.mark.parametrize("integ,full,n", HMAC_VECTORS)
def test_hmac_known_answers_truncated(integ, full, n):
    spec = algorithm_spec("aes128", integ)
    assert spec.icv_bytes == n
    sa = SecurityAssociation(0x1234, "out", spec, bytes(16), b"Jefe")
    e = EspEncoder(sa)
    mac = e._mac.copy()  # the per-SA keyed state the hot path copies
    mac.update(b"what do ya want for nothing?")
    assert mac.finalize()[: e._icv] == bytes.fromhex(full)[:n]


def test_gcm_known_answer_key_salt_split():
    # GCM spec (McGrew & Viega) test case 3: K, IV = cafebabe || facedbaddecaf888.
    K = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
    P = bytes.fromhex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255")
    C = bytes.fromhex(
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
        "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985")
    T = bytes.fromhex("4d5c2af327cd64a62cf35abd2ba6fab4")
    pair = IpsecSaPair(0x1001, 0x2002, "aes128gcm16", None, K + bytes.fromhex("cafebabe"),
                       K + bytes.fromhex("cafebabe"))
    sp = SaPair(pair)
    sa = sp.inbound
    assert AESGCM(sa.enc_key).encrypt(sa.salt + bytes.fromhex("facedbaddecaf888"), P, None) == C + T


def test_gcm_packet_layout():
    a, _ = mirrored("aes128gcm16", None)
    sp = SaPair(a)
    e = EspEncoder(sp.outbound)
    inner = inner_packet(33)
    pkt = e.encrypt(inner)
    spi, seq = struct.unpack(">II", pkt[:8])
    assert (spi, seq) == (0x2002, 1)
    iv = pkt[8:16]
    key, salt = a.enc_key_out[:-4], a.enc_key_out[-4:]
    pt = AESGCM(key).decrypt(salt + iv, pkt[16:], pkt[:8])
    padlen = pt[-2]
    assert pt[-1] == 4 and pt[: len(pt) - 2 - padlen] == inner
    assert (len(pt)) % 4 == 0
    assert e.encrypt(inner)[8:16] != iv  # IV changes per packet


# ---------------------------------------------------------------- scapy cross-checks
def _scapy_sa(pair_out_enc_key, pair_out_integ_key, spi, enc, integ):
    return scapy_ipsec.SecurityAssociation(
        scapy_ipsec.ESP, spi=spi, crypt_algo=SCAPY_CRYPT[enc], crypt_key=pair_out_enc_key,
        auth_algo=SCAPY_AUTH[integ], auth_key=pair_out_integ_key or None,
        tunnel_header=IP(src="192.0.2.1", dst="198.51.100.1"))


@pytest.mark.parametrize("enc,integ", ALGS)
def test_scapy_decrypts_ours(enc, integ):
    a, _ = mirrored(enc, integ)
    e = EspEncoder(SaPair(a).outbound)
    ssa = _scapy_sa(a.enc_key_out, a.integ_key_out, 0x2002, enc, integ)
    for size in (0, 1, 17, 1300):
        inner = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / TCP(dport=179) / (b"y" * size))
        outer = IP(bytes(IP(src="192.0.2.1", dst="198.51.100.1", proto=50) / e.encrypt(inner)))
        assert bytes(ssa.decrypt(outer)) == inner


@pytest.mark.parametrize("enc,integ", ALGS)
def test_we_decrypt_scapys(enc, integ):
    a, b = mirrored(enc, integ)
    d = EspDecoder(SaPair(b).inbound)
    ssa = _scapy_sa(a.enc_key_out, a.integ_key_out, 0x2002, enc, integ)
    for i, size in enumerate((0, 1, 17, 1300)):
        inner = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / ICMP() / (b"z" * size))
        ssa.seq_num = 100 + i
        esp = ssa.encrypt(IP(inner))
        assert d.decrypt(bytes(esp[scapy_ipsec.ESP])) == (4, inner)


@pytest.mark.parametrize("enc,integ", [("aes128", "sha1"), ("aes128gcm16", None)])
def test_replay_decisions_match_rfc4303_model(enc, integ):
    """The decoder's replay window (its update is inlined in decrypt) accepts exactly what
    RFC 4303 3.4.3 allows: new, non-zero, and above top - window; seeded random orders
    with duplicates, old packets and jumps beyond the window."""
    import random

    for seed in range(6):
        rng = random.Random(seed)
        a, b = mirrored(enc, integ)
        e, d = EspEncoder(SaPair(a).outbound), EspDecoder(SaPair(b, replay_window=64).inbound)
        pkts = [e.encrypt(inner_packet(8)) for _ in range(400)]
        seen: set[int] = set()
        top = 0
        for _ in range(600):
            seq = rng.choice([top + 1, top + rng.randint(1, 90), max(1, top - rng.randint(0, 80)),
                              rng.randint(1, 400)])
            seq = min(seq, 400)
            ok = seq not in seen and seq > top - 64
            try:
                d.decrypt(pkts[seq - 1])
                accepted = True
            except EspDrop as drop:
                accepted = False
                assert str(drop) in ("replay_duplicate", "replay_too_old"), drop
            assert accepted == ok, (seed, seq, top)
            if ok:
                seen.add(seq)
                top = max(top, seq)
        assert d._window.top == top
