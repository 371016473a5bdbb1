"""The contract between the IKE engine (producer) and the ESP data paths (consumers).

The IKE engine emits an :class:`IpsecSaPair` for every IPsec SA pair that quick mode
negotiates; the daemon hands it to the data path of the tunnel (userspace or kernel XFRM).
Keys are raw bytes. For AES-GCM the encryption key carries the 4-byte salt at its end
(RFC 4106 section 8.1: KEYMAT = key || salt), exactly as KEYMAT is cut for it.

Both address families, in all four combinations: the outer addresses
(``local_address``/``remote_address``) are IPv4 or IPv6 (both the same family), the
traffic selectors (``local_ts``/``remote_ts``) are IPv4 or IPv6 networks (both the same
family; AWS: ``0.0.0.0/0`` or ``::/0``).

A data path says what it can install with :class:`EspCapabilities` (``capabilities()``),
so that IKE offers and accepts only that.

The UDP encapsulation constants (RFC 3948; Linux ``UDP_ENCAP``) live here, once, for the
IKE endpoint and the kernel data path.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

# Algorithm names used across the project (status output, config, data paths).
ENCRYPTION_ALGORITHMS = ("aes128", "aes256", "aes128gcm16", "aes256gcm16")
INTEGRITY_ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")  # HMAC-*-96/128/192/256 for ESP

# Key length in bytes (without GCM salt) and ICV length in bytes.
ENC_KEY_BYTES = {"aes128": 16, "aes256": 32, "aes128gcm16": 16, "aes256gcm16": 32}
GCM_SALT_BYTES = 4
INTEG_KEY_BYTES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
INTEG_ICV_BYTES = {"sha1": 12, "sha256": 16, "sha384": 24, "sha512": 32}

# SPIs 1..255 are reserved by IANA (RFC 4303 2.1); 0 means "no SA".
SPI_MIN = 256
SPI_MAX = 2**32 - 1

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# UDP ports and ESP-in-UDP encapsulation (RFC 3947/3948) and the Linux socket option that
# hands ESP-in-UDP arriving on a UDP socket to the kernel's XFRM: the one definition IKE and
# both data paths use.
IKE_PORT = 500
NATT_PORT = 4500
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # precedes IKE on the NAT-T port (ESP never starts with it)
SOL_UDP = 17
UDP_ENCAP = 100  # setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP): linux/udp.h
UDP_ENCAP_ESPINUDP = 2


def is_aead(encryption: str) -> bool:
    return encryption.endswith("gcm16")


def ip_family(address: str) -> int:
    """4 or 6 for an address in text form (ValueError when it is none)."""
    return ipaddress.ip_address(address).version


@dataclass(frozen=True)
class IpsecSaPair:
    """One negotiated ESP tunnel-mode SA pair (inbound + outbound)."""

    spi_in: int  # SPI we chose: the peer sends with it, we receive with it
    spi_out: int  # SPI the peer chose: we send with it
    encryption: str  # one of ENCRYPTION_ALGORITHMS
    integrity: str | None  # one of INTEGRITY_ALGORITHMS, None for AEAD
    enc_key_in: bytes = field(repr=False)
    enc_key_out: bytes = field(repr=False)
    integ_key_in: bytes = field(repr=False, default=b"")
    integ_key_out: bytes = field(repr=False, default=b"")
    # Outer addresses of the tunnel (the IKE peers' addresses as seen on the wire), both
    # IPv4 or both IPv6.
    local_address: str = "0.0.0.0"
    remote_address: str = "0.0.0.0"
    # UDP encapsulation (RFC 3948) when NAT-T is in use: ports of the outer UDP header.
    udp_encap: bool = False
    local_port: int = NATT_PORT
    remote_port: int = NATT_PORT
    # Traffic selectors (AWS: 0.0.0.0/0 or ::/0 both ways), both of one family.
    local_ts: IpNetwork = ipaddress.IPv4Network("0.0.0.0/0")
    remote_ts: IpNetwork = ipaddress.IPv4Network("0.0.0.0/0")
    lifetime_seconds: int = 3600
    lifetime_kilobytes: int = 0  # 0: no volume limit
    pfs_group: int | None = None
    # When this pair replaces an older one (rekey), the older pair's inbound SPI.
    replaces_spi_in: int | None = None

    def __post_init__(self) -> None:
        if self.encryption not in ENCRYPTION_ALGORITHMS:
            raise ValueError(f"unknown ESP encryption {self.encryption!r}")
        if is_aead(self.encryption):
            if self.integrity is not None:
                raise ValueError("AES-GCM takes no separate integrity algorithm")
            want = ENC_KEY_BYTES[self.encryption] + GCM_SALT_BYTES
        else:
            if self.integrity not in INTEGRITY_ALGORITHMS:
                raise ValueError(f"unknown ESP integrity {self.integrity!r}")
            want = ENC_KEY_BYTES[self.encryption]
            ik = INTEG_KEY_BYTES[self.integrity]
            if len(self.integ_key_in) != ik or len(self.integ_key_out) != ik:
                raise ValueError("integrity key length does not match the algorithm")
        if len(self.enc_key_in) != want or len(self.enc_key_out) != want:
            raise ValueError("encryption key length does not match the algorithm")
        try:
            outer = {ip_family(self.local_address), ip_family(self.remote_address)}
        except ValueError:
            raise ValueError(f"outer addresses {self.local_address!r}, {self.remote_address!r} "
                             "are not IP addresses") from None
        if len(outer) != 1:
            raise ValueError("outer addresses of one SA pair must be of one family")
        # selectors given as text (or as networks with host bits) are normalised
        for name in ("local_ts", "remote_ts"):
            v = getattr(self, name)
            if not isinstance(v, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
                try:
                    object.__setattr__(self, name, ipaddress.ip_network(v, strict=False))
                except (TypeError, ValueError):
                    raise ValueError(f"{name} {v!r} is not an IP network") from None
        if self.local_ts.version != self.remote_ts.version:
            raise ValueError("traffic selectors of one SA pair must be of one family")

    @property
    def outer_family(self) -> int:
        """4 or 6: the family of the outer (ESP) packets."""
        return ip_family(self.local_address)

    @property
    def inner_family(self) -> int:
        """4 or 6: the family of the tunnelled packets (from the traffic selectors)."""
        return self.local_ts.version

    def describe(self) -> str:
        """Secret-free one-line description for logs and status."""
        alg = self.encryption if self.integrity is None else f"{self.encryption}-{self.integrity}"
        encap = " udp-encap" if self.udp_encap else ""
        fam = "" if (self.outer_family, self.inner_family) == (4, 4) else \
            f" ipv{self.inner_family}-in-ipv{self.outer_family}"
        return f"esp spi_in=0x{self.spi_in:08x} spi_out=0x{self.spi_out:08x} {alg}{encap}{fam}"


@dataclass(frozen=True)
class EspCapabilities:
    """What a data path can install: IKE offers and accepts only these.

    ``encryption``/``integrity`` hold names of ENCRYPTION_ALGORITHMS/INTEGRITY_ALGORITHMS;
    ``outer_families``/``inner_families`` hold 4 and/or 6; ``udp_encap`` and ``raw_esp``
    say whether ESP-in-UDP (NAT-T) and plain IP protocol 50 work.
    """

    encryption: frozenset[str]
    integrity: frozenset[str]
    outer_families: frozenset[int] = frozenset({4, 6})
    inner_families: frozenset[int] = frozenset({4, 6})
    udp_encap: bool = True
    raw_esp: bool = True
    why: str = ""  # plain words: how this was found out (e.g. "kernel probe: no AES-GCM")

    def esp_allowed(self) -> frozenset[str]:
        """Every algorithm name that may be offered (encryption and integrity together),
        the form of ``IkePeerConfig.esp_allowed``."""
        return frozenset(self.encryption) | frozenset(self.integrity)

    def supports(self, encryption: str, integrity: str | None) -> bool:
        if encryption not in self.encryption:
            return False
        return is_aead(encryption) or integrity in self.integrity

    def refusal(self, pair: IpsecSaPair) -> tuple[str, str] | None:
        """(reason, detail) when ``pair`` cannot be installed, else None."""
        if not self.supports(pair.encryption, pair.integrity):
            alg = pair.encryption if pair.integrity is None else f"{pair.encryption}-{pair.integrity}"
            return "unsupported_algorithm", f"this data path cannot run ESP {alg}" + (
                f" ({self.why})" if self.why else "")
        if pair.outer_family not in self.outer_families:
            return "unsupported_family", f"this data path cannot send ESP over IPv{pair.outer_family}"
        if pair.inner_family not in self.inner_families:
            return "unsupported_family", f"this data path cannot carry IPv{pair.inner_family} inside"
        if pair.udp_encap and not self.udp_encap:
            return "unsupported_encap", "this data path cannot send UDP-encapsulated ESP"
        if not pair.udp_encap and not self.raw_esp:
            return "unsupported_encap", "this data path cannot send plain ESP (IP protocol 50)"
        return None


ALL_CAPABILITIES = EspCapabilities(frozenset(ENCRYPTION_ALGORITHMS), frozenset(INTEGRITY_ALGORITHMS))
