"""IKEv2 key material (RFC 7296 2.13-2.18, 2.15): prf, prf+, SKEYSEED, SK_*, Child SA KEYMAT,
the IKE SA rekey's SKEYSEED, and the PSK AUTH value. HMAC from ``cryptography``."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, hmac

from cgwd.ipsec_sa import ENC_KEY_BYTES, GCM_SALT_BYTES, INTEG_KEY_BYTES, is_aead

from .constants import KEY_PAD
from .protect import enc_key_len, integ_key_len

_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
PRF_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}


def prf(alg: str, key: bytes, *data: bytes) -> bytes:
    m = hmac.HMAC(key, _HASHES[alg]())
    for d in data:
        m.update(d)
    return m.finalize()


def prf_plus(alg: str, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n), at most 255 blocks."""
    out = b""
    t = b""
    n = 1
    while len(out) < length:
        if n > 255:
            raise ValueError("prf+ cannot produce that much key material")
        t = prf(alg, key, t, seed, bytes([n]))
        out += t
        n += 1
    return out[:length]


def skeyseed(alg: str, ni: bytes, nr: bytes, g_ir: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (HMAC PRFs take the whole nonces as key)."""
    return prf(alg, ni + nr, g_ir)


def rekey_skeyseed(alg: str, old_sk_d: bytes, g_ir: bytes, ni: bytes, nr: bytes) -> bytes:
    """2.18: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr); ``alg`` is the new SA's PRF."""
    return prf(alg, old_sk_d, g_ir, ni, nr)


@dataclass(frozen=True)
class IkeKeys:
    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def derive_ike_keys(alg: str, seed_key: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes,
                    encryption: str, integrity: str | None) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).
    With AES-GCM SK_a* are empty and SK_e* carry the 4-byte salt (RFC 5282)."""
    p = PRF_SIZES[alg]
    a = integ_key_len(integrity)
    e = enc_key_len(encryption)
    km = prf_plus(alg, seed_key, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    cut = [p, a, a, e, e, p, p]
    parts = []
    off = 0
    for n in cut:
        parts.append(km[off: off + n])
        off += n
    return IkeKeys(*parts)


def child_key_lengths(encryption: str, integrity: str | None) -> tuple[int, int]:
    """(encryption key bytes incl. GCM salt, integrity key bytes) of one ESP direction."""
    ek = ENC_KEY_BYTES[encryption] + (GCM_SALT_BYTES if is_aead(encryption) else 0)
    ik = INTEG_KEY_BYTES[integrity] if integrity else 0
    return ek, ik


@dataclass(frozen=True)
class ChildKeys:
    """ESP keys by direction of the exchange that created the Child SA (2.17)."""

    enc_i: bytes = field(repr=False)  # initiator -> responder
    integ_i: bytes = field(repr=False)
    enc_r: bytes = field(repr=False)  # responder -> initiator
    integ_r: bytes = field(repr=False)


def child_keys(alg: str, sk_d: bytes, ni: bytes, nr: bytes, encryption: str, integrity: str | None,
               g_ir: bytes = b"") -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), cut as encryption then integrity key, first for
    the initiator-to-responder direction, then for the other."""
    ek, ik = child_key_lengths(encryption, integrity)
    km = prf_plus(alg, sk_d, g_ir + ni + nr, 2 * (ek + ik))
    return ChildKeys(km[:ek], km[ek: ek + ik], km[ek + ik: 2 * ek + ik], km[2 * ek + ik:])


def psk_auth(alg: str, psk: bytes, signed_octets: bytes) -> bytes:
    """2.15: AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>)."""
    return prf(alg, prf(alg, psk, KEY_PAD), signed_octets)


def signed_octets(alg: str, real_message: bytes, peer_nonce: bytes, sk_p: bytes, id_body: bytes) -> bytes:
    """<Initiator|Responder>SignedOctets = RealMessage | NonceData (of the other side) |
    prf(SK_p, RestOfIDPayload) (2.15)."""
    return real_message + peer_nonce + prf(alg, sk_p, id_body)
