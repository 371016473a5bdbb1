"""ISAKMP / IKEv1 message codec (RFC 2408, 2407, 2409, 3947).

Decoding never raises anything but :class:`IkeDecodeError`; every length and count is
checked. Decoded payloads keep their wire bytes in ``raw`` (generic header included),
which the HASH computations of IKEv1 need.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import ClassVar

from . import constants as C


class IkeDecodeError(ValueError):
    """A message that cannot be decoded. ``reason`` is a short counter-friendly token."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- header


@dataclass
class Header:
    icookie: bytes
    rcookie: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int = 0
    version: int = C.ISAKMP_VERSION

    def encode(self, body_length: int) -> bytes:
        return struct.pack(
            "!8s8sBBBBII",
            self.icookie,
            self.rcookie,
            self.next_payload,
            self.version,
            self.exchange,
            self.flags,
            self.message_id,
            C.HEADER_LEN + body_length,
        )


def decode_header(data: bytes) -> Header:
    if len(data) < C.HEADER_LEN:
        raise IkeDecodeError("truncated", "shorter than the ISAKMP header")
    if len(data) > C.MAX_MESSAGE_LEN:
        raise IkeDecodeError("oversized")
    ic, rc, np_, ver, exch, flags, mid, length = struct.unpack_from("!8s8sBBBBII", data)
    if ver >> 4 != 1:
        raise IkeDecodeError("bad_version", f"version 0x{ver:02x}")
    if length != len(data):
        if length > len(data):
            raise IkeDecodeError("truncated", f"header says {length}, got {len(data)}")
        raise IkeDecodeError("length_mismatch", f"header says {length}, got {len(data)}")
    if ic == bytes(8):
        raise IkeDecodeError("zero_cookie")
    return Header(ic, rc, np_, exch, flags, mid, length, ver)


# --------------------------------------------------------------------------- attributes


@dataclass
class Attribute:
    type: int
    value: int
    variable: bool = field(default=False, compare=False)  # force the TLV form on encode (decoded TLVs keep it)

    def encode(self) -> bytes:
        if not self.variable and 0 <= self.value <= 0xFFFF:
            return struct.pack("!HH", 0x8000 | self.type, self.value)
        n = max(4, (self.value.bit_length() + 7) // 8)
        return struct.pack("!HH", self.type & 0x7FFF, n) + self.value.to_bytes(n, "big")


def encode_attributes(attrs: list[Attribute]) -> bytes:
    return b"".join(a.encode() for a in attrs)


def decode_attributes(data: bytes) -> list[Attribute]:
    out: list[Attribute] = []
    off = 0
    while off < len(data):
        if len(out) >= C.MAX_ATTRIBUTES:
            raise IkeDecodeError("too_many_attributes")
        if off + 4 > len(data):
            raise IkeDecodeError("truncated_attribute")
        t, v = struct.unpack_from("!HH", data, off)
        off += 4
        if t & 0x8000:
            out.append(Attribute(t & 0x7FFF, v))
        else:
            if off + v > len(data):
                raise IkeDecodeError("truncated_attribute")
            if v > 64:
                raise IkeDecodeError("attribute_too_long")
            out.append(Attribute(t, int.from_bytes(data[off : off + v], "big"), True))
            off += v
    return out


# --------------------------------------------------------------------------- payloads


@dataclass
class Payload:
    TYPE: ClassVar[int] = 0
    raw: bytes = field(default=b"", repr=False, compare=False, kw_only=True)

    @property
    def payload_type(self) -> int:
        return self.TYPE

    def encode_body(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def body(self) -> bytes:
        """Payload body without the generic header (RFC 2409's ``*_b``)."""
        return self.raw[4:] if self.raw else self.encode_body()


@dataclass
class Transform:
    number: int
    transform_id: int
    attributes: list[Attribute] = field(default_factory=list)

    def encode(self, last: bool) -> bytes:
        body = struct.pack("!BBH", self.number, self.transform_id, 0) + encode_attributes(self.attributes)
        return struct.pack("!BBH", 0 if last else C.PT_TRANSFORM, 0, 4 + len(body)) + body


@dataclass
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: list[Transform] = field(default_factory=list)

    def encode(self, last: bool) -> bytes:
        tb = b"".join(t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms))
        body = struct.pack("!BBBB", self.number, self.protocol, len(self.spi), len(self.transforms)) + self.spi + tb
        return struct.pack("!BBH", 0 if last else C.PT_PROPOSAL, 0, 4 + len(body)) + body


@dataclass
class SaPayload(Payload):
    TYPE: ClassVar[int] = C.PT_SA
    proposals: list[Proposal] = field(default_factory=list)
    doi: int = C.DOI_IPSEC
    situation: int = C.SIT_IDENTITY_ONLY

    def encode_body(self) -> bytes:
        return struct.pack("!II", self.doi, self.situation) + b"".join(
            p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals)
        )


@dataclass
class KePayload(Payload):
    TYPE: ClassVar[int] = C.PT_KE
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data


@dataclass
class NoncePayload(Payload):
    TYPE: ClassVar[int] = C.PT_NONCE
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data


@dataclass
class HashPayload(Payload):
    TYPE: ClassVar[int] = C.PT_HASH
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data


@dataclass
class VendorIdPayload(Payload):
    TYPE: ClassVar[int] = C.PT_VENDOR_ID
    data: bytes = b""

    def encode_body(self) -> bytes:
        return self.data


@dataclass
class IdPayload(Payload):
    TYPE: ClassVar[int] = C.PT_ID
    id_type: int = C.ID_IPV4_ADDR
    protocol: int = 0
    port: int = 0
    data: bytes = b""

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.id_type, self.protocol, self.port) + self.data

    def describe(self) -> str:
        return describe_id(self.id_type, self.data)


@dataclass
class NotifyPayload(Payload):
    TYPE: ClassVar[int] = C.PT_NOTIFY
    notify_type: int = 0
    protocol: int = C.PROTO_ISAKMP
    spi: bytes = b""
    data: bytes = b""
    doi: int = C.DOI_IPSEC

    def encode_body(self) -> bytes:
        return struct.pack("!IBBH", self.doi, self.protocol, len(self.spi), self.notify_type) + self.spi + self.data


@dataclass
class DeletePayload(Payload):
    TYPE: ClassVar[int] = C.PT_DELETE
    protocol: int = C.PROTO_IPSEC_ESP
    spis: list[bytes] = field(default_factory=list)
    spi_size: int = 4
    doi: int = C.DOI_IPSEC

    def encode_body(self) -> bytes:
        for s in self.spis:
            if len(s) != self.spi_size:
                raise ValueError("SPI size mismatch in DELETE")
        return struct.pack("!IBBH", self.doi, self.protocol, self.spi_size, len(self.spis)) + b"".join(self.spis)


@dataclass
class NatDPayload(Payload):
    TYPE: ClassVar[int] = C.PT_NAT_D
    data: bytes = b""
    draft: bool = False

    @property
    def payload_type(self) -> int:
        return C.PT_NAT_D_DRAFT if self.draft else C.PT_NAT_D

    def encode_body(self) -> bytes:
        return self.data


@dataclass
class NatOaPayload(Payload):
    TYPE: ClassVar[int] = C.PT_NAT_OA
    id_type: int = C.ID_IPV4_ADDR
    data: bytes = b""
    draft: bool = False

    @property
    def payload_type(self) -> int:
        return C.PT_NAT_OA_DRAFT if self.draft else C.PT_NAT_OA

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.id_type, 0, 0) + self.data


@dataclass
class UnknownPayload(Payload):
    type: int = 0
    data: bytes = b""

    @property
    def payload_type(self) -> int:
        return self.type

    def encode_body(self) -> bytes:
        return self.data


# --------------------------------------------------------------------------- chains


def encode_payloads(payloads: list[Payload]) -> tuple[int, bytes]:
    """Encode a payload chain; returns (type of the first payload, bytes)."""
    parts = []
    for i, p in enumerate(payloads):
        nxt = payloads[i + 1].payload_type if i + 1 < len(payloads) else C.PT_NONE
        body = p.encode_body()
        if 4 + len(body) > 0xFFFF:
            raise ValueError("payload too long")
        raw = struct.pack("!BBH", nxt, 0, 4 + len(body)) + body
        p.raw = raw
        parts.append(raw)
    first = payloads[0].payload_type if payloads else C.PT_NONE
    return first, b"".join(parts)


def encode_message(header: Header, payloads: list[Payload]) -> bytes:
    first, body = encode_payloads(payloads)
    header.next_payload = first
    out = header.encode(len(body)) + body
    header.length = len(out)
    return out


def _u32(b: bytes, off: int = 0) -> int:
    return struct.unpack_from("!I", b, off)[0]


def _decode_sa(body: bytes) -> SaPayload:
    if len(body) < 8:
        raise IkeDecodeError("truncated_sa")
    doi, sit = struct.unpack_from("!II", body)
    if doi != C.DOI_IPSEC:
        raise IkeDecodeError("bad_doi", str(doi))
    if sit != C.SIT_IDENTITY_ONLY:
        raise IkeDecodeError("bad_situation", str(sit))
    off = 8
    proposals: list[Proposal] = []
    nxt = C.PT_PROPOSAL
    while nxt != C.PT_NONE:
        if nxt != C.PT_PROPOSAL:
            raise IkeDecodeError("wrong_nesting", f"payload {nxt} inside SA")
        if len(proposals) >= C.MAX_PROPOSALS:
            raise IkeDecodeError("too_many_proposals")
        if off + 8 > len(body):
            raise IkeDecodeError("truncated_proposal")
        nxt, _r, plen, num, proto, spi_size, ntrans = struct.unpack_from("!BBHBBBB", body, off)
        if plen < 8 + spi_size or off + plen > len(body):
            raise IkeDecodeError("bad_proposal_length")
        pbody = body[off + 8 : off + plen]
        spi = pbody[:spi_size]
        transforms = _decode_transforms(pbody[spi_size:], ntrans)
        proposals.append(Proposal(num, proto, spi, transforms))
        off += plen
    if off != len(body):
        raise IkeDecodeError("sa_trailing_bytes")
    if not proposals:
        raise IkeDecodeError("no_proposal")
    return SaPayload(proposals=proposals, doi=doi, situation=sit)


def _decode_transforms(data: bytes, count: int) -> list[Transform]:
    if count == 0:
        raise IkeDecodeError("no_transform")
    out: list[Transform] = []
    off = 0
    nxt = C.PT_TRANSFORM
    while nxt != C.PT_NONE:
        if nxt != C.PT_TRANSFORM:
            raise IkeDecodeError("wrong_nesting", f"payload {nxt} inside proposal")
        if len(out) >= min(count, C.MAX_TRANSFORMS):
            raise IkeDecodeError("transform_count_mismatch")
        if off + 8 > len(data):
            raise IkeDecodeError("truncated_transform")
        nxt, _r, tlen, num, tid, _r2 = struct.unpack_from("!BBHBBH", data, off)
        if tlen < 8 or off + tlen > len(data):
            raise IkeDecodeError("bad_transform_length")
        out.append(Transform(num, tid, decode_attributes(data[off + 8 : off + tlen])))
        off += tlen
    if len(out) != count:
        raise IkeDecodeError("transform_count_mismatch")
    if off != len(data):
        raise IkeDecodeError("proposal_trailing_bytes")
    return out


def _decode_payload(ptype: int, body: bytes) -> Payload:
    if ptype == C.PT_SA:
        return _decode_sa(body)
    if ptype == C.PT_KE:
        if not body:
            raise IkeDecodeError("empty_ke")
        return KePayload(data=body)
    if ptype == C.PT_NONCE:
        if not 8 <= len(body) <= 256:
            raise IkeDecodeError("bad_nonce_length")
        return NoncePayload(data=body)
    if ptype == C.PT_HASH:
        if not body:
            raise IkeDecodeError("empty_hash")
        return HashPayload(data=body)
    if ptype == C.PT_VENDOR_ID:
        return VendorIdPayload(data=body)
    if ptype == C.PT_ID:
        if len(body) < 4:
            raise IkeDecodeError("truncated_id")
        t, proto, port = struct.unpack_from("!BBH", body)
        data = body[4:]
        _check_id(t, data)
        return IdPayload(id_type=t, protocol=proto, port=port, data=data)
    if ptype == C.PT_NOTIFY:
        if len(body) < 8:
            raise IkeDecodeError("truncated_notify")
        doi, proto, spi_size, ntype = struct.unpack_from("!IBBH", body)
        if 8 + spi_size > len(body):
            raise IkeDecodeError("truncated_notify")
        return NotifyPayload(
            notify_type=ntype, protocol=proto, spi=body[8 : 8 + spi_size], data=body[8 + spi_size :], doi=doi
        )
    if ptype == C.PT_DELETE:
        if len(body) < 8:
            raise IkeDecodeError("truncated_delete")
        doi, proto, spi_size, n = struct.unpack_from("!IBBH", body)
        if spi_size == 0 or len(body) != 8 + spi_size * n or n == 0:
            raise IkeDecodeError("bad_delete_length")
        spis = [body[8 + i * spi_size : 8 + (i + 1) * spi_size] for i in range(n)]
        return DeletePayload(protocol=proto, spis=spis, spi_size=spi_size, doi=doi)
    if ptype in (C.PT_NAT_D, C.PT_NAT_D_DRAFT):
        if not body:
            raise IkeDecodeError("empty_nat_d")
        return NatDPayload(data=body, draft=ptype == C.PT_NAT_D_DRAFT)
    if ptype in (C.PT_NAT_OA, C.PT_NAT_OA_DRAFT):
        if len(body) < 4:
            raise IkeDecodeError("truncated_nat_oa")
        t = body[0]
        data = body[4:]
        if t == C.ID_IPV4_ADDR and len(data) != 4 or t == C.ID_IPV6_ADDR and len(data) != 16:
            raise IkeDecodeError("bad_nat_oa")
        if t not in (C.ID_IPV4_ADDR, C.ID_IPV6_ADDR):
            raise IkeDecodeError("bad_nat_oa")
        return NatOaPayload(id_type=t, data=data, draft=ptype == C.PT_NAT_OA_DRAFT)
    if ptype in (C.PT_PROPOSAL, C.PT_TRANSFORM):
        raise IkeDecodeError("wrong_nesting", f"payload {ptype} outside SA")
    return UnknownPayload(type=ptype, data=body)


_ID_FIXED = {
    C.ID_IPV4_ADDR: 4,
    C.ID_IPV4_ADDR_SUBNET: 8,
    C.ID_IPV4_ADDR_RANGE: 8,
    C.ID_IPV6_ADDR: 16,
    C.ID_IPV6_ADDR_SUBNET: 32,
    C.ID_IPV6_ADDR_RANGE: 32,
}


def _check_id(t: int, data: bytes) -> None:
    want = _ID_FIXED.get(t)
    if want is not None and len(data) != want:
        raise IkeDecodeError("bad_id_length", f"type {t} length {len(data)}")
    if t in (C.ID_FQDN, C.ID_USER_FQDN, C.ID_KEY_ID, C.ID_DER_ASN1_DN, C.ID_DER_ASN1_GN) and not data:
        raise IkeDecodeError("bad_id_length", "empty identity")
    if t == C.ID_IPV4_ADDR_SUBNET:
        mask = int.from_bytes(data[4:], "big")
        inv = (~mask) & 0xFFFFFFFF
        if inv & (inv + 1):
            raise IkeDecodeError("bad_id_mask")
    if t == C.ID_IPV6_ADDR_SUBNET:
        mask = int.from_bytes(data[16:], "big")
        inv = (~mask) & ((1 << 128) - 1)
        if inv & (inv + 1):
            raise IkeDecodeError("bad_id_mask")
    if t == 0 or t > C.ID_KEY_ID:
        raise IkeDecodeError("bad_id_type", str(t))


def decode_payloads(first: int, data: bytes, *, allow_padding: bool = False) -> list[Payload]:
    """Decode a payload chain. ``allow_padding``: trailing bytes after the last payload
    are block-cipher padding (decrypted messages)."""
    out: list[Payload] = []
    off = 0
    nxt = first
    while nxt != C.PT_NONE:
        if len(out) >= C.MAX_PAYLOADS:
            raise IkeDecodeError("too_many_payloads")
        if off + 4 > len(data):
            raise IkeDecodeError("truncated_payload", f"payload {nxt} at {off}")
        n2, _res, plen = struct.unpack_from("!BBH", data, off)
        if plen < 4 or off + plen > len(data):
            raise IkeDecodeError("bad_payload_length", f"payload {nxt} length {plen}")
        p = _decode_payload(nxt, data[off + 4 : off + plen])
        p.raw = data[off : off + plen]
        out.append(p)
        off += plen
        nxt = n2
    if off != len(data) and not allow_padding:
        raise IkeDecodeError("trailing_bytes")
    if allow_padding and len(data) - off > 255:
        raise IkeDecodeError("excess_padding")
    return out


def decode_message(data: bytes) -> tuple[Header, list[Payload]]:
    """Decode an unencrypted message (header + payloads)."""
    h = decode_header(data)
    if h.flags & C.FLAG_ENCRYPTION:
        raise IkeDecodeError("encrypted", "use decode_header + decrypt + decode_payloads")
    return h, decode_payloads(h.next_payload, data[C.HEADER_LEN :])


# --------------------------------------------------------------------------- identities


def parse_identity(text: str) -> tuple[int, bytes]:
    """"1.2.3.4", "ipv4:1.2.3.4", "fqdn:x", "userfqdn:a@b" / "a@b", "keyid:x", "ipv6:..",
    "subnet:10.0.0.0/8" -> (ID type, data)."""
    kind, sep, val = text.partition(":")
    if not sep or kind not in ("ipv4", "ipv6", "fqdn", "userfqdn", "user_fqdn", "email", "keyid", "subnet"):
        kind, val = "", text
    if kind in ("", "ipv4", "ipv6"):
        try:
            addr = ipaddress.ip_address(val)
        except ValueError:
            if kind:
                raise
            if "@" in val:
                return C.ID_USER_FQDN, val.encode()
            return C.ID_FQDN, val.encode()
        if addr.version == 4:
            return C.ID_IPV4_ADDR, addr.packed
        return C.ID_IPV6_ADDR, addr.packed
    if kind == "fqdn":
        return C.ID_FQDN, val.encode()
    if kind in ("userfqdn", "user_fqdn", "email"):
        return C.ID_USER_FQDN, val.encode()
    if kind == "keyid":
        return C.ID_KEY_ID, val.encode()
    net = ipaddress.ip_network(val, strict=False)
    return subnet_id(net)


def subnet_id(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, bytes]:
    if net.version == 4:
        return C.ID_IPV4_ADDR_SUBNET, net.network_address.packed + net.netmask.packed
    return C.ID_IPV6_ADDR_SUBNET, net.network_address.packed + net.netmask.packed


def id_to_network(id_type: int, data: bytes) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        if id_type == C.ID_IPV4_ADDR:
            return ipaddress.IPv4Network(ipaddress.IPv4Address(data))
        if id_type == C.ID_IPV4_ADDR_SUBNET:
            return ipaddress.IPv4Network(
                (ipaddress.IPv4Address(data[:4]), str(ipaddress.IPv4Address(data[4:]))), strict=False
            )
        if id_type == C.ID_IPV6_ADDR:
            return ipaddress.IPv6Network(ipaddress.IPv6Address(data))
        if id_type == C.ID_IPV6_ADDR_SUBNET:
            prefix = bin(int.from_bytes(data[16:], "big")).count("1")
            return ipaddress.IPv6Network((ipaddress.IPv6Address(data[:16]), prefix), strict=False)
    except ValueError:
        return None
    return None


def describe_id(id_type: int, data: bytes) -> str:
    try:
        if id_type == C.ID_IPV4_ADDR and len(data) == 4:
            return str(ipaddress.IPv4Address(data))
        if id_type == C.ID_IPV6_ADDR and len(data) == 16:
            return str(ipaddress.IPv6Address(data))
        if id_type in (C.ID_IPV4_ADDR_SUBNET, C.ID_IPV6_ADDR_SUBNET):
            return str(id_to_network(id_type, data))
        if id_type == C.ID_FQDN:
            return "fqdn:" + data.decode("utf-8", "replace")
        if id_type == C.ID_USER_FQDN:
            return "userfqdn:" + data.decode("utf-8", "replace")
        if id_type == C.ID_KEY_ID:
            return "keyid:" + data.decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - description only
        pass
    return f"id{id_type}:{data.hex()}"
