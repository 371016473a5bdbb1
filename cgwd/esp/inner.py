"""Inner (tunnelled) IPv4 packet handling (IPv6: :mod:`cgwd.esp.inner6`): TCP MSS clamping, DF clearing and
fragmentation (RFC 791) before encryption, traffic-selector checks.

All functions take and return ``bytes``; they allocate only when they change a packet.
"""

from __future__ import annotations

import ipaddress
import struct

_H = struct.Struct(">H")


class InnerDrop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071) of ``data``."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def csum_adjust(csum: int, old: int, new: int) -> int:
    """Incremental update of a 16-bit one's complement checksum (RFC 1624 eqn. 3)."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def validate_ipv4(pkt: bytes) -> bytes:
    """Check the basics of an IPv4 packet; trims trailing bytes (TFC padding) beyond
    the IP total length.  Raises :class:`InnerDrop`."""
    n = len(pkt)
    if n < 20 or pkt[0] >> 4 != 4:
        raise InnerDrop("inner_not_ipv4")
    ihl = (pkt[0] & 15) * 4
    total = (pkt[2] << 8) | pkt[3]
    if ihl < 20 or total < ihl or total > n:
        raise InnerDrop("inner_malformed")
    if total < n:
        pkt = pkt[:total]
    return pkt


def clamp_mss(pkt: bytes, mss: int) -> bytes:
    """Lower the MSS option of a TCP SYN (or SYN-ACK) to ``mss``; fixes the TCP
    checksum incrementally.  Anything else is returned unchanged."""
    if pkt[9] != 6 or (pkt[6] & 0x1F) or pkt[7]:  # not TCP, or a non-first fragment
        return pkt
    ihl = (pkt[0] & 15) * 4
    n = len(pkt)
    if n < ihl + 20 or not (pkt[ihl + 13] & 0x02):  # no SYN
        return pkt
    doff = (pkt[ihl + 12] >> 4) * 4
    end = ihl + doff
    if doff < 20 or end > n:
        return pkt
    i = ihl + 20
    while i < end:
        kind = pkt[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        olen = pkt[i + 1]
        if olen < 2 or i + olen > end:
            break
        if kind == 2 and olen == 4:
            old = (pkt[i + 2] << 8) | pkt[i + 3]
            if old <= mss:
                return pkt
            b = bytearray(pkt)
            b[i + 2 : i + 4] = _H.pack(mss)
            ck = (b[ihl + 16] << 8) | b[ihl + 17]
            if (i + 2 - ihl) & 1:
                # the field sits at an odd offset: it contributes byte-swapped to the
                # one's complement sum (RFC 1071 byte-order independence)
                old_w, new_w = ((old & 0xFF) << 8) | (old >> 8), ((mss & 0xFF) << 8) | (mss >> 8)
            else:
                old_w, new_w = old, mss
            b[ihl + 16 : ihl + 18] = _H.pack(csum_adjust(ck, old_w, new_w))
            return bytes(b)
        i += olen
    return pkt


def clear_df(pkt: bytes) -> bytes:
    """Clear the Don't Fragment bit (header checksum updated incrementally)."""
    if not pkt[6] & 0x40:
        return pkt
    b = bytearray(pkt)
    old = (b[6] << 8) | b[7]
    b[6] &= ~0x40 & 0xFF
    new = (b[6] << 8) | b[7]
    ck = (b[10] << 8) | b[11]
    b[10:12] = _H.pack(csum_adjust(ck, old, new))
    return bytes(b)


def _copied_options(options: bytes) -> bytes:
    """Options that RFC 791 says are copied into every fragment (copy flag set)."""
    out = bytearray()
    i = 0
    n = len(options)
    while i < n:
        t = options[i]
        if t == 0:
            break
        if t == 1:
            i += 1
            continue
        if i + 1 >= n:
            break
        olen = options[i + 1]
        if olen < 2 or i + olen > n:
            break
        if t & 0x80:
            out += options[i : i + olen]
        i += olen
    while len(out) % 4:
        out.append(0)
    return bytes(out)


def fragment(pkt: bytes, mtu: int) -> list[bytes]:
    """Fragment an IPv4 packet into pieces of at most ``mtu`` bytes (RFC 791),
    clearing DF.  Works on packets that are fragments already."""
    pkt = clear_df(pkt)
    if len(pkt) <= mtu:
        return [pkt]
    ihl = (pkt[0] & 15) * 4
    header = pkt[:ihl]
    data = pkt[ihl:]
    ff = (pkt[6] << 8) | pkt[7]
    base_off = ff & 0x1FFF
    orig_mf = ff & 0x2000
    later_header = header[:20] + _copied_options(header[20:])
    frags = []
    pos = 0
    first = True
    while pos < len(data):
        hdr = header if first else later_header
        room = (mtu - len(hdr)) & ~7
        if room <= 0:
            raise InnerDrop("mtu_too_small")
        chunk = data[pos : pos + room]
        last = pos + len(chunk) >= len(data)
        h = bytearray(hdr)
        h[0] = 0x40 | (len(hdr) // 4)
        h[2:4] = _H.pack(len(hdr) + len(chunk))
        flags = 0 if (last and not orig_mf) else 0x2000
        h[6:8] = _H.pack(flags | (base_off + pos // 8))
        h[10:12] = b"\0\0"
        h[10:12] = _H.pack(checksum(bytes(h)))
        frags.append(bytes(h) + chunk)
        pos += len(chunk)
        first = False
    return frags


class Selector:
    """Fast traffic-selector match on raw addresses (src in A, dst in B), IPv4 or IPv6
    (the family of the networks; the caller checks the packet is of that family)."""

    __slots__ = ("any", "family", "_src", "_smask", "_dst", "_dmask", "_s", "_d", "_w")

    def __init__(self, src, dst) -> None:
        src = ipaddress.ip_network(src, strict=False)
        dst = ipaddress.ip_network(dst, strict=False)
        if src.version != dst.version:
            raise ValueError("selector networks of two families")
        self.family = src.version
        self._src = int(src.network_address)
        self._smask = int(src.netmask)
        self._dst = int(dst.network_address)
        self._dmask = int(dst.netmask)
        self._s, self._w = (12, 4) if self.family == 4 else (8, 16)
        self._d = self._s + self._w
        self.any = src.prefixlen == 0 and dst.prefixlen == 0

    def match(self, pkt: bytes) -> bool:
        if self.any:
            return True
        s = int.from_bytes(pkt[self._s:self._d], "big")
        d = int.from_bytes(pkt[self._d:self._d + self._w], "big")
        return (s & self._smask) == self._src and (d & self._dmask) == self._dst


def prepare_outbound(pkt: bytes, mtu: int, mss: int) -> bytes | list[bytes]:
    """Outbound inner processing: MSS clamp, clear DF, fragment when > ``mtu``.

    Returns the packet, or a list of fragments when it had to be fragmented."""
    if mss:
        pkt = clamp_mss(pkt, mss)
    if pkt[6] & 0x40:
        pkt = clear_df(pkt)
    if len(pkt) > mtu:
        return fragment(pkt, mtu)
    return pkt
