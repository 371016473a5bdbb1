"""The seam between the daemon and an IKE engine, whichever IKE version it speaks.

Both engines (IKEv1: :class:`cgwd.ike.v1.IkePeer`, IKEv2: :class:`cgwd.ike.v2.peer.Ikev2Peer`) are sans-IO
and implement :class:`IkeEngine`: inputs take bytes and ``now`` (monotonic seconds);
outputs are polled (``datagrams_to_send``, ``next_event``, ``get_timer``). The asyncio
adapter (:class:`cgwd.ike.endpoint.IkeEndpoint`) and the daemon's tunnel drive an engine
through this interface only: no ``getattr`` probing, no version checks outside the engine.

Contract of the timer: ``get_timer()`` returns the earliest deadline of the engine's one
schedule, or None. After ``handle_timer(now)`` the next ``get_timer()`` is None or later
than ``now`` (an engine never asks to be woken for work it will not do).
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

from .events import Datagram, IkeEvent


class ChildState(str, enum.Enum):
    """What an IPsec/Child SA pair is to the engine that negotiated it."""

    INSTALLED = "installed"  # carries traffic (or will, once the peer uses it)
    REKEYED = "rekeyed"  # replaced by a newer pair, or lost a rekey collision: receive only


@runtime_checkable
class IkeEngineConfig(Protocol):
    local_address: str
    remote_address: str


@runtime_checkable
class IkeEngine(Protocol):
    """One tunnel's IKE state (one remote address), either IKE version."""

    name: str
    version: int  # 1 or 2
    config: IkeEngineConfig
    counters: dict[str, int]
    local_port: int
    remote_port: int

    def start(self, now: float) -> None:
        """Begin (or, as a responder-only tunnel, wait for) negotiation."""

    def stop(self, now: float) -> None:
        """Delete every SA at the peer and forget them (IpsecSaDown/Phase1Down follow)."""

    def receive_datagram(self, data: bytes, remote: tuple[str, int], local_port: int, now: float) -> None:
        """One IKE message (without the non-ESP marker). Never raises: bad input is a counted drop."""

    def handle_timer(self, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def datagrams_to_send(self) -> list[Datagram]: ...

    def next_event(self) -> IkeEvent | None: ...

    def rekey_ipsec(self, now: float) -> None:
        """Operator: a new IPsec/Child SA pair now (make-before-break)."""

    def rekey_ike(self, now: float) -> None:
        """Operator: a new ISAKMP/IKE SA now."""

    def sa_expiring(self, spi_in: int, hard: bool, now: float) -> None:
        """The data path says a pair reached a soft (rekey now) or hard (gone) limit."""

    def peer_alive(self, now: float) -> None:
        """Authenticated traffic from the peer arrived on the data path (liveness)."""

    def child_state(self, spi_in: int) -> ChildState | None: ...

    def reconfigure(self, config, now: float) -> None:
        """Take new timers (DPD, rekey margin and fuzz) from a config of the same identity;
        they apply from the next exchange or deadline. The caller restarts the engine for
        anything else."""

    def install_failed(self, spi_in: int, reason: str, now: float) -> None:
        """The data path refused the pair: delete it at the peer, retry later, say why in status."""

    def status(self) -> dict: ...
