"""BFD on a LAN BGP session (``bfd = true`` on a ``[[lan_neighbor]]``; cgwd.bfd does the protocol).

The gate, as BIRD's ``bfd on``: BFD gates the teardown, not the bring-up. While BFD is
configured but has not been Up, BGP may establish on its own. When the BFD session goes Down
from Up by a path failure (detection time expired, or the router's Down), the BGP session is
closed at once with NOTIFICATION Cease / BFD Down (6/10, RFC 9384) and its routes leave as on a
hold timer expiry (the SessionDown event LanBgp already handles); BGP then stays Idle,
refusing connections, until BFD is Up again, or for at most the session's hold time (90 s when
it is 0): then BGP is let up without BFD, as before BFD's first Up (FRR's ``bfd strict
hold-time``). A router that stops BFD without AdminDown (FRR 8.4's bfdd when ``neighbor X bfd``
is removed: the session is deleted, nothing more is sent) is otherwise indistinguishable from a
dead path, and the gate would keep BGP down for good. The router's AdminDown is not a path
failure (RFC 5882 3.2): BGP is left alone. ``bfd = false`` at reload lifts a gate in place.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Protocol

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


class Handle(Protocol):
    def cancel(self) -> None: ...


#: schedules ``callback`` after ``delay`` seconds (the loop's call_later by default)
CallLater = Callable[[float, Callable[[], None]], Handle]

GATE_LIMIT_NO_HOLD = 90.0       # seconds: the gate's limit on a session with hold time 0


def params(cfg: LanNeighborConfig) -> BfdParams:
    return BfdParams.from_ms(cfg.bfd_interval_ms, cfg.bfd_multiplier)


def gate_limit(cfg: LanNeighborConfig) -> float:
    """How long BGP stays held after a BFD Down without BFD coming Up again."""
    return float(cfg.hold_time) if cfg.hold_time else GATE_LIMIT_NO_HOLD


class LanBfd:
    """One router's BFD session and its gate on the router's BGP session."""

    def __init__(self, client: BfdClient, *, call_later: CallLater | None = None) -> None:
        self.client = client
        self.runner: BfdRunner | None = None
        self.gated = False               # BGP held Idle since a BFD Down, until BFD is Up (or the limit)
        self.bgp_teardowns = 0
        self.last_teardown_at: float | None = None
        self.gate_expiries = 0           # gates lifted by the limit, BFD still not Up
        self._call_later = call_later
        self._gate_timer: Handle | None = None

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
        self._cancel_gate_timer()

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
                self._arm_gate_timer()
        elif isinstance(ev, BfdUp):
            log.info("lan=%s event=bfd-up peer=%s", self.name, self.client.cfg.address)
            if self.gated:
                self._release()

    def _release(self) -> None:
        self.gated = False
        self._cancel_gate_timer()
        self.client.session.restart(self._now())
        self._pump()

    def _arm_gate_timer(self) -> None:
        self._cancel_gate_timer()
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._gate_timer = call_later(gate_limit(self.client.cfg), self._gate_expired)

    def _cancel_gate_timer(self) -> None:
        t, self._gate_timer = self._gate_timer, None
        if t is not None:
            t.cancel()

    def _gate_expired(self) -> None:
        self._gate_timer = None
        if not self.gated:
            return
        self.gate_expiries += 1
        log.warning("lan=%s event=bfd-gate-expired peer=%s after_s=%g: BFD still down, BGP let up without it",
                    self.name, self.client.cfg.address, gate_limit(self.client.cfg))
        self._release()

    def status(self) -> dict:
        c = self.client.cfg
        if not c.bfd:
            return {"enabled": False}
        st = self.runner.status() if self.runner is not None else {"state": "stopped"}
        p = self.runner.params if self.runner is not None else params(c)     # what runs
        return {"enabled": True, "interval_ms": p.desired_min_tx // 1000, "multiplier": p.detect_mult, **st,
                "bgp_gated": self.gated, "bgp_teardowns": self.bgp_teardowns, "gate_expiries": self.gate_expiries,
                "last_teardown_at": _wall(self.last_teardown_at)}

