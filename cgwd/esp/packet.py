"""ESP packet codec and crypto (RFC 4303, tunnel mode; RFC 4106 for AES-GCM).

Wire format::

    SPI (4) | Sequence Number (4) | IV (16 CBC / 8 GCM) | payload | padding 1,2,3.. |
    Pad Length (1) | Next Header (1) | ICV (12..32 HMAC / 16 GCM)

Hot path notes:

* AES-CBC uses one persistent encryptor and one persistent decryptor per SA (creating
  an OpenSSL context per packet costs ~4x the encryption of 1400 bytes).
  - Encrypt: the CBC chain carries on from the previous packet's last ciphertext
    block C.  We feed one fresh random block R first; its output E(R ^ C) becomes the
    packet's IV (unpredictable: it is the block cipher applied to a random value,
    SP 800-38A appendix C), and the following blocks are exactly CBC(IV, plaintext).
  - Decrypt: feeding IV || ciphertext to the persistent decryptor yields a garbage
    first block (discarded) and then CBC-decrypt(IV, ciphertext).  Only whole blocks
    are ever fed (checked first) so the decryptor never buffers a partial block.
* HMAC: ``cryptography`` HMAC object keyed once per SA, ``copy()`` per packet (the
  keyed inner/outer state is precomputed; measured faster than stdlib hmac).
* AES-GCM: one ``AESGCM`` object per SA; the 8-byte explicit IV is the 64-bit
  sequence counter of the SA (unique per key, as RFC 4106 requires); nonce =
  salt || IV; AAD = SPI || seq.
"""

from __future__ import annotations

import os
import struct
from hmac import compare_digest as _const_eq

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cgwd.esp.sa import SEQ_HARD_LIMIT, SecurityAssociation

NEXT_HEADER_IPV4 = 4
NEXT_HEADER_IPV6 = 41
NEXT_HEADER_NONE = 59  # RFC 4303 dummy packet

_HASHES = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

_HDR = struct.Struct(">II")
_U64 = struct.Struct(">Q")

# PADDING[n] = bytes 1..n (RFC 4303 2.4 default padding).
PADDING = tuple(bytes(range(1, n + 1)) for n in range(256))

_RANDOM_POOL_BLOCKS = 256
_RANDOM_POOL_BYTES = 16 * _RANDOM_POOL_BLOCKS


class EspDrop(Exception):
    """A received packet was dropped; ``reason`` is the counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SequenceExhaustedError(Exception):
    """The outbound SA has used sequence number 2**32 - 1."""


def _trailers(block: int) -> dict:
    """(payload_len % block, next_header) -> padding + pad length + next header."""
    out = {}
    for rem in range(block):
        padlen = (-(rem + 2)) % block
        for nh in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NEXT_HEADER_NONE):
            out[(rem, nh)] = PADDING[padlen] + bytes((padlen, nh))
    return out


_TRAILERS_16 = _trailers(16)
_TRAILERS_4 = _trailers(4)


class EspEncoder:
    """Builds outbound ESP packets for one outbound SA."""

    __slots__ = (
        "sa", "_aead", "_enc", "_mac", "_icv", "_salt", "_pool", "_pool_pos", "_trailers",
        "_block", "_counters",
    )

    def __init__(self, sa: SecurityAssociation) -> None:
        if sa.direction != "out":
            raise ValueError("EspEncoder needs an outbound SA")
        self.sa = sa
        alg = sa.alg
        self._counters = sa.counters
        self._icv = alg.icv_bytes
        self._block = alg.block
        if alg.aead:
            self._aead = AESGCM(sa.enc_key)
            self._salt = sa.salt
            self._enc = None
            self._mac = None
            self._trailers = _TRAILERS_4
        else:
            self._aead = None
            self._salt = b""
            self._enc = Cipher(algorithms.AES(sa.enc_key), modes.CBC(os.urandom(16))).encryptor()
            self._mac = crypto_hmac.HMAC(sa.integ_key, _HASHES[alg.integrity]())
            self._trailers = _TRAILERS_16
        self._pool = b""
        self._pool_pos = _RANDOM_POOL_BYTES  # empty: the first packet fills the pool

    def encrypt(self, payload: bytes, next_header: int = NEXT_HEADER_IPV4) -> bytes:
        """Return the ESP packet (SPI .. ICV) carrying ``payload`` (bytes-like).

        Raises :class:`SequenceExhaustedError` when the SA cannot send any more."""
        sa = self.sa
        seq = sa.seq + 1
        if seq > SEQ_HARD_LIMIT:
            raise SequenceExhaustedError
        sa.seq = seq
        n = len(payload)
        trailer = self._trailers[(n % self._block, next_header)]
        hdr = _HDR.pack(sa.spi, seq)
        c = self._counters
        c.packets += 1
        c.bytes += n
        if self._aead is not None:
            iv = _U64.pack(seq)
            return b"".join((hdr, iv, self._aead.encrypt(self._salt + iv, b"".join((payload, trailer)), hdr)))
        pos = self._pool_pos
        if pos >= _RANDOM_POOL_BYTES:
            self._pool = os.urandom(_RANDOM_POOL_BYTES)
            pos = 0
        self._pool_pos = pos + 16
        body = hdr + self._enc.update(b"".join((self._pool[pos : pos + 16], payload, trailer)))
        mac = self._mac.copy()
        mac.update(body)
        return body + mac.finalize()[: self._icv]


class EspDecoder:
    """Authenticates, replay-checks and decrypts inbound ESP for one inbound SA.

    ``decrypt`` counts every outcome on the SA's counters and raises :class:`EspDrop`
    for packets that must be dropped."""

    __slots__ = ("sa", "_aead", "_dec", "_mac", "_icv", "_salt", "_window", "_counters", "_min_len", "_iv")

    def __init__(self, sa: SecurityAssociation) -> None:
        if sa.direction != "in":
            raise ValueError("EspDecoder needs an inbound SA")
        self.sa = sa
        alg = sa.alg
        self._counters = sa.counters
        self._window = sa.window
        self._icv = alg.icv_bytes
        self._iv = alg.iv_bytes
        if alg.aead:
            self._aead = AESGCM(sa.enc_key)
            self._salt = sa.salt
            self._dec = None
            self._mac = None
            # header + IV + (at least pad length + next header, 4-aligned) + ICV
            self._min_len = 8 + 8 + 4 + 16
        else:
            self._aead = None
            self._salt = b""
            self._dec = Cipher(algorithms.AES(sa.enc_key), modes.CBC(bytes(16))).decryptor()
            self._mac = crypto_hmac.HMAC(sa.integ_key, _HASHES[alg.integrity]())
            self._min_len = 8 + 16 + 16 + self._icv

    def _drop(self, reason: str):
        self._counters.drop(reason)
        return EspDrop(reason)

    def decrypt(self, packet: bytes) -> tuple[int, bytes]:
        """Return (next_header, inner packet)."""
        c = self._counters
        n = len(packet)
        if n < self._min_len:
            raise self._drop("truncated")
        seq = _HDR.unpack_from(packet)[1]
        window = self._window
        top = window.top
        if seq <= top or not seq:  # in-order new packets skip the full check
            why = window.check(seq)
            if why is not None:
                if why == "seq_zero":
                    raise self._drop(why)
                c.replay_drops += 1
                raise EspDrop(why)
        icv = self._icv
        if self._aead is not None:
            try:
                pt = self._aead.decrypt(self._salt + packet[8:16], packet[16:], packet[:8])
            except InvalidTag:
                c.auth_failures += 1
                raise EspDrop("auth_failed") from None
            if (n - 16 - icv) & 3:
                # authenticated but not 4-byte aligned: sender bug
                raise self._drop("bad_length")
            start = 0
        else:
            if (n - 8 - icv) & 15:
                raise self._drop("bad_length")
            mac = self._mac.copy()
            mac.update(packet[: n - icv])
            if not _const_eq(mac.finalize()[:icv], packet[n - icv :]):
                c.auth_failures += 1
                raise EspDrop("auth_failed")
            # the persistent decryptor's first output block is garbage (see module doc)
            pt = self._dec.update(packet[8 : n - icv])
            start = 16
        # Authenticated from here on.
        padlen = pt[-2]
        end = len(pt) - 2 - padlen
        if end < start or pt[end:-2] != PADDING[padlen]:
            raise self._drop("bad_padding")
        # window.update(seq), inlined (a call is ~6 % of a packet's decrypt)
        if seq > top:
            shift = seq - top
            window.bitmap = 1 if shift >= window.size else ((window.bitmap << shift) | 1) & window._mask
            window.top = seq
        else:
            window.bitmap |= 1 << (top - seq)
        c.packets += 1
        c.bytes += end - start
        return pt[-1], pt[start:end]


def esp_spi(packet: bytes) -> int:
    """SPI of an ESP packet (caller checks len >= 8)."""
    return _HDR.unpack_from(packet)[0]
