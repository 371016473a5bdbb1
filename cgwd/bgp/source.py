"""BGP as a route source of the routing table (:class:`cgwd.routing.source.RouteSource`).

``BgpRouteSource`` owns one tunnel's BGP: the sans-IO session, its asyncio speaker (made
on :meth:`~BgpRouteSource.start`, gone on :meth:`~BgpRouteSource.stop`; the session and
its Adj-RIB-Out live on), the export policy. What the peer announces goes to the VPN's
routing table as learned routes; a max-prefix teardown comes back as Cease / 1.

Daemon wiring, per tunnel::

    src = BgpRouteSource(tunnel_name, routing_table, BgpPeerConfig(...),
                         ExportPolicy.from_tunnel(tunnel_cfg), index=i, on_event=hook)
    await src.start()        # the first SA pair is installed (after routing.tunnel_up)
    await src.stop(reason)   # the tunnel is lost (after routing.tunnel_down) or shutdown
    src.reconfigure(export=ExportPolicy.from_tunnel(new_cfg))   # reload, in place
    src.status()             # BgpSession.status() + "kind", "drops"
"""
from __future__ import annotations

import asyncio
import logging
import time

from .policy import ExportPolicy
from .session import BgpPeerConfig, BgpSession, EndOfRib, RoutesReceived, SessionDown, SessionUp
from .speaker import BgpSpeaker

log = logging.getLogger("cgwd.bgp.source")


def _now() -> float:
    """The event loop's clock (the speaker's), or the monotonic clock outside one."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def apply_event(routing, tunnel: str, ev) -> None:
    """What a BgpSession event means to the routing table."""
    if isinstance(ev, RoutesReceived):
        routing.routes_received(tunnel, ev.announced, ev.withdrawn)
    elif isinstance(ev, EndOfRib):
        routing.end_of_rib(tunnel, 6 if ev.afi == 2 else 4)
    elif isinstance(ev, SessionDown):
        routing.session_down(tunnel, ev.graceful_restart, ev.restart_time)
    elif isinstance(ev, SessionUp):
        log.info("BGP on %s established (hold %s, keepalive %s)", tunnel, ev.hold_time, ev.keepalive)


def limit_notification(limit: int) -> bytes:
    """RFC 4486 data of Cease / 1: AFI, SAFI, the upper bound."""
    return b"\x00\x01\x01" + int(limit).to_bytes(4, "big")


class SessionLimit:
    """The routing table's LimitHandler for a bare session: Cease / 1."""

    def __init__(self, session: BgpSession, clock=time.monotonic):
        self.session, self.clock = session, clock

    def limit_exceeded(self, limit: int) -> None:
        self.session.reset(self.clock(), 6, 1, limit_notification(limit),
                           reason=f"maximum prefix count {limit} exceeded")


class BgpRouteSource:
    kind = "bgp"

    def __init__(self, tunnel: str, routing, peer: BgpPeerConfig, export: ExportPolicy, *,
                 index: int | None = None, on_event=None, port: int = 179, listen: bool = True):
        self.tunnel = tunnel
        self.routing = routing
        self.export = export
        self.on_event = on_event
        self.port, self.listen = port, listen
        self.session = BgpSession(peer)
        self.session.announce(export.routes(peer.local_asn))
        self.speaker: BgpSpeaker | None = None
        self.drops: dict[str, int] = {}       # counters of speakers already stopped
        routing.rib.add_tunnel(tunnel, index)
        routing.limit_handlers[tunnel] = self

    # ------------------------------------------------------------ RouteSource
    async def start(self) -> None:
        if self.speaker is not None:
            return
        cfg = self.session.config
        self.speaker = BgpSpeaker(self.session, local_address=cfg.local_address,
                                  remote_address=cfg.remote_address, port=self.port,
                                  on_event=self._on_event, listen=self.listen)
        await self.speaker.start()

    async def stop(self, reason: str = "") -> None:
        sp, self.speaker = self.speaker, None
        if sp is None:
            return
        for k, v in sp.counters.items():
            self.drops[k] = self.drops.get(k, 0) + v
        await sp.stop(reason)

    def reconfigure(self, *, export: ExportPolicy | None = None) -> list[str]:
        """A new export policy applies in place (withdraw what is gone, announce the
        rest); raises ValueError over the export limit, leaving the old one in force."""
        changed = []
        if export is not None and export != self.export:
            routes = export.routes(self.session.config.local_asn)
            self.export = export
            self.session.set_exports(routes)
            if self.speaker is not None:
                self.speaker.announce([])       # pump: the UPDATEs leave now
            changed.append("export")
        return changed

    def status(self) -> dict:
        st = self.speaker.status() if self.speaker is not None else self.session.status()
        drops = dict(self.drops)
        for k, v in (self.speaker.counters.items() if self.speaker is not None else ()):
            drops[k] = drops.get(k, 0) + v
        return {"kind": self.kind, **st, "running": self.speaker is not None, "drops": drops,
                "export_limit": self.export.limit}

    def offered(self) -> list:
        return self.routing.rib.tunnel_routes(self.tunnel)

    # ------------------------------------------------------------ LimitHandler
    def limit_exceeded(self, limit: int) -> None:
        self.session.reset(_now(), 6, 1, limit_notification(limit),
                           reason=f"maximum prefix count {limit} exceeded")

    # ------------------------------------------------------------ internals
    def _on_event(self, ev) -> None:
        apply_event(self.routing, self.tunnel, ev)
        if self.on_event is not None:
            self.on_event(ev)
