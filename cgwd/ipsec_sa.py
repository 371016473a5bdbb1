"""The contract between the IKE engine (producer) and the ESP data paths (consumers).

The IKE engine emits an :class:`IpsecSaPair` for every IPsec SA pair that quick mode
negotiates; the daemon hands it to the data path of the tunnel (userspace or kernel XFRM).
Keys are raw bytes. For AES-GCM the encryption key carries the 4-byte salt at its end
(RFC 4106 section 8.1: KEYMAT = key || salt), exactly as KEYMAT is cut for it.
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


def is_aead(encryption: str) -> bool:
    return encryption.endswith("gcm16")


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
    # Outer addresses of the tunnel (the IKE peers' addresses as seen on the wire).
    local_address: str = "0.0.0.0"
    remote_address: str = "0.0.0.0"
    # UDP encapsulation (RFC 3948) when NAT-T is in use: ports of the outer UDP header.
    udp_encap: bool = False
    local_port: int = 4500
    remote_port: int = 4500
    # Traffic selectors (AWS: 0.0.0.0/0 both ways).
    local_ts: ipaddress.IPv4Network = ipaddress.IPv4Network("0.0.0.0/0")
    remote_ts: ipaddress.IPv4Network = ipaddress.IPv4Network("0.0.0.0/0")
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

    def describe(self) -> str:
        """Secret-free one-line description for logs and status."""
        alg = self.encryption if self.integrity is None else f"{self.encryption}-{self.integrity}"
        encap = " udp-encap" if self.udp_encap else ""
        return f"esp spi_in=0x{self.spi_in:08x} spi_out=0x{self.spi_out:08x} {alg}{encap}"
