"""BFD on a LAN BGP session (``bfd = true`` on a ``[[lan_neighbor]]``; cgwd.bfd does the protocol).

The gate, as BIRD's ``bfd on``: BFD gates the teardown, not the bring-up. While BFD is
configured but has not been Up, BGP may establish on its own. When the BFD session goes Down
from Up by a path failure (detection time expired, or the router's Down), the BGP session is
closed at once with NOTIFICATION Cease / BFD Down (6/10, RFC 9384) and its routes leave as on a
hold timer expiry (the SessionDown event LanBgp already handles); BGP then stays Idle,
refusing connections, until BFD is Up again. The router's AdminDown is not a path failure
(RFC 5882 3.2): BGP is left alone. ``bfd = false`` at reload lifts a gate in place.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from ..bfd.session import BfdDown, BfdParams, BfdUp
from ..bfd.transport import BfdRunner
from ..bgp.session import BgpSession
from ..tunnel.bgp_part import _wall
from .config import LanNeighborConfig

log = logging.getLogger("cgwd")


class BfdClient(Protocol):
    """What the gate needs of a LAN neighbor (cgwd.lan.part.LanNeighbor)."""

    cfg: LanNeighborConfig
    session: BgpSession
    speaker: object | None


def params(cfg: LanNeighborConfig) -> BfdParams:
    return BfdParams.from_ms(cfg.bfd_interval_ms, cfg.bfd_multiplier)


class LanBfd:
    """One router's BFD session and its gate on the router's BGP session."""

    def __init__(self, client: BfdClient) -> None:
        self.client = client
        self.runner: BfdRunner | None = None
        self.gated = False               # BGP held Idle since a BFD Down, until BFD is Up
        self.bgp_teardowns = 0
        self.last_teardown_at: float | None = None

    @property
    def name(self) -> str:
        return self.client.cfg.name

    def start(self) -> None:
        c = self.client.cfg
        if not c.bfd or self.runner is not None:
            return
        self.runner = BfdRunner(str(c.local_address), str(c.address), params(c), self._on_event)
        self.runner.start()
        log.info("lan=%s event=bfd-start peer=%s interval_ms=%d multiplier=%d", self.name, c.address,
                 c.bfd_interval_ms, c.bfd_multiplier)

    def stop(self) -> None:
        r, self.runner = self.runner, None
        if r is not None:
            r.stop()
        self.gated = False

    def reconfigure(self, cfg: LanNeighborConfig) -> None:
        """In place: on/off starts/stops the session (off lifts a gate), intervals go to the peer
        with a Poll Sequence."""
        if not cfg.bfd:
            was_gated = self.gated
            self.stop()
            if was_gated:
                self._release()
            return
        if self.runner is None:
            self.start()
        else:
            self.runner.set_params(params(cfg))

    def _now(self) -> float:
        return asyncio.get_running_loop().time()     # the BGP speaker's clock too

    def _pump(self) -> None:
        sp = self.client.speaker
        if sp is not None:
            sp.announce([])           # the speaker writes the NOTIFICATION, closes, emits events

    def _on_event(self, ev) -> None:
        if isinstance(ev, BfdDown):
            log.warning("lan=%s event=bfd-down peer=%s diag=%r was_up=%s", self.name, self.client.cfg.address,
                        ev.diag.text, ev.was_up)
            if ev.path_failure:
                self.gated = True
                self.bgp_teardowns += 1
                self.last_teardown_at = ev.at
                self.client.session.hold_down(self._now(), 6, 10, f"BFD Down ({ev.diag.text})")
                self._pump()
        elif isinstance(ev, BfdUp):
            log.info("lan=%s event=bfd-up peer=%s", self.name, self.client.cfg.address)
            if self.gated:
                self._release()

    def _release(self) -> None:
        self.gated = False
        self.client.session.restart(self._now())
        self._pump()

    def status(self) -> dict:
        c = self.client.cfg
        if not c.bfd:
            return {"enabled": False}
        st = self.runner.status() if self.runner is not None else {"state": "stopped"}
        p = self.runner.params if self.runner is not None else params(c)     # what runs
        return {"enabled": True, "interval_ms": p.desired_min_tx // 1000, "multiplier": p.detect_mult, **st,
                "bgp_gated": self.gated, "bgp_teardowns": self.bgp_teardowns,
                "last_teardown_at": _wall(self.last_teardown_at)}

