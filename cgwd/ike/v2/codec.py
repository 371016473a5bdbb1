"""IKEv2 message codec (RFC 7296 section 3): header, payload chain and every payload cgwd uses.

Decoding checks every length, count and reserved structure and raises
:class:`Ikev2DecodeError` with a specific ``reason`` (the engine counts ``drop_malformed_<reason>``).
The encrypted payload (SK) is decoded here only as its raw contents; :mod:`.protect`
verifies and decrypts it, and the plaintext is decoded with :func:`decode_payloads` again.

Unknown payload types are kept as :class:`UnknownPayload` when their critical bit is clear and
raise ``Ikev2DecodeError("unsupported_critical")`` (carrying the type) when it is set, so the
engine can answer UNSUPPORTED_CRITICAL_PAYLOAD (RFC 7296 2.5).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from .constants import (
    ATTR_KEY_LENGTH,
    ATTR_TV,
    GENERIC_HEADER_LEN,
    HEADER_LEN,
    VERSION,
    Flag,
    PayloadType,
    TsType,
)

MAX_PAYLOADS = 64  # per chain: more is hostile (a real message has fewer than 20)
MAX_PROPOSALS = 64
MAX_TRANSFORMS = 64
MAX_SELECTORS = 16
MAX_DELETE_SPIS = 256
NONCE_MIN = 16
NONCE_MAX = 256
CRITICAL = 0x80


class Ikev2DecodeError(ValueError):
    """A malformed IKEv2 message; ``reason`` names the check that failed."""

    def __init__(self, reason: str, detail: str = "", payload_type: int = 0) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.payload_type = payload_type


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        """Sent by the original initiator of the IKE SA (the I flag)."""
        return bool(self.flags & Flag.INITIATOR)

    def encode(self, total_length: int) -> bytes:
        return struct.pack("!8s8sBBBBII", self.spi_i, self.spi_r, self.next_payload, VERSION, self.exchange,
                           self.flags, self.message_id, total_length)


def decode_header(data: bytes) -> Header:
    if len(data) < HEADER_LEN:
        raise Ikev2DecodeError("short_header", f"{len(data)} bytes")
    spi_i, spi_r, nxt, version, exch, flags, mid, length = struct.unpack_from("!8s8sBBBBII", data)
    if version >> 4 != 2:
        raise Ikev2DecodeError("version", f"major version {version >> 4}")
    if length != len(data):
        raise Ikev2DecodeError("length", f"header says {length}, datagram has {len(data)}")
    if spi_i == bytes(8):
        raise Ikev2DecodeError("zero_spi", "initiator SPI is zero")
    return Header(spi_i, spi_r, nxt, exch, flags, mid, length)


# --------------------------------------------------------------------------- payloads


@dataclass
class Transform:
    type: int
    id: int
    key_length: int | None = None
    unknown_attributes: bool = False  # a transform we must not accept

    def encode(self, last: bool) -> bytes:
        attrs = b""
        if self.key_length is not None:
            attrs = struct.pack("!HH", ATTR_TV | ATTR_KEY_LENGTH, self.key_length)
        return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), self.type, 0, self.id) + attrs


@dataclass
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: list[Transform]

    def encode(self, last: bool) -> bytes:
        body = b"".join(t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms))
        length = 8 + len(self.spi) + len(body)
        return struct.pack("!BBHBBBB", 0 if last else 2, 0, length, self.number, self.protocol, len(self.spi),
                           len(self.transforms)) + self.spi + body


@dataclass
class SaPayload:
    proposals: list[Proposal]
    type: int = field(default=PayloadType.SA, init=False)
    critical: bool = False

    def encode_body(self) -> bytes:
        return b"".join(p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals))

    @classmethod
    def decode_body(cls, body: bytes) -> "SaPayload":
        proposals: list[Proposal] = []
        off = 0
        last = False
        while off < len(body):
            if last:
                raise Ikev2DecodeError("sa_trailing", "data after the last proposal")
            if len(proposals) >= MAX_PROPOSALS:
                raise Ikev2DecodeError("sa_too_many_proposals")
            if len(body) - off < 8:
                raise Ikev2DecodeError("proposal_short")
            more, _res, plen, num, proto, spi_size, n_tr = struct.unpack_from("!BBHBBBB", body, off)
            if more not in (0, 2):
                raise Ikev2DecodeError("proposal_last", f"last-substructure {more}")
            if plen < 8 + spi_size or off + plen > len(body):
                raise Ikev2DecodeError("proposal_length", f"{plen}")
            # 3.3.1: numbered 1, 2, ... in an offer; an answer's one proposal keeps its number
            if num == 0 or (proposals and num != proposals[-1].number + 1):
                raise Ikev2DecodeError("proposal_number", f"{num} after {len(proposals)}")
            if spi_size not in (0, 4, 8):
                raise Ikev2DecodeError("proposal_spi_size", f"{spi_size}")
            spi = body[off + 8: off + 8 + spi_size]
            transforms = _decode_transforms(body[off + 8 + spi_size: off + plen], n_tr)
            proposals.append(Proposal(num, proto, spi, transforms))
            last = more == 0
            off += plen
        if not proposals:
            raise Ikev2DecodeError("sa_empty")
        if len(proposals) > 1 and proposals[0].number != 1:
            raise Ikev2DecodeError("proposal_number", f"an offer starting with {proposals[0].number}")
        if not last:
            raise Ikev2DecodeError("proposal_last", "no proposal marked last")
        return cls(proposals)


def _decode_transforms(data: bytes, count: int) -> list[Transform]:
    if count == 0 or count > MAX_TRANSFORMS:
        raise Ikev2DecodeError("transform_count", f"{count}")
    out: list[Transform] = []
    off = 0
    for i in range(count):
        if len(data) - off < 8:
            raise Ikev2DecodeError("transform_short")
        more, _r, tlen, ttype, _r2, tid = struct.unpack_from("!BBHBBH", data, off)
        if more != (0 if i == count - 1 else 3):
            raise Ikev2DecodeError("transform_last", f"last-substructure {more} at {i + 1}/{count}")
        if tlen < 8 or off + tlen > len(data):
            raise Ikev2DecodeError("transform_length", f"{tlen}")
        t = Transform(ttype, tid)
        a = off + 8
        end = off + tlen
        while a < end:
            if end - a < 4:
                raise Ikev2DecodeError("attribute_short")
            atype, aval = struct.unpack_from("!HH", data, a)
            if atype & ATTR_TV:
                if atype & 0x7FFF == ATTR_KEY_LENGTH and t.key_length is None:
                    t.key_length = aval
                else:
                    t.unknown_attributes = True
                a += 4
            else:
                if end - a < 4 + aval:
                    raise Ikev2DecodeError("attribute_length", f"{aval}")
                t.unknown_attributes = True
                a += 4 + aval
        out.append(t)
        off += tlen
    if off != len(data):
        raise Ikev2DecodeError("transform_trailing", f"{len(data) - off} bytes")
    return out


@dataclass
class KePayload:
    group: int
    data: bytes
    type: int = field(default=PayloadType.KE, init=False)
    critical: bool = False

    def encode_body(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> "KePayload":
        if len(body) < 5:
            raise Ikev2DecodeError("ke_short", f"{len(body)} bytes")
        group, _r = struct.unpack_from("!HH", body)
        return cls(group, body[4:])


@dataclass
class NoncePayload:
    data: bytes
    type: int = field(default=PayloadType.NONCE, init=False)
    critical: bool = False

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, body: bytes) -> "NoncePayload":
        if not NONCE_MIN <= len(body) <= NONCE_MAX:
            raise Ikev2DecodeError("nonce_length", f"{len(body)} bytes")
        return cls(body)


@dataclass
class IdPayload:
    """IDi or IDr (``type`` says which)."""

    id_type: int
    data: bytes
    type: int = PayloadType.IDI
    critical: bool = False
    reserved: bytes = b"\x00\x00\x00"  # as received: the AUTH computation covers it

    def encode_body(self) -> bytes:
        return struct.pack("!B3s", self.id_type, self.reserved) + self.data

    @classmethod
    def decode_body(cls, body: bytes, ptype: int = PayloadType.IDI) -> "IdPayload":
        if len(body) < 5:
            raise Ikev2DecodeError("id_short", f"{len(body)} bytes")
        id_type = body[0]
        data = body[4:]
        if id_type == 1 and len(data) != 4:
            raise Ikev2DecodeError("id_ipv4_length", f"{len(data)} bytes")
        if id_type == 5 and len(data) != 16:
            raise Ikev2DecodeError("id_ipv6_length", f"{len(data)} bytes")
        return cls(id_type, data, ptype, reserved=body[1:4])


@dataclass
class AuthPayload:
    method: int
    data: bytes
    type: int = field(default=PayloadType.AUTH, init=False)
    critical: bool = False

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> "AuthPayload":
        if len(body) < 5:
            raise Ikev2DecodeError("auth_short", f"{len(body)} bytes")
        return cls(body[0], body[4:])


@dataclass
class NotifyPayload:
    notify_type: int
    protocol: int = 0
    spi: bytes = b""
    data: bytes = b""
    type: int = field(default=PayloadType.NOTIFY, init=False)
    critical: bool = False

    def encode_body(self) -> bytes:
        return struct.pack("!BBH", self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def decode_body(cls, body: bytes) -> "NotifyPayload":
        if len(body) < 4:
            raise Ikev2DecodeError("notify_short", f"{len(body)} bytes")
        proto, spi_size, ntype = struct.unpack_from("!BBH", body)
        if spi_size not in (0, 4, 8) or len(body) < 4 + spi_size:
            raise Ikev2DecodeError("notify_spi_size", f"{spi_size}")
        return cls(ntype, proto, body[4: 4 + spi_size], body[4 + spi_size:])


@dataclass
class DeletePayload:
    protocol: int
    spis: list[bytes] = field(default_factory=list)
    type: int = field(default=PayloadType.DELETE, init=False)
    critical: bool = False

    def encode_body(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode_body(cls, body: bytes) -> "DeletePayload":
        if len(body) < 4:
            raise Ikev2DecodeError("delete_short", f"{len(body)} bytes")
        proto, size, count = struct.unpack_from("!BBH", body)
        if proto == 1:
            if size != 0 or count != 0 or len(body) != 4:
                raise Ikev2DecodeError("delete_ike_spis", "a Delete of the IKE SA carries no SPIs")
            return cls(proto, [])
        if proto not in (2, 3) or size != 4:
            raise Ikev2DecodeError("delete_spi_size", f"protocol {proto} SPI size {size}")
        if count == 0 or count > MAX_DELETE_SPIS or len(body) != 4 + size * count:
            raise Ikev2DecodeError("delete_count", f"{count} SPIs in {len(body) - 4} bytes")
        return cls(proto, [body[4 + i * size: 4 + (i + 1) * size] for i in range(count)])


@dataclass
class VendorPayload:
    data: bytes
    type: int = field(default=PayloadType.VENDOR, init=False)
    critical: bool = False

    def encode_body(self) -> bytes:
        return self.data

    @classmethod
    def decode_body(cls, body: bytes) -> "VendorPayload":
        return cls(body)


@dataclass(frozen=True)
class TrafficSelector:
    ts_type: int
    ip_protocol: int
    start_port: int
    end_port: int
    start: ipaddress.IPv4Address | ipaddress.IPv6Address
    end: ipaddress.IPv4Address | ipaddress.IPv6Address

    @classmethod
    def from_network(cls, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> "TrafficSelector":
        t = TsType.IPV4_ADDR_RANGE if net.version == 4 else TsType.IPV6_ADDR_RANGE
        return cls(t, 0, 0, 65535, net.network_address, net.broadcast_address)

    def encode(self) -> bytes:
        addrs = self.start.packed + self.end.packed
        return struct.pack("!BBHHH", self.ts_type, self.ip_protocol, 8 + len(addrs), self.start_port,
                           self.end_port) + addrs

    def describe(self) -> str:
        ports = "" if (self.start_port, self.end_port) == (0, 65535) else f"[{self.start_port}-{self.end_port}]"
        proto = f"/{self.ip_protocol}" if self.ip_protocol else ""
        return f"{self.start}-{self.end}{proto}{ports}"


@dataclass
class TsPayload:
    """TSi or TSr (``type`` says which)."""

    selectors: list[TrafficSelector]
    type: int = PayloadType.TSI
    critical: bool = False

    def encode_body(self) -> bytes:
        return struct.pack("!B3x", len(self.selectors)) + b"".join(s.encode() for s in self.selectors)

    @classmethod
    def decode_body(cls, body: bytes, ptype: int = PayloadType.TSI) -> "TsPayload":
        if len(body) < 4:
            raise Ikev2DecodeError("ts_short", f"{len(body)} bytes")
        count = body[0]
        if count == 0 or count > MAX_SELECTORS:
            raise Ikev2DecodeError("ts_count", f"{count}")
        out: list[TrafficSelector] = []
        off = 4
        for _ in range(count):
            if len(body) - off < 8:
                raise Ikev2DecodeError("ts_selector_short")
            ts_type, proto, slen, sport, eport = struct.unpack_from("!BBHHH", body, off)
            if ts_type == TsType.IPV4_ADDR_RANGE:
                alen, cls_ = 4, ipaddress.IPv4Address
            elif ts_type == TsType.IPV6_ADDR_RANGE:
                alen, cls_ = 16, ipaddress.IPv6Address
            else:
                raise Ikev2DecodeError("ts_type", f"{ts_type}")
            if slen != 8 + 2 * alen or off + slen > len(body):
                raise Ikev2DecodeError("ts_selector_length", f"{slen}")
            start = cls_(body[off + 8: off + 8 + alen])
            end = cls_(body[off + 8 + alen: off + 8 + 2 * alen])
            if start > end or sport > eport:
                raise Ikev2DecodeError("ts_range", "start after end")
            out.append(TrafficSelector(ts_type, proto, sport, eport, start, end))
            off += slen
        if off != len(body):
            raise Ikev2DecodeError("ts_trailing", f"{len(body) - off} bytes")
        return cls(out, ptype)


@dataclass
class SkPayload:
    """The encrypted payload as received: ``first_inner`` is the type of the first payload
    inside; ``offset`` is where its generic header starts in the message."""

    first_inner: int
    data: bytes
    offset: int = 0
    type: int = field(default=PayloadType.SK, init=False)
    critical: bool = False

    def encode_body(self) -> bytes:
        return self.data


@dataclass
class UnknownPayload:
    type: int
    body: bytes
    critical: bool = False

    def encode_body(self) -> bytes:
        return self.body


Payload = (SaPayload | KePayload | NoncePayload | IdPayload | AuthPayload | NotifyPayload | DeletePayload
           | VendorPayload | TsPayload | SkPayload | UnknownPayload)

_DECODERS = {
    PayloadType.SA: SaPayload.decode_body,
    PayloadType.KE: KePayload.decode_body,
    PayloadType.NONCE: NoncePayload.decode_body,
    PayloadType.IDI: lambda b: IdPayload.decode_body(b, PayloadType.IDI),
    PayloadType.IDR: lambda b: IdPayload.decode_body(b, PayloadType.IDR),
    PayloadType.AUTH: AuthPayload.decode_body,
    PayloadType.NOTIFY: NotifyPayload.decode_body,
    PayloadType.DELETE: DeletePayload.decode_body,
    PayloadType.VENDOR: VendorPayload.decode_body,
    PayloadType.TSI: lambda b: TsPayload.decode_body(b, PayloadType.TSI),
    PayloadType.TSR: lambda b: TsPayload.decode_body(b, PayloadType.TSR),
}
# Payloads cgwd does not use but knows (RFC 7296): never "unsupported critical".
_KNOWN_UNUSED = {PayloadType.CERT, PayloadType.CERTREQ, PayloadType.CP, PayloadType.EAP, PayloadType.SKF}


def decode_payloads(first: int, data: bytes, base_offset: int = 0, *, inner: bool = False) -> list[Payload]:
    """The chain starting with payload type ``first``. ``base_offset``: where ``data`` starts in
    the message (SK offsets). ``inner``: the plaintext of an SK payload (no SK inside it)."""
    out: list[Payload] = []
    nxt = first
    off = 0
    while nxt != PayloadType.NONE:
        if len(out) >= MAX_PAYLOADS:
            raise Ikev2DecodeError("too_many_payloads")
        if len(data) - off < GENERIC_HEADER_LEN:
            raise Ikev2DecodeError("payload_short", f"payload {nxt} at {base_offset + off}")
        following, flags, plen = struct.unpack_from("!BBH", data, off)
        if plen < GENERIC_HEADER_LEN or off + plen > len(data):
            raise Ikev2DecodeError("payload_length", f"payload {nxt} length {plen}")
        critical = bool(flags & CRITICAL)
        body = data[off + GENERIC_HEADER_LEN: off + plen]
        if nxt == PayloadType.SK:
            if inner:
                raise Ikev2DecodeError("nested_sk")
            if off + plen != len(data):
                raise Ikev2DecodeError("sk_not_last", "data after the encrypted payload")
            out.append(SkPayload(following, body, base_offset + off, critical=critical))
            return out
        dec = _DECODERS.get(nxt)
        if dec is not None:
            p = dec(body)
            p.critical = critical
        elif critical and nxt not in _KNOWN_UNUSED:
            raise Ikev2DecodeError("unsupported_critical", f"payload type {nxt}", payload_type=nxt)
        else:
            p = UnknownPayload(nxt, body, critical)
        out.append(p)
        off += plen
        nxt = following
    if off != len(data):
        raise Ikev2DecodeError("trailing_data", f"{len(data) - off} bytes after the last payload")
    return out


def encode_payloads(payloads: list[Payload], last_next: int = 0) -> tuple[int, bytes]:
    """(type of the first payload, the chain). ``last_next``: the next-payload field of the last
    payload (for an SK payload: the first inner type; else 0)."""
    chunks: list[bytes] = []
    for i, p in enumerate(payloads):
        body = p.encode_body()
        if i + 1 < len(payloads):
            nxt = payloads[i + 1].type
        else:
            nxt = last_next
        flags = CRITICAL if p.critical else 0
        if len(body) + GENERIC_HEADER_LEN > 0xFFFF:
            raise ValueError("payload too long")
        chunks.append(struct.pack("!BBH", nxt, flags, len(body) + GENERIC_HEADER_LEN) + body)
    first = payloads[0].type if payloads else PayloadType.NONE
    return first, b"".join(chunks)


def encode_message(hdr: Header, payloads: list[Payload]) -> bytes:
    """An unprotected message (IKE_SA_INIT, or notifications outside an IKE SA)."""
    first, body = encode_payloads(payloads)
    h = Header(hdr.spi_i, hdr.spi_r, first, hdr.exchange, hdr.flags, hdr.message_id)
    return h.encode(HEADER_LEN + len(body)) + body


def decode_message(data: bytes) -> tuple[Header, list[Payload]]:
    hdr = decode_header(data)
    return hdr, decode_payloads(hdr.next_payload, data[HEADER_LEN:], HEADER_LEN)


def first(payloads: list[Payload], cls: type, type: int | None = None) -> Payload | None:
    """The first payload of class ``cls`` (and payload ``type``: IDi/IDr, TSi/TSr)."""
    for p in payloads:
        if isinstance(p, cls) and (type is None or p.type == type):
            return p
    return None


def all_of(payloads: list[Payload], cls: type) -> list:
    return [p for p in payloads if isinstance(p, cls)]


def notifies(payloads: list[Payload]) -> dict[int, NotifyPayload]:
    """The first notify of each type."""
    out: dict[int, NotifyPayload] = {}
    for p in payloads:
        if isinstance(p, NotifyPayload):
            out.setdefault(p.notify_type, p)
    return out
