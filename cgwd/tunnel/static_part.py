"""The tunnel's route source with ``routing = "static"``: the VPN's static routes, carried
while the tunnel does (:class:`cgwd.routing.static.StaticRouteSource`), no BGP.

Started when the first SA pair is installed and stopped when the last one goes (as BgpPart);
the VPN-level choices (which tunnel is the primary, the hold-down, ECMP) come from the VPN's
routing table settings, so a reload that reconfigures the table reaches every tunnel here.

The health check (``health_check = N``): when AWS's inside address stops answering, the
routes are withdrawn at once (the core) and ``on_silent(reason)`` hands the tunnel the
decision a DPD death would take (its ``dpd_action``, through its IKE part). A check that stays
unanswered after that does not call it again until a reply has come (see
:class:`cgwd.routing.static.HealthLost`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Callable

from ..config import TunnelConfig
from ..routing.static import HealthLost, HealthRestored, StaticConfig, StaticRouteSource
from ..routing.table import RoutingSettings, RoutingTable
from ..seams import PartState, Reconfigured

log = logging.getLogger("cgwd")


def static_config(cfg: TunnelConfig, settings: RoutingSettings) -> StaticConfig:
    """What this tunnel's static route source runs with: the tunnel's routes and health
    check (unanswered for ``dpd_retries`` intervals: dead, like DPD), the VPN's primary,
    hold-down and ECMP."""
    return StaticConfig(prefixes=tuple(str(p) for p in cfg.static_routes),
                        primary=cfg.name == settings.static_primary, ecmp=settings.ecmp,
                        hold_down=settings.static_hold_down,
                        health_interval=cfg.health_check or settings.health_check,
                        health_misses=max(1, cfg.dpd_retries))


class StaticPart:
    def __init__(self, cfg: TunnelConfig, routing: RoutingTable, index: int, *,
                 on_silent: Callable[[str], None] | None = None, prober=None) -> None:
        self.cfg = cfg
        self.routing = routing
        self.on_silent = on_silent
        self.source = StaticRouteSource(
            cfg.name, routing, static_config(cfg, routing.settings), local_address=str(cfg.inside_local.ip),
            remote_address=str(cfg.inside_remote), ifname=cfg.ifname, index=index, on_event=self._on_event,
            prober=prober)
        self.up_since: float | None = None  # a BGP session's: never (no BGP runs)
        self._state = PartState.DOWN
        self._task: asyncio.Task | None = None

    @property
    def state(self) -> PartState:
        return self._state

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def carrying(self) -> bool:
        """Whether this tunnel offers the static routes now (up, or a backup in its hold-down)."""
        return self.source.carrying

    async def start(self) -> None:
        self._state = PartState.START
        await self.source.start()
        self._state = PartState.UP

    async def stop(self, reason: str) -> None:
        self._state = PartState.STOP
        await self.source.stop(reason)
        self._state = PartState.DOWN

    def start_soon(self) -> None:
        self._then(self.start)

    def stop_soon(self, reason: str) -> None:
        self._then(lambda: self.stop(reason))

    def _then(self, step) -> None:
        """Run ``step()`` after every start/stop asked for before it: in order, one at a time."""
        prev = self._task

        async def run() -> None:
            if prev is not None:
                try:
                    await prev
                except Exception:  # noqa: BLE001 - logged where it happened
                    pass
            await step()
        self._task = asyncio.ensure_future(run())

    async def close(self, reason: str) -> None:
        self.stop_soon(reason)
        await self._task

    def reconfigure(self, cfg: TunnelConfig, changed: frozenset[str]) -> Reconfigured:
        """Static routes, health check, primary, hold-down, ECMP: in place (the tunnel reports
        the VPN-level fields it was given as applied)."""
        self.cfg = cfg
        done = self.source.reconfigure(**dataclasses.asdict(static_config(cfg, self.routing.settings)))
        if done:
            log.info("tunnel=%s event=static-reconfigured applied=%s", self.name, ",".join(done))
        return Reconfigured()

    def _on_event(self, ev) -> None:
        if isinstance(ev, HealthLost):
            if ev.first:
                log.warning("tunnel=%s event=health-check-failed reason=%s routes=withdrawn dpd_action=%s",
                            self.name, ev.reason, self.cfg.dpd_action)
                if self.on_silent is not None:
                    self.on_silent(ev.reason)
            else:
                log.warning("tunnel=%s event=health-check-failed reason=%s routes=withdrawn: still no reply "
                            "since IKE was dealt with (dpd_action %s): SAs kept, the routes return when AWS's "
                            "inside address answers", self.name, ev.reason, self.cfg.dpd_action)
        elif isinstance(ev, HealthRestored):
            log.info("tunnel=%s event=health-check-restored", self.name)

    def drop_counts(self) -> dict[str, int]:
        return {}

    def status(self) -> dict:
        """The ``bgp`` entry of the tunnel's status: disabled, not down."""
        return {"state": "disabled", "reason": "routing = \"static\": no BGP on this VPN connection",
                "peer": str(self.cfg.inside_remote), "local": str(self.cfg.inside_local.ip),
                "prefixes_received": 0, "prefixes_advertised": 0, "advertised": []}

    def static_status(self, mono_to_wall: Callable[[float | None], float | None] = lambda t: t) -> dict:
        """The route source's status with its times (the loop's clock) as Unix times."""
        st = self.source.status()
        for key in ("since", "hold_down_until"):
            st[key] = mono_to_wall(st.get(key))
        hc = st.get("health_check")
        if hc:
            st["health_check"] = {**hc, "last_reply": mono_to_wall(hc.get("last_reply"))}
        return st
