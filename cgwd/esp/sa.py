"""One ESP SA model for both data paths (userspace and kernel XFRM).

An :class:`~cgwd.ipsec_sa.IpsecSaPair` from the IKE engine becomes an :class:`SaPair`:
an inbound and an outbound :class:`SecurityAssociation` with algorithm parameters,
keys, sequence numbers / anti-replay window, lifetimes and counters.  The userspace
path runs packets through it (see :mod:`cgwd.esp.packet`); the kernel path translates
it into XFRM states (see :mod:`cgwd.esp.xfrm`).

Nothing here logs or prints keys; ``repr`` of the objects hides them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cgwd.ipsec_sa import (
    ENC_KEY_BYTES,
    GCM_SALT_BYTES,
    INTEG_ICV_BYTES,
    IpsecSaPair,
    is_aead,
)

# Outbound sequence numbers (32 bit, no ESN): ask for a rekey well before the end,
# stop hard at the last usable number (RFC 4303 3.3.3: never cycle).
SEQ_SOFT_LIMIT = 2**32 - 2**24
SEQ_HARD_LIMIT = 2**32 - 1

REPLAY_WINDOW_MIN = 64
REPLAY_WINDOW_MAX = 2048
REPLAY_WINDOW_DEFAULT = 1024

# Rekey margin used for the soft time limit when the IKE engine does not say
# otherwise (AWS: rekey margin 540 s).
DEFAULT_SOFT_MARGIN_SECONDS = 540


@dataclass(frozen=True)
class AlgorithmSpec:
    """Wire parameters of an ESP transform."""

    encryption: str  # aes128 | aes256 | aes128gcm16 | aes256gcm16
    integrity: str | None  # sha1 | sha256 | sha384 | sha512 | None (AEAD)
    aead: bool
    key_bytes: int  # cipher key length without the GCM salt
    iv_bytes: int  # 16 for CBC, 8 for GCM (RFC 4106)
    block: int  # padding alignment: 16 for CBC, 4 for GCM
    icv_bytes: int  # 12/16/24/32 for HMAC, 16 for GCM-16

    @property
    def overhead_max(self) -> int:
        """Worst-case ESP overhead (header, IV, padding, trailer, ICV)."""
        return 8 + self.iv_bytes + (self.block - 1) + 2 + self.icv_bytes


def algorithm_spec(encryption: str, integrity: str | None) -> AlgorithmSpec:
    if encryption not in ENC_KEY_BYTES:
        raise ValueError(f"unknown ESP encryption {encryption!r}")
    if is_aead(encryption):
        if integrity is not None:
            raise ValueError("AES-GCM takes no separate integrity algorithm")
        return AlgorithmSpec(encryption, None, True, ENC_KEY_BYTES[encryption], 8, 4, 16)
    if integrity not in INTEG_ICV_BYTES:
        raise ValueError(f"unknown ESP integrity {integrity!r}")
    return AlgorithmSpec(
        encryption, integrity, False, ENC_KEY_BYTES[encryption], 16, 16, INTEG_ICV_BYTES[integrity]
    )


class ReplayWindow:
    """RFC 4303 anti-replay window (appendix A2 semantics) as a bitmap in an int.

    Bit ``i`` of ``bitmap`` set means sequence number ``top - i`` was received.
    ``check`` is called before the ICV is verified (cheap rejection), ``update`` only
    after the packet authenticated.
    """

    __slots__ = ("size", "top", "bitmap", "_mask")

    def __init__(self, size: int = REPLAY_WINDOW_DEFAULT) -> None:
        if not REPLAY_WINDOW_MIN <= size <= REPLAY_WINDOW_MAX:
            raise ValueError(
                f"replay window must be {REPLAY_WINDOW_MIN}..{REPLAY_WINDOW_MAX}, got {size}"
            )
        self.size = size
        self.top = 0
        self.bitmap = 0
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> str | None:
        """None when ``seq`` may be accepted, else the drop reason."""
        if seq == 0:
            return "seq_zero"
        top = self.top
        if seq > top:
            return None
        diff = top - seq
        if diff >= self.size:
            return "replay_too_old"
        if (self.bitmap >> diff) & 1:
            return "replay_duplicate"
        return None

    def update(self, seq: int) -> None:
        top = self.top
        if seq > top:
            shift = seq - top
            if shift >= self.size:
                self.bitmap = 1
            else:
                self.bitmap = ((self.bitmap << shift) | 1) & self._mask
            self.top = seq
        else:
            self.bitmap |= 1 << (top - seq)

    def __repr__(self) -> str:
        return f"ReplayWindow(size={self.size}, top={self.top})"


@dataclass
class Lifetime:
    """Soft and hard limits; 0 means no limit of that kind.

    The packet limits stand for the 32-bit sequence number (no ESN): the kernel path sets
    them in the XFRM lifetime (its expire events then say when the outbound sequence
    number nears its end), the userspace path checks the sequence number itself."""

    soft_seconds: float = 0
    hard_seconds: float = 0
    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = SEQ_SOFT_LIMIT
    hard_packets: int = SEQ_HARD_LIMIT

    @classmethod
    def for_pair(cls, pair: IpsecSaPair, soft_margin: float = DEFAULT_SOFT_MARGIN_SECONDS) -> "Lifetime":
        """Hard limits from the negotiated lifetimes; soft = hard minus the rekey
        margin (at most a fifth of the lifetime), bytes soft at 90 %."""
        hard_s = float(pair.lifetime_seconds or 0)
        soft_s = max(hard_s - min(soft_margin, hard_s / 5), 0.0) if hard_s else 0.0
        hard_b = int(pair.lifetime_kilobytes or 0) * 1024
        soft_b = hard_b * 9 // 10
        return cls(soft_s, hard_s, soft_b, hard_b)


class SaCounters:
    __slots__ = ("packets", "bytes", "replay_drops", "auth_failures", "drops")

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0  # payload (inner packet) bytes
        self.replay_drops = 0
        self.auth_failures = 0
        self.drops: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


class SecurityAssociation:
    """One direction of an ESP SA (keys are held here; never logged)."""

    __slots__ = (
        "spi", "direction", "alg", "enc_key", "salt", "integ_key", "counters",
        "seq", "window", "replay_window_size",
    )

    def __init__(
        self,
        spi: int,
        direction: str,
        alg: AlgorithmSpec,
        enc_key_material: bytes,
        integ_key: bytes = b"",
        replay_window: int = REPLAY_WINDOW_DEFAULT,
    ) -> None:
        if direction not in ("in", "out"):
            raise ValueError("direction must be 'in' or 'out'")
        if not 0 < spi < 2**32 or spi < 256:
            raise ValueError(f"invalid SPI {spi:#x} (1..255 are reserved)")
        self.spi = spi
        self.direction = direction
        self.alg = alg
        if alg.aead:
            if len(enc_key_material) != alg.key_bytes + GCM_SALT_BYTES:
                raise ValueError("GCM key material must be key || 4-byte salt")
            self.enc_key = bytes(enc_key_material[:-GCM_SALT_BYTES])
            self.salt = bytes(enc_key_material[-GCM_SALT_BYTES:])
        else:
            if len(enc_key_material) != alg.key_bytes:
                raise ValueError("encryption key length does not match the algorithm")
            self.enc_key = bytes(enc_key_material)
            self.salt = b""
        self.integ_key = bytes(integ_key)
        self.counters = SaCounters()
        self.seq = 0  # outbound: last sequence number used
        self.replay_window_size = replay_window
        self.window = ReplayWindow(replay_window) if direction == "in" else None

    def __repr__(self) -> str:
        return (
            f"SecurityAssociation(spi=0x{self.spi:08x}, dir={self.direction}, "
            f"{self.alg.encryption}/{self.alg.integrity})"
        )


class SaPair:
    """Inbound + outbound SA built from an :class:`IpsecSaPair`, with lifetime state."""

    def __init__(
        self,
        pair: IpsecSaPair,
        *,
        replay_window: int = REPLAY_WINDOW_DEFAULT,
        lifetime: Lifetime | None = None,
        now: float | None = None,
        wall_now: float | None = None,
    ) -> None:
        self.pair = pair
        self.alg = algorithm_spec(pair.encryption, pair.integrity)
        self.inbound = SecurityAssociation(
            pair.spi_in, "in", self.alg, pair.enc_key_in, pair.integ_key_in, replay_window
        )
        self.outbound = SecurityAssociation(
            pair.spi_out, "out", self.alg, pair.enc_key_out, pair.integ_key_out, replay_window
        )
        self.lifetime = lifetime if lifetime is not None else Lifetime.for_pair(pair)
        self.created = time.monotonic() if now is None else now
        self.established_at = time.time() if wall_now is None else wall_now
        self.soft_fired = False
        self.hard_fired = False
        self.seq_exhausted_fired = False

    @property
    def spi_in(self) -> int:
        return self.pair.spi_in

    @property
    def spi_out(self) -> int:
        return self.pair.spi_out

    def check_lifetime(self, now: float) -> str | None:
        """'hard' / 'soft' when that limit is newly reached (each reported once)."""
        lt = self.lifetime
        used = max(self.inbound.counters.bytes, self.outbound.counters.bytes)
        if not self.hard_fired:
            if (lt.hard_seconds and now >= self.created + lt.hard_seconds) or (lt.hard_bytes and used >= lt.hard_bytes):
                self.hard_fired = True
                self.soft_fired = True
                return "hard"
        if not self.soft_fired:
            if (
                (lt.soft_seconds and now >= self.created + lt.soft_seconds)
                or (lt.soft_bytes and used >= lt.soft_bytes)
                or self.outbound.seq >= SEQ_SOFT_LIMIT
            ):
                self.soft_fired = True
                return "soft"
        return None

    def stats(self) -> dict:
        i, o = self.inbound.counters, self.outbound.counters
        drops: dict[str, int] = {}
        for d in (i.drops, o.drops):
            for k, v in d.items():
                drops[k] = drops.get(k, 0) + v
        return {
            "spi_in": self.spi_in,
            "spi_out": self.spi_out,
            "encryption": self.alg.encryption,
            "integrity": self.alg.integrity,
            "udp_encap": self.pair.udp_encap,
            "packets_in": i.packets,
            "packets_out": o.packets,
            "bytes_in": i.bytes,
            "bytes_out": o.bytes,
            "replay_drops": i.replay_drops,
            "auth_failures": i.auth_failures,
            "drops": drops,
            "established_at": self.established_at,
            "seq_out": self.outbound.seq,
            "replay_window": self.inbound.replay_window_size,
        }

    def __repr__(self) -> str:
        return f"SaPair({self.pair.describe()})"
