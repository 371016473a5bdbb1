"""NAT traversal state shared by both IKE versions (RFC 3947/3948 for IKEv1, RFC 7296 2.23).

Each IKE SA carries its own :class:`NatState`: what its NAT detection found and the ports its
messages use. The tunnel commits an SA's state (ports, encapsulation, keepalives) only once
that SA is authenticated, so an unauthenticated message can never move a tunnel; and a new SA
that finds no NAT turns encapsulation and keepalives off again.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from cgwd.ipsec_sa import IKE_PORT, NATT_PORT

KEEPALIVE_INTERVAL = 20.0  # seconds between NAT keepalives (RFC 3948 2.3) behind a NAT
KEEPALIVE = b"\xff"  # the one-octet NAT-keepalive packet


@dataclass
class NatState:
    """NAT detection of one IKE SA and the UDP ports its messages use."""

    local_port: int = IKE_PORT
    remote_port: int = IKE_PORT
    local_behind: bool = False
    peer_behind: bool = False
    method: str | None = None  # IKEv1: "rfc" | "draft"; IKEv2: "ikev2"; None: no NAT-T
    detected: bool = False  # NAT detection ran (both ends spoke NAT-T)

    @property
    def udp_encap(self) -> bool:
        """ESP goes UDP-encapsulated (RFC 3948) when either end is behind a NAT."""
        return self.local_behind or self.peer_behind

    @property
    def keepalives(self) -> bool:
        """We send NAT keepalives when we are the one behind the NAT."""
        return self.local_behind

    def float_to_natt(self) -> None:
        """Move to UDP 4500 (RFC 3947 4: once a NAT is detected, or as the peer did)."""
        self.local_port = NATT_PORT
        self.remote_port = NATT_PORT

    def copy(self) -> "NatState":
        return NatState(self.local_port, self.remote_port, self.local_behind, self.peer_behind, self.method,
                        self.detected)


def nat_detection_data(spi_i: bytes, spi_r: bytes, address: str, port: int) -> bytes:
    """What a NAT-D / NAT_DETECTION_*_IP hash covers: both SPIs (IKEv1 cookies), the address
    and the port (RFC 3947 3.2, RFC 7296 2.23); the caller hashes it with its SA's hash."""
    return spi_i + spi_r + ipaddress.ip_address(address).packed + struct.pack("!H", port)
