"""Inner (tunnelled) IPv6 packets: checks, TCP MSS clamping, ICMPv6 Packet Too Big.

IPv6 routers do not fragment (RFC 8200 5): a packet too big for the tunnel is answered
with an ICMPv6 Packet Too Big carrying the tunnel MTU (RFC 4443 3.2, RFC 8201), rate
limited (RFC 4443 2.4 f), never dropped in silence. All functions take and return
``bytes`` and allocate only when they change a packet.
"""

from __future__ import annotations

import struct

from cgwd.esp.inner import InnerDrop, checksum, csum_adjust
from cgwd.esp.mtu import IPV6_MIN_MTU

NH_HOP_BY_HOP = 0
NH_TCP = 6
NH_ROUTING = 43
NH_FRAGMENT = 44
NH_ICMPV6 = 58
NH_DEST_OPTS = 60
_EXT_HEADERS = (NH_HOP_BY_HOP, NH_ROUTING, NH_DEST_OPTS)

ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_ERROR_MAX = 127  # types 0..127 are errors (RFC 4443 2.1)

_H = struct.Struct(">H")


def validate_ipv6(pkt: bytes) -> bytes:
    """Check the fixed header of an IPv6 packet; trims bytes beyond the payload length
    (TFC padding). Raises :class:`InnerDrop`. Jumbograms (payload length 0 with a
    hop-by-hop header) are refused: nothing that large fits a tunnel."""
    n = len(pkt)
    if n < 40 or pkt[0] >> 4 != 6:
        raise InnerDrop("inner_not_ipv6")
    total = 40 + ((pkt[4] << 8) | pkt[5])
    if total > n or total == 40 and pkt[6] == NH_HOP_BY_HOP and n > 40:
        raise InnerDrop("inner_malformed")
    if total < n:
        pkt = pkt[:total]
    return pkt


def is_multicast_dst(pkt: bytes) -> bool:
    return pkt[24] == 0xFF


def upper_layer(pkt: bytes) -> tuple[int, int] | None:
    """(protocol, offset) of the upper-layer header behind the extension headers, or None
    for a non-first fragment or a chain that does not fit the packet."""
    nh = pkt[6]
    off = 40
    n = len(pkt)
    while nh in _EXT_HEADERS or nh == NH_FRAGMENT:
        if off + 8 > n:
            return None
        if nh == NH_FRAGMENT:
            if ((pkt[off + 2] << 8) | pkt[off + 3]) & 0xFFF8:  # offset != 0: not the first
                return None
            nh, off = pkt[off], off + 8
        else:
            nh, off = pkt[off], off + (pkt[off + 1] + 1) * 8
    if off > n:
        return None
    return nh, off


def clamp_mss6(pkt: bytes, mss: int) -> bytes:
    """Lower the MSS option of a TCP SYN carried in IPv6 to ``mss``; the TCP checksum is
    fixed incrementally (the pseudo-header does not change). Anything else is returned
    unchanged."""
    ul = upper_layer(pkt)
    if ul is None or ul[0] != NH_TCP:
        return pkt
    t = ul[1]
    n = len(pkt)
    if n < t + 20 or not pkt[t + 13] & 0x02:
        return pkt
    end = t + (pkt[t + 12] >> 4) * 4
    if end < t + 20 or end > n:
        return pkt
    i = t + 20
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
            b[i + 2:i + 4] = _H.pack(mss)
            ck = (b[t + 16] << 8) | b[t + 17]
            if (i + 2 - t) & 1:  # odd offset: the field enters the sum byte-swapped
                old_w, new_w = ((old & 0xFF) << 8) | (old >> 8), ((mss & 0xFF) << 8) | (mss >> 8)
            else:
                old_w, new_w = old, mss
            b[t + 16:t + 18] = _H.pack(csum_adjust(ck, old_w, new_w))
            return bytes(b)
        i += olen
    return pkt


def _icmp6_checksum(src: bytes, dst: bytes, msg: bytes) -> int:
    pseudo = src + dst + struct.pack(">I3xB", len(msg), NH_ICMPV6)
    return checksum(pseudo + msg)


def packet_too_big(pkt: bytes, mtu: int, source: bytes) -> bytes | None:
    """The ICMPv6 Packet Too Big (type 2, code 0) answering ``pkt`` with ``mtu``, from
    ``source`` (16 bytes: our address on the tunnel) to the packet's source, carrying as
    much of ``pkt`` as fits in the IPv6 minimum MTU. None where RFC 4443 2.4 (e) forbids
    an answer: the packet is itself an ICMPv6 error, or its source is unspecified or
    multicast."""
    if len(pkt) < 40 or len(source) != 16:
        return None
    dst = pkt[8:24]
    if dst[0] == 0xFF or dst == bytes(16):
        return None
    ul = upper_layer(pkt)
    if ul is not None and ul[0] == NH_ICMPV6 and ul[1] < len(pkt) and pkt[ul[1]] <= ICMPV6_ERROR_MAX:
        return None
    body = pkt[:IPV6_MIN_MTU - 40 - 8]
    msg = bytearray(struct.pack(">BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + body)
    msg[2:4] = _H.pack(_icmp6_checksum(source, dst, bytes(msg)))
    hdr = struct.pack(">IHBB", 0x60000000, len(msg), NH_ICMPV6, 255) + source + dst
    return hdr + bytes(msg)


class TokenBucket:
    """Rate limit (``rate`` per second, bursts of ``burst``) on an injected clock."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.at: float | None = None

    def take(self, now: float) -> bool:
        if self.at is not None:
            self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False
