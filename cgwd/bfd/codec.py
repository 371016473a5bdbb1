"""The BFD control packet (RFC 5880 4.1), mandatory section only (no authentication).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
    |                       My Discriminator                        |
    |                      Your Discriminator                       |
    |                    Desired Min TX Interval                    |
    |                   Required Min RX Interval                    |
    |                 Required Min Echo RX Interval                 |

Intervals are microseconds on the wire. :func:`decode` applies the checks of RFC 5880 6.8.6
that need only the packet; anything else is :class:`BfdDrop` with a reason from
:data:`DROP_REASONS` (the receiver counts it). It never raises anything else.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 1
LENGTH = 24                  # no authentication section
_FMT = struct.Struct("!BBBBIIIII")


class BfdState(enum.IntEnum):
    """bfd.SessionState (RFC 5880 4.1 "Sta")."""

    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3

    @property
    def label(self) -> str:
        return {0: "AdminDown", 1: "Down", 2: "Init", 3: "Up"}[self.value]


class Diag(enum.IntEnum):
    """bfd.LocalDiag (RFC 5880 4.1)."""

    NONE = 0
    DETECT_EXPIRED = 1           # Control Detection Time Expired
    ECHO_FAILED = 2
    NEIGHBOR_DOWN = 3            # Neighbor Signaled Session Down
    FORWARDING_RESET = 4
    PATH_DOWN = 5
    CONCAT_PATH_DOWN = 6
    ADMIN_DOWN = 7
    REVERSE_CONCAT_PATH_DOWN = 8

    @property
    def text(self) -> str:
        return _DIAG_TEXT.get(self.value, f"diag {self.value}")


_DIAG_TEXT = {0: "no diagnostic", 1: "control detection time expired", 2: "echo function failed",
              3: "neighbor signaled session down", 4: "forwarding plane reset", 5: "path down",
              6: "concatenated path down", 7: "administratively down", 8: "reverse concatenated path down"}


def diag_text(code: int) -> str:
    try:
        return Diag(code).text
    except ValueError:
        return f"diag {code} (reserved)"


#: why a received packet was dropped (the counters' names; RFC 5880 6.8.6 order, then ours)
DROP_REASONS = (
    "truncated",                  # shorter than the 24-byte mandatory section
    "version",                    # version is not 1
    "length",                     # Length < 24 (26 with A), or more than the datagram
    "detect_mult_zero",
    "multipoint",                 # the M bit
    "my_discriminator_zero",
    "your_discriminator_zero",    # Your Discriminator 0 while the state is not Down/AdminDown
    "auth_not_configured",        # the A bit: authentication is not supported
    "poll_and_final",             # P and F both set (RFC 5880 4.1: MUST NOT)
    "your_discriminator_unknown",  # no session has it (transport) / not ours (session)
    "ttl",                        # TTL / hop limit not 255 (RFC 5881 5)
    "no_session",                 # Your Discriminator 0 from an address with no session
    "admin_down",                 # received while our session is AdminDown (6.8.6: discard)
)


class BfdDrop(ValueError):
    """A received packet that must be discarded; ``reason`` is one of :data:`DROP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in DROP_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ControlPacket:
    state: BfdState
    my_disc: int
    your_disc: int = 0
    diag: int = 0                    # 0-31 (codes above 8 are reserved but carried)
    detect_mult: int = 3
    desired_min_tx: int = 1_000_000  # microseconds
    required_min_rx: int = 1_000_000
    required_min_echo_rx: int = 0
    poll: bool = False
    final: bool = False
    cpi: bool = False                # C: Control Plane Independent
    auth: bool = False               # A
    demand: bool = False             # D
    multipoint: bool = False         # M
    version: int = VERSION
    length: int = LENGTH

    def encode(self) -> bytes:
        return encode(self)


def encode(p: ControlPacket) -> bytes:
    flags = ((int(p.state) & 3) << 6 | p.poll << 5 | p.final << 4 | p.cpi << 3 | p.auth << 2
             | p.demand << 1 | p.multipoint)
    return _FMT.pack((p.version & 7) << 5 | (p.diag & 31), flags, p.detect_mult & 0xFF, p.length & 0xFF,
                     p.my_disc & 0xFFFFFFFF, p.your_disc & 0xFFFFFFFF, p.desired_min_tx & 0xFFFFFFFF,
                     p.required_min_rx & 0xFFFFFFFF, p.required_min_echo_rx & 0xFFFFFFFF)


def decode(data: bytes) -> ControlPacket:
    """A received datagram's packet, or :class:`BfdDrop` (RFC 5880 6.8.6, the packet-only checks)."""
    if len(data) < LENGTH:
        raise BfdDrop("truncated", f"{len(data)} bytes")
    b0, flags, mult, length, my, your, tx, rx, echo = _FMT.unpack_from(data)
    version = b0 >> 5
    if version != VERSION:
        raise BfdDrop("version", f"version {version}")
    auth = bool(flags & 0x04)
    if length < (LENGTH + 2 if auth else LENGTH) or length > len(data):
        raise BfdDrop("length", f"Length {length} in a {len(data)}-byte datagram")
    if mult == 0:
        raise BfdDrop("detect_mult_zero")
    if flags & 0x01:
        raise BfdDrop("multipoint")
    if my == 0:
        raise BfdDrop("my_discriminator_zero")
    state = BfdState(flags >> 6)
    if your == 0 and state not in (BfdState.DOWN, BfdState.ADMIN_DOWN):
        raise BfdDrop("your_discriminator_zero", f"in state {state.label}")
    if auth:
        raise BfdDrop("auth_not_configured")
    if flags & 0x30 == 0x30:
        raise BfdDrop("poll_and_final")
    return ControlPacket(state=state, my_disc=my, your_disc=your, diag=b0 & 31, detect_mult=mult,
                         desired_min_tx=tx, required_min_rx=rx, required_min_echo_rx=echo,
                         poll=bool(flags & 0x20), final=bool(flags & 0x10), cpi=bool(flags & 0x08),
                         auth=False, demand=bool(flags & 0x02), multipoint=False, version=version,
                         length=length)
