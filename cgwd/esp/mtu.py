"""Tunnel MTU and TCP MSS from the negotiated ESP transform and encapsulation.

An inner packet of ``n`` bytes leaves as one outer packet of

    outer IP header (20 IPv4 / 40 IPv6) + UDP header (8, NAT-T only) + ESP header (8)
    + IV (16 CBC / 8 GCM) + n + padding + pad length + next header (n + 2 rounded up to
    the cipher block: 16 CBC / 4 GCM) + ICV (12/16/24/32 HMAC, 16 GCM)

bytes. The tunnel MTU is the largest ``n`` whose outer packet fits the outside link
(1500), so that nothing is fragmented after encryption. For an IPv4 outside this gives
AWS's table: GCM 1446 (1438 with NAT-T), CBC with SHA-1 or SHA2-256 1438 (1422),
CBC with SHA2-512 1422 (1406). The TCP MSS is the MTU minus the inner IP and TCP headers:
40 bytes for IPv4, 60 for IPv6 (AWS's IPv6 MSS is 20 bytes below the IPv4 one).
"""

from __future__ import annotations

from cgwd.esp.sa import algorithm_spec
from cgwd.ipsec_sa import ENCRYPTION_ALGORITHMS, INTEGRITY_ALGORITHMS, IpsecSaPair, is_aead

LINK_MTU = 1500
OUTER_IP_HEADER = {4: 20, 6: 40}
UDP_HEADER = 8
ESP_HEADER = 8
TCP_IP_HEADERS = {4: 40, 6: 60}  # inner IP header + TCP header, without options
IPV6_MIN_MTU = 1280


def esp_packet_size(inner_len: int, encryption: str, integrity: str | None) -> int:
    """Bytes of the ESP packet (SPI .. ICV) carrying ``inner_len`` bytes."""
    a = algorithm_spec(encryption, integrity)
    body = inner_len + 2
    body += -body % a.block
    return ESP_HEADER + a.iv_bytes + body + a.icv_bytes


def outer_packet_size(inner_len: int, encryption: str, integrity: str | None, *, udp_encap: bool,
                      outer_family: int = 4) -> int:
    """Bytes on the outside link for one inner packet of ``inner_len`` bytes."""
    return (OUTER_IP_HEADER[outer_family] + (UDP_HEADER if udp_encap else 0)
            + esp_packet_size(inner_len, encryption, integrity))


def max_inner(encryption: str, integrity: str | None, *, udp_encap: bool, outer_family: int = 4,
              link_mtu: int = LINK_MTU) -> int:
    """The largest inner packet whose outer packet fits ``link_mtu``."""
    a = algorithm_spec(encryption, integrity)
    room = link_mtu - OUTER_IP_HEADER[outer_family] - (UDP_HEADER if udp_encap else 0) \
        - ESP_HEADER - a.iv_bytes - a.icv_bytes
    return room - room % a.block - 2


def tunnel_mtu(pair: IpsecSaPair, link_mtu: int = LINK_MTU) -> int:
    """The tunnel MTU for ``pair`` (its algorithms, encapsulation and outer family)."""
    return max_inner(pair.encryption, pair.integrity, udp_encap=pair.udp_encap,
                     outer_family=pair.outer_family, link_mtu=link_mtu)


def transforms(encryption=ENCRYPTION_ALGORITHMS, integrity=INTEGRITY_ALGORITHMS):
    """Every (encryption, integrity) combination among the given names."""
    for enc in encryption:
        if is_aead(enc):
            yield enc, None
        else:
            for integ in integrity:
                yield enc, integ


def conservative_mtu(outer_family: int = 4, encryption=ENCRYPTION_ALGORITHMS,
                     integrity=INTEGRITY_ALGORITHMS, link_mtu: int = LINK_MTU) -> int:
    """An MTU that fits whatever is negotiated later (the interface's MTU before the first
    SA pair): the smallest over the given transforms, with NAT-T."""
    return min(max_inner(e, i, udp_encap=True, outer_family=outer_family, link_mtu=link_mtu)
               for e, i in transforms(encryption, integrity))


def mss_for(mtu: int, inner_family: int = 4) -> int:
    """TCP MSS that fills but does not exceed ``mtu`` (no TCP or IP options)."""
    return mtu - TCP_IP_HEADERS[inner_family]
