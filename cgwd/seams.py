"""The typed seams between the daemon's rooms.

* :class:`cgwd.ike.engine.IkeEngine`: an IKE engine of either version (sans-IO).
* :class:`DataPath`: a tunnel's ESP data path (userspace TUN or kernel XFRM; see
  ``cgwd/esp/datapath.py`` for the factory and the contract's prose).
* :class:`TunnelPart`: the life cycle every per-tunnel part shares (IKE, data path, route
  source), after BIRD's protocols: ``start``, ``stop(reason)``, ``reconfigure(cfg)`` that
  applies a change in place or says a restart is needed, ``status()``.

The daemon and the tunnel code against these only: no ``getattr`` probing of a part.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .ike.engine import ChildState, IkeEngine
from .ipsec_sa import IpsecSaPair

__all__ = ["ChildState", "DataPath", "IkeEngine", "PartState", "Reconfigured", "TunnelPart"]


@runtime_checkable
class DataPath(Protocol):
    kind: str
    ifname: str
    #: True where ``install(pair, outbound=False)`` keeps sending on the older pair until
    #: the peer's first authenticated packet on the new one (or ``activate_outbound``).
    pending_outbound: bool

    async def open(self) -> None: ...

    def install(self, pair: IpsecSaPair, *, outbound: bool = True) -> None:
        """Add a pair (inbound valid at once). Raises on refusal; the message is the reason."""

    def activate_outbound(self, spi_in: int, why: str = "") -> bool: ...

    def expect_spi(self, spi_in: int, seconds: float) -> None:
        """The peer may send on ``spi_in`` for up to ``seconds`` before its pair is installed:
        hold those packets (bounded) and deliver them at install, or do nothing."""

    def remove(self, spi_in: int) -> None: ...

    def remove_all(self) -> None: ...

    def receive_esp(self, data: bytes, remote: tuple[str, int]) -> None: ...

    def stats(self) -> dict: ...

    def inbound_packets(self) -> dict[int, int]:
        """Packets received per inbound SPI (the per-second ESP liveness look)."""
        ...

    async def close(self) -> None: ...


class PartState(str, enum.Enum):
    """BIRD's protocol states: DOWN -> START -> UP -> STOP -> DOWN."""

    DOWN = "down"
    START = "start"
    UP = "up"
    STOP = "stop"


@dataclass(frozen=True)
class Reconfigured:
    """What ``reconfigure`` did: the settings applied in place, and the ones that need a
    restart of the part (empty: nothing left to do)."""

    applied: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()

    @property
    def needs_restart(self) -> bool:
        return bool(self.restart)

    def __add__(self, other: "Reconfigured") -> "Reconfigured":
        return Reconfigured(self.applied + other.applied, self.restart + other.restart)


class TunnelPart(Protocol):
    """One per-tunnel part's life cycle (IKE peer, data path, route source)."""

    @property
    def state(self) -> PartState: ...

    async def start(self) -> None: ...

    async def stop(self, reason: str) -> None: ...

    def reconfigure(self, cfg, changed: frozenset[str]) -> Reconfigured:
        """Apply what of ``changed`` (TunnelConfig field names) this part can apply in place;
        return the rest it needs a restart for. Fields it does not use are not its concern."""

    def status(self) -> dict: ...
