"""IKEv1 key material (RFC 2409): SKEYID and its derivatives, KEYMAT, the IVs, and AES-CBC
with the IV chaining of phase 1 and phase 2.

Every primitive comes from ``cryptography`` (through :mod:`cgwd.ike.crypto`); this module
only composes them as RFC 2409 prescribes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..crypto import IkeCryptoError, hash_, prf

__all__ = [
    "BLOCK",
    "Phase1Keys",
    "decrypt",
    "derive_phase1",
    "encrypt",
    "extend_key",
    "keymat",
    "phase1_iv",
    "phase2_iv",
    "skeyid_psk",
]


def skeyid_psk(alg: str, psk: bytes, ni_b: bytes, nr_b: bytes) -> bytes:
    """SKEYID = prf(pre-shared-key, Ni_b | Nr_b)."""
    return prf(alg, psk, ni_b, nr_b)


@dataclass
class Phase1Keys:
    skeyid: bytes = field(repr=False)
    skeyid_d: bytes = field(repr=False)
    skeyid_a: bytes = field(repr=False)
    skeyid_e: bytes = field(repr=False)
    enc_key: bytes = field(repr=False)


def derive_phase1(alg: str, skeyid: bytes, gxy: bytes, cky_i: bytes, cky_r: bytes, enc_key_len: int) -> Phase1Keys:
    d = prf(alg, skeyid, gxy, cky_i, cky_r, b"\x00")
    a = prf(alg, skeyid, d, gxy, cky_i, cky_r, b"\x01")
    e = prf(alg, skeyid, a, gxy, cky_i, cky_r, b"\x02")
    return Phase1Keys(skeyid, d, a, e, extend_key(alg, e, enc_key_len))


def extend_key(alg: str, skeyid_e: bytes, length: int) -> bytes:
    """RFC 2409 appendix B: Ka = K1 | K2 | ..., K1 = prf(SKEYID_e, 0), Kn = prf(SKEYID_e, Kn-1)."""
    if len(skeyid_e) >= length:
        return skeyid_e[:length]
    out = b""
    k = b"\x00"
    while len(out) < length:
        k = prf(alg, skeyid_e, k)
        out += k
    return out[:length]


def keymat(
    alg: str, skeyid_d: bytes, protocol: int, spi: int, ni_b: bytes, nr_b: bytes, length: int, gxy: bytes = b""
) -> bytes:
    """RFC 2409 5.5: KEYMAT = K1 | K2 ..., K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b),
    Kn = prf(SKEYID_d, Kn-1 | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b)."""
    seed = gxy + bytes([protocol]) + spi.to_bytes(4, "big") + ni_b + nr_b
    out = b""
    k = b""
    while len(out) < length:
        k = prf(alg, skeyid_d, k, seed)
        out += k
    return out[:length]


# --------------------------------------------------------------------------- IVs / cipher

BLOCK = 16


def phase1_iv(hash_alg: str, gxi: bytes, gxr: bytes) -> bytes:
    return hash_(hash_alg, gxi + gxr)[:BLOCK]


def phase2_iv(hash_alg: str, last_phase1_block: bytes, message_id: int) -> bytes:
    return hash_(hash_alg, last_phase1_block + message_id.to_bytes(4, "big"))[:BLOCK]


def encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """AES-CBC; pads with zeros to the block size (RFC 2408 3.1: the receiver ignores padding)."""
    pad = (-len(plaintext)) % BLOCK
    data = plaintext + b"\0" * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    if not ciphertext or len(ciphertext) % BLOCK:
        raise IkeCryptoError("ciphertext not a multiple of the block size")
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return dec.update(ciphertext) + dec.finalize()
