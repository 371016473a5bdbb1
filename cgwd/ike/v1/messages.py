"""Protected IKEv1 messages of an ISAKMP SA (RFC 2409 5.5, 5.6): encryption with the IV
chaining, the HASH(1)/HASH(2) over message ID and payloads, and the counted drop."""

from __future__ import annotations

from hmac import compare_digest
from typing import TYPE_CHECKING

from .. import crypto
from . import constants as C
from . import keys
from .codec import Header, HashPayload, IkeDecodeError, Payload, decode_payloads, encode_payloads

if TYPE_CHECKING:
    from .main_mode import IsakmpSa


class Drop(Exception):
    """Drop the message being processed with a counted reason (``drop_<reason>``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def ct_eq(a: bytes, b: bytes) -> bool:
    return compare_digest(a, b)


def plain(hdr: Header, data: bytes) -> list[Payload]:
    """The payloads of an unencrypted message (main mode 1-4, unprotected notifies)."""
    if hdr.flags & C.FLAG_ENCRYPTION:
        raise Drop("unexpected_encryption")
    return decode_payloads(hdr.next_payload, data[C.HEADER_LEN :])


def encrypt(sa: IsakmpSa, exch: int, mid: int, payloads: list[Payload], iv: bytes, flags: int = 0) -> tuple[bytes, bytes]:
    """The message and its last cipher block (the next IV of the exchange)."""
    first, body = encode_payloads(payloads)
    ct = keys.encrypt(sa.keys.enc_key, iv, body)
    hdr = Header(sa.icookie, sa.rcookie, first, exch, flags | C.FLAG_ENCRYPTION, mid)
    return hdr.encode(len(ct)) + ct, ct[-keys.BLOCK :]


def decrypt(sa: IsakmpSa, hdr: Header, data: bytes, iv: bytes) -> tuple[list[Payload], bytes]:
    """The payloads and the last cipher block; Drop when it is not a message of ``sa``."""
    if not hdr.flags & C.FLAG_ENCRYPTION:
        raise Drop("unencrypted", f"exchange {hdr.exchange} without E flag")
    if sa.keys is None:
        raise Drop("no_keys")
    ct = data[C.HEADER_LEN :]
    try:
        pt = keys.decrypt(sa.keys.enc_key, iv, ct)
    except crypto.IkeCryptoError:
        raise Drop("bad_ciphertext_length") from None
    try:
        payloads = decode_payloads(hdr.next_payload, pt, allow_padding=True)
    except IkeDecodeError as e:
        raise Drop("decrypt_failed", e.reason) from None
    return payloads, ct[-keys.BLOCK :]


def hash_payloads(sa: IsakmpSa, mid: int, rest: list[Payload], extra: bytes = b"") -> list[Payload]:
    """``rest`` preceded by its HASH: prf(SKEYID_a, M-ID | extra | payloads)."""
    _, rb = encode_payloads(rest)
    h = crypto.prf(sa.algs.hash, sa.keys.skeyid_a, mid.to_bytes(4, "big"), extra, rb)
    return [HashPayload(data=h), *rest]


def check_hash(sa: IsakmpSa, mid: int, payloads: list[Payload], extra: bytes = b"") -> list[Payload]:
    """The payloads after a HASH that verifies (constant-time), else Drop."""
    if not payloads or not isinstance(payloads[0], HashPayload):
        raise Drop("missing_hash")
    rb = b"".join(p.raw for p in payloads[1:])
    want = crypto.prf(sa.algs.hash, sa.keys.skeyid_a, mid.to_bytes(4, "big"), extra, rb)
    if not ct_eq(payloads[0].data, want):
        raise Drop("bad_hash")
    return payloads[1:]
