"""The tunnel's data-path part: the interface with the inside address and the SA pairs IKE
negotiated, installed with make-before-break."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from ..config import TunnelConfig
from ..esp.datapath import SaInstallError, make_datapath
from ..ike.engine import ChildState
from ..ipsec_sa import IpsecSaPair
from ..seams import DataPath, PartState, Reconfigured

log = logging.getLogger("cgwd")

OUTBOUND_GRACE = 1.0  # seconds a pair of our rekey waits for the peer (see install)


class InstallRefused(Exception):
    """The data path refused an SA pair: ``reason`` is one word for IKE and metrics
    (``SaInstallError.reason``: spi_reserved, unsupported_algorithm, ...), the message says
    it in plain words for status and the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class DatapathPart:
    def __init__(self, cfg: TunnelConfig, kind: str, *, send_udp, on_event: Callable[[object], None],
                 child_state: Callable[[int], ChildState | None], udp_socket=None) -> None:
        self.cfg = cfg
        self.kind = kind
        self._send_udp = send_udp
        self._udp_socket = udp_socket
        self._on_event = on_event
        self._child_state = child_state
        self.datapath: DataPath | None = None
        self.pairs: dict[int, IpsecSaPair] = {}
        self.udp_encap = False
        self._grace: dict[int, asyncio.TimerHandle] = {}
        self._esp_seen: dict[int, int] = {}
        self._state = PartState.DOWN

    @property
    def state(self) -> PartState:
        return self._state

    @property
    def name(self) -> str:
        return self.cfg.name

    async def start(self) -> None:
        c = self.cfg
        self._state = PartState.START
        self.datapath = make_datapath(
            self.kind, name=c.name, ifname=c.ifname, inside=c.inside_local, mtu=c.mtu, mss=c.mss,
            replay_window=c.replay_window, send_udp=self._send_udp, on_event=self._on_event,
            local_address=str(c.local_address), udp_socket=self._udp_socket)
        await self.datapath.open()
        self._state = PartState.UP

    async def stop(self, reason: str) -> None:
        self._state = PartState.STOP
        for h in self._grace.values():
            h.cancel()
        self._grace.clear()
        self.pairs.clear()
        if self.datapath is not None:
            await self.datapath.close()
        self._state = PartState.DOWN

    def reconfigure(self, cfg: TunnelConfig, changed: frozenset[str]) -> Reconfigured:
        """Nothing of the data path changes in place (interface, MTU, replay window: the
        config says restart)."""
        self.cfg = cfg
        return Reconfigured()

    # ------------------------------------------------------------------ SA pairs
    def install(self, pair: IpsecSaPair, *, ours: bool) -> bool:
        """Install a pair IKE negotiated. ``ours``: we started the exchange (rekey), so the
        peer installs it only when our last message reaches it.

        Make-before-break: where the data path can (``pending_outbound``), a pair of our own
        rekey, or the loser of a rekey collision, receives at once but outbound stays on the
        older pair until the peer's first authenticated packet on the new one arrives (or,
        for our rekey, OUTBOUND_GRACE later). Raises InstallRefused with the reason.
        Returns whether this is the tunnel's first pair (the tunnel just came up)."""
        dp = self.datapath
        if dp is None:
            raise InstallRefused("not_open", "data path not open")
        first = not self.pairs
        loser = self._child_state(pair.spi_in) is ChildState.REKEYED
        hold = not first and dp.pending_outbound and (loser or ours)
        try:
            dp.install(pair, outbound=not hold)
        except SaInstallError as exc:
            raise InstallRefused(exc.reason, exc.detail) from exc
        except Exception as exc:  # noqa: BLE001 - a refusal is reported to IKE, never raised further
            raise InstallRefused("internal_error", str(exc) or type(exc).__name__) from exc
        self.pairs[pair.spi_in] = pair
        self.udp_encap = pair.udp_encap
        if hold and loser:
            log.info("tunnel=%s event=ipsec-up-standby %s (rekey collision: the other new pair carries traffic)",
                     self.name, pair.describe())
        elif hold:
            self._grace[pair.spi_in] = asyncio.get_running_loop().call_later(
                OUTBOUND_GRACE, self._release_held, pair.spi_in, "grace time over")
            log.info("tunnel=%s event=ipsec-up-pending %s (older pair carries traffic until the peer uses this one)",
                     self.name, pair.describe())
        else:
            log.info("tunnel=%s event=ipsec-up %s", self.name, pair.describe())
        return first

    def expect(self, spi_in: int, seconds: float) -> None:
        """IKE allocated ``spi_in`` for a pair the peer may use before it is installed here
        (:class:`~cgwd.ike.events.SpiPending`): the data path holds that SPI's first packets."""
        if self.datapath is not None:
            self.datapath.expect_spi(spi_in, seconds)

    def _release_held(self, spi_in: int, why: str) -> None:
        self._grace.pop(spi_in, None)
        if self._child_state(spi_in) is ChildState.REKEYED or self.datapath is None or spi_in not in self.pairs:
            return  # lost a rekey collision meanwhile (stays on standby), or gone
        if self.datapath.activate_outbound(spi_in, why):
            log.debug("tunnel=%s event=ipsec-switch spi_in=0x%08x reason=%s", self.name, spi_in, why)

    def remove(self, spi_in: int) -> bool:
        """Remove a pair; returns whether it was the last one."""
        h = self._grace.pop(spi_in, None)
        if h is not None:
            h.cancel()
        self.pairs.pop(spi_in, None)
        if self.datapath is not None:
            self.datapath.remove(spi_in)
        return not self.pairs

    def remove_all(self) -> None:
        for h in self._grace.values():
            h.cancel()
        self._grace.clear()
        self.pairs.clear()
        if self.datapath is not None:
            self.datapath.remove_all()

    def receive_esp(self, data: bytes, remote: tuple[str, int]) -> bool:
        if self.datapath is None:
            return False
        self.datapath.receive_esp(data, remote)
        return True

    def inbound_since_last_look(self) -> bool:
        """Whether any SA received packets since the last call (RFC 3706: authenticated ESP
        counts as traffic from the peer, so DPD asks only after a quiet period)."""
        if self.datapath is None:
            return False
        current = self.datapath.inbound_packets()
        alive = any(n > self._esp_seen.get(spi, 0) for spi, n in current.items())
        self._esp_seen = current
        return alive

    def status(self) -> dict:
        return self.datapath.stats() if self.datapath is not None else {}
