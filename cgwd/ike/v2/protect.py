"""The IKEv2 encrypted and integrity-protected payload SK (RFC 7296 3.14, RFC 5282).

* AES-CBC + HMAC: ``SK = IV(16) | AES-CBC(payloads | padding | pad length) | ICV`` where the ICV
  is the HMAC (truncated: SHA1-96, SHA2-256-128, SHA2-384-192, SHA2-512-256) over the whole
  message from the IKE header up to the end of the ciphertext.
* AES-GCM-16 (RFC 5282): the key material is key | 4-byte salt; ``SK = IV(8) | ciphertext |
  ICV(16)``; the nonce is salt | IV; the associated data is the IKE header and the SK payload's
  generic header. The explicit IV is a counter (never repeats under one key); no padding is
  needed (the pad length octet is still there).

Every primitive comes from ``cryptography``.
"""

from __future__ import annotations

import hmac as _hmac
import struct
from typing import Callable

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cgwd.ipsec_sa import ENC_KEY_BYTES, GCM_SALT_BYTES, INTEG_ICV_BYTES, INTEG_KEY_BYTES, is_aead

from .codec import Header, Ikev2DecodeError, Payload, SkPayload, decode_payloads, encode_payloads
from .constants import GENERIC_HEADER_LEN, HEADER_LEN, PayloadType

_HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
CBC_IV = 16
GCM_IV = 8
GCM_ICV = 16
BLOCK = 16


class Ikev2IntegrityError(Exception):
    """The ICV of an SK payload does not verify (spoofed, corrupted or wrong keys)."""


def integ_key_len(integrity: str | None) -> int:
    return INTEG_KEY_BYTES[integrity] if integrity else 0


def enc_key_len(encryption: str) -> int:
    """Bytes of SK_e for the algorithm (GCM: key and salt)."""
    return ENC_KEY_BYTES[encryption] + (GCM_SALT_BYTES if is_aead(encryption) else 0)


class SkCipher:
    """One direction of an IKE SA's protection (SK_ei/SK_ai or SK_er/SK_ar)."""

    def __init__(self, encryption: str, integrity: str | None, enc_key: bytes, integ_key: bytes,
                 random_bytes: Callable[[int], bytes]) -> None:
        self.encryption = encryption
        self.aead = is_aead(encryption)
        if self.aead:
            if integrity is not None:
                raise ValueError("AES-GCM takes no integrity algorithm")
        elif integrity not in INTEG_ICV_BYTES:
            raise ValueError(f"unknown integrity algorithm {integrity!r}")
        if len(enc_key) != enc_key_len(encryption) or len(integ_key) != integ_key_len(integrity):
            raise ValueError("SK key length does not match the algorithms")
        self.integrity = integrity
        self._rand = random_bytes
        if self.aead:
            self._gcm = AESGCM(enc_key[:-GCM_SALT_BYTES])
            self._salt = enc_key[-GCM_SALT_BYTES:]
            self._counter = 0
        else:
            self._key = enc_key
            self._ikey = integ_key
        self.icv_len = GCM_ICV if self.aead else INTEG_ICV_BYTES[integrity]
        self.iv_len = GCM_IV if self.aead else CBC_IV

    def overhead(self) -> int:
        return self.iv_len + self.icv_len + BLOCK

    # ------------------------------------------------------------------ protect

    def protect(self, hdr: Header, payloads: list[Payload]) -> bytes:
        """The whole message: header, SK payload holding ``payloads``."""
        first, inner = encode_payloads(payloads)
        if self.aead:
            padded = inner + b"\x00"
            ct_len = len(padded) + GCM_ICV
            sk_len = GENERIC_HEADER_LEN + GCM_IV + ct_len
        else:
            pad = (-(len(inner) + 1)) % BLOCK
            padded = inner + bytes(pad) + bytes([pad])
            sk_len = GENERIC_HEADER_LEN + CBC_IV + len(padded) + self.icv_len
        total = HEADER_LEN + sk_len
        h = Header(hdr.spi_i, hdr.spi_r, PayloadType.SK, hdr.exchange, hdr.flags, hdr.message_id)
        head = h.encode(total) + struct.pack("!BBH", first, 0, sk_len)
        if self.aead:
            self._counter += 1
            iv = self._counter.to_bytes(GCM_IV, "big")
            ct = self._gcm.encrypt(self._salt + iv, padded, head)
            return head + iv + ct
        iv = self._rand(CBC_IV)
        enc = Cipher(algorithms.AES(self._key), modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        body = head + iv + ct
        return body + self._mac(body)

    def _mac(self, data: bytes) -> bytes:
        m = hmac.HMAC(self._ikey, _HASHES[self.integrity]())
        m.update(data)
        return m.finalize()[: self.icv_len]

    # ------------------------------------------------------------------ unprotect

    def unprotect(self, message: bytes, sk: SkPayload) -> list[Payload]:
        """Verify and decrypt ``sk`` (decoded from ``message``) and decode its payloads.

        Raises :class:`Ikev2IntegrityError` before anything is decrypted when the ICV is wrong,
        :class:`Ikev2DecodeError` for bad lengths or padding."""
        body = sk.data
        if sk.offset + GENERIC_HEADER_LEN + len(body) != len(message):
            raise Ikev2DecodeError("sk_not_last")
        if len(body) < self.iv_len + self.icv_len + (1 if self.aead else BLOCK):
            raise Ikev2DecodeError("sk_short", f"{len(body)} bytes")
        iv = body[: self.iv_len]
        if self.aead:
            aad = message[: sk.offset + GENERIC_HEADER_LEN]
            try:
                padded = self._gcm.decrypt(self._salt + iv, body[self.iv_len:], aad)
            except Exception as e:  # cryptography's InvalidTag
                raise Ikev2IntegrityError("GCM tag does not verify") from e
        else:
            ct = body[self.iv_len: len(body) - self.icv_len]
            if len(ct) % BLOCK:
                raise Ikev2DecodeError("sk_block", f"ciphertext of {len(ct)} bytes")
            if not _hmac.compare_digest(self._mac(message[: len(message) - self.icv_len]), body[-self.icv_len:]):
                raise Ikev2IntegrityError("ICV does not verify")
            dec = Cipher(algorithms.AES(self._key), modes.CBC(iv)).decryptor()
            padded = dec.update(ct) + dec.finalize()
        if not padded:
            raise Ikev2DecodeError("sk_padding", "no pad length octet")
        pad = padded[-1]
        if pad + 1 > len(padded):
            raise Ikev2DecodeError("sk_padding", f"pad length {pad} in {len(padded)} bytes")
        inner = padded[: len(padded) - 1 - pad]
        offset = sk.offset + GENERIC_HEADER_LEN + self.iv_len
        return decode_payloads(sk.first_inner, inner, offset, inner=True)
