"""cgwd.ike.crypto: DH groups and validation, RFC 2409 derivations (cross-checked with
independent constructions from hashlib/hmac), AES-CBC IV chaining."""

import hashlib
import hmac

import pytest

from cgwd.ike import crypto
from cgwd.ike.v1 import keys

ALL_GROUPS = [2, 5, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]


@pytest.mark.parametrize("group", ALL_GROUPS)
def test_dh_agreement(group):
    a, b = crypto.DiffieHellman(group), crypto.DiffieHellman(group)
    assert len(a.public) == crypto.ke_length(group)
    s1, s2 = a.shared_secret(b.public), b.shared_secret(a.public)
    assert s1 == s2
    expected_len = {19: 32, 20: 48, 21: 66}.get(group, crypto.ke_length(group))
    assert len(s1) == expected_len


@pytest.mark.parametrize("group", [2, 14, 24])
def test_modp_peer_value_validation(group):
    a = crypto.DiffieHellman(group)
    p = crypto.MODP_GROUPS[group][0]
    n = crypto.ke_length(group)
    for bad in (0, 1, p - 1, p, p + 1):
        with pytest.raises(crypto.IkeCryptoError):
            a.shared_secret(bad.to_bytes(n + 1, "big")[-n:] if bad < 256 ** n else b"\xff" * n)
    with pytest.raises(crypto.IkeCryptoError):
        a.shared_secret(b"\x02" * (n - 1))


def test_rfc5114_subgroup_parameters():
    for g in (22, 23, 24):
        p, gen, q = crypto.MODP_GROUPS[g]
        assert (p - 1) % q == 0 and pow(gen, q, p) == 1


def test_rfc3526_group14_prime_shape():
    p = crypto.MODP_GROUPS[14][0]
    assert p.bit_length() == 2048 and p >> 1984 == 2**64 - 1 and p & (2**64 - 1) == 2**64 - 1


@pytest.mark.parametrize("group", [19, 20, 21])
def test_ecp_point_validation(group):
    a = crypto.DiffieHellman(group)
    n = crypto.ke_length(group)
    with pytest.raises(crypto.IkeCryptoError):
        a.shared_secret(b"\x01" * n)  # not on the curve
    with pytest.raises(crypto.IkeCryptoError):
        a.shared_secret(b"\x01" * (n - 2))


@pytest.mark.parametrize("alg", ["sha1", "sha256", "sha384", "sha512"])
def test_prf_and_phase1_derivation_match_rfc2409_formulas(alg):
    h = getattr(hashlib, alg)
    psk, ni, nr, gxy, ci, cr = b"k", b"n" * 16, b"m" * 16, b"g" * 128, b"i" * 8, b"r" * 8
    skeyid = keys.skeyid_psk(alg, psk, ni, nr)
    assert skeyid == hmac.new(psk, ni + nr, h).digest()
    p1 = keys.derive_phase1(alg, skeyid, gxy, ci, cr, 32)
    d = hmac.new(skeyid, gxy + ci + cr + b"\0", h).digest()
    a = hmac.new(skeyid, d + gxy + ci + cr + b"\1", h).digest()
    e = hmac.new(skeyid, a + gxy + ci + cr + b"\2", h).digest()
    assert (p1.skeyid_d, p1.skeyid_a, p1.skeyid_e) == (d, a, e)
    if len(e) >= 32:
        assert p1.enc_key == e[:32]
    else:  # appendix B key extension
        k1 = hmac.new(e, b"\0", h).digest()
        k2 = hmac.new(e, k1, h).digest()
        assert p1.enc_key == (k1 + k2)[:32]


def test_keymat_extension():
    skd = b"d" * 20
    km = keys.keymat("sha1", skd, 3, 0x01020304, b"a" * 16, b"b" * 16, 64, b"x" * 128)
    seed = b"x" * 128 + b"\3\1\2\3\4" + b"a" * 16 + b"b" * 16
    k1 = hmac.new(skd, seed, hashlib.sha1).digest()
    k2 = hmac.new(skd, k1 + seed, hashlib.sha1).digest()
    k3 = hmac.new(skd, k2 + seed, hashlib.sha1).digest()
    k4 = hmac.new(skd, k3 + seed, hashlib.sha1).digest()
    assert km == (k1 + k2 + k3 + k4)[:64]


def test_ivs():
    assert keys.phase1_iv("sha1", b"a", b"b") == hashlib.sha1(b"ab").digest()[:16]
    assert keys.phase2_iv("sha256", b"L" * 16, 0x11223344) == hashlib.sha256(b"L" * 16 + b"\x11\x22\x33\x44").digest()[:16]


def test_cbc_round_trip_and_padding():
    key, iv = b"k" * 16, b"i" * 16
    ct = keys.encrypt(key, iv, b"hello")
    assert len(ct) == 16
    assert keys.decrypt(key, iv, ct)[:5] == b"hello"
    assert keys.decrypt(key, iv, ct)[5:] == b"\0" * 11
    with pytest.raises(crypto.IkeCryptoError):
        keys.decrypt(key, iv, ct[:-1])
