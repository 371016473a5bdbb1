"""Events emitted by the IKE engines (cgwd.ike.engine.IkeEngine; secret-free in repr)."""

from __future__ import annotations

from dataclasses import dataclass

from cgwd.ipsec_sa import IpsecSaPair


@dataclass(frozen=True)
class Datagram:
    """One UDP datagram to send.

    ``data`` is the IKE message *without* the 4-byte non-ESP marker: when ``local_port``
    is the NAT-T port the adapter prefixes it, unless ``raw`` is set (NAT keepalive
    ``b"\\xff"``, sent as is)."""

    data: bytes
    remote: tuple[str, int]
    local_port: int
    raw: bool = False


@dataclass(frozen=True)
class Phase1Up:
    algorithms: str


@dataclass(frozen=True)
class Phase1Down:
    reason: str


@dataclass(frozen=True)
class IpsecSaUp:
    """A new IPsec SA pair is ready. ``pair.replaces_spi_in`` names the pair it replaces
    (make-before-break: switch outbound traffic to the new pair; the old pair's
    IpsecSaDown follows a few seconds later). ``initiator``: we started the quick mode, so
    the peer installs the pair only when our last quick-mode message reaches it (a data
    path may keep sending on the older pair for a moment)."""

    pair: IpsecSaPair
    initiator: bool = False


@dataclass(frozen=True)
class IpsecSaDown:
    spi_in: int
    spi_out: int
    reason: str


@dataclass(frozen=True)
class PeerDead:
    pass


@dataclass(frozen=True)
class NatDetected:
    local_behind_nat: bool
    peer_behind_nat: bool


@dataclass(frozen=True)
class SpiPending:
    """An inbound SPI the peer may send on before its pair is installed, for up to
    ``seconds``: an IKEv1 responder's, between its quick-mode message 2 and the initiator's
    message 3. The initiator installs the pair when it receives message 2 and may send on it
    before its message 3 arrives (strongSwan does), so a data path that can (userspace) holds
    that SPI's first packets until the pair is installed instead of dropping them."""

    spi_in: int
    seconds: float


IkeEvent = Phase1Up | Phase1Down | IpsecSaUp | IpsecSaDown | PeerDead | NatDetected | SpiPending
