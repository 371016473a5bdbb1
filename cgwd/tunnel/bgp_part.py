"""The tunnel's route source today: one BGP session over the inside addresses.

It runs while the tunnel carries traffic (started when the first SA pair is installed,
stopped when the last one goes); the VPN's RoutingTable receives its routes."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from typing import Callable

from ..bgp import message as bgpmsg
from ..bgp.policy import ExportPolicy
from ..routing.table import RoutingTable
from ..bgp.session import BgpPeerConfig, BgpSession, SessionDown, SessionUp, derive_router_id
from ..bgp.source import BgpRouteSource
from ..config import TunnelConfig
from ..seams import PartState, Reconfigured
from .changes import BGP_IN_PLACE, BGP_SESSION

log = logging.getLogger("cgwd")


def exports(c: TunnelConfig) -> list[bgpmsg.Route]:
    """What the tunnel announces (ExportPolicy: prepend, MED, default route, export limit)."""
    return ExportPolicy.from_tunnel(c).routes(c.local_asn)


def peer_config(c: TunnelConfig) -> BgpPeerConfig:
    """The tunnel's BGP session over its inside addresses: IPv4 unicast over an IPv4 /30, or
    (an IPv6 VPN, as AWS's Transit Gateway runs it) IPv6 unicast only over the /126."""
    v6 = c.inner_family == 6
    return BgpPeerConfig(
        local_address=str(c.inside_local.ip), remote_address=str(c.inside_remote),
        local_asn=c.local_asn, remote_asn=c.remote_asn, router_id=derive_router_id(str(c.public_address)),
        hold_time=c.hold_time, connect_retry=2, ipv4=not v6, ipv6=v6)


class BgpPart:
    def __init__(self, cfg: TunnelConfig, routing: RoutingTable,
                 on_silent: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.routing = routing
        self._on_silent = on_silent  # the peer went silent: BGP's hold timer ran out
        self.lan: tuple[str, ...] = ()  # prefixes learned on the LAN (cgwd.lan), sent beside advertise
        self.source = self._source(cfg)
        self.up_since: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task | None = None
        self._state = PartState.DOWN

    def _export(self, cfg: TunnelConfig) -> ExportPolicy:
        """The configured ``advertise`` list, then what the LAN side gives (``lan``; cgwd.lan
        keeps it within the tunnel's ``max_advertise``)."""
        base = ExportPolicy.from_tunnel(cfg)
        lan = self.lan
        return dataclasses.replace(base, prefixes=base.prefixes + tuple(lan)) if lan else base

    def _source(self, cfg: TunnelConfig) -> BgpRouteSource:
        return BgpRouteSource(cfg.name, self.routing, peer_config(cfg), self._export(cfg),
                              on_event=self._on_event)

    def set_lan_prefixes(self, prefixes) -> bool:
        """Announce ``prefixes`` learned on the LAN beside ``advertise`` (in place, UPDATEs at
        once); the caller keeps them within the limit. True when the announcement changed."""
        lan = tuple(str(p) for p in prefixes)
        if lan == self.lan:
            return False
        self.lan = lan
        return bool(self.source.reconfigure(export=self._export(self.cfg)))

    @property
    def session(self) -> BgpSession:
        return self.source.session

    @property
    def state(self) -> PartState:
        return self._state

    @property
    def name(self) -> str:
        return self.cfg.name

    async def start(self) -> None:
        if self.source.speaker is not None:
            return
        self._state = PartState.START
        if self.cfg.inner_family == 6:
            # RFC 2545 3: AWS shares the /126 with us, so our link-local address follows the
            # global next hop (none on the interface: the global one alone)
            self.session.set_link_local_next_hop(link_local_of(self.cfg.ifname))
        try:
            await self.source.start()
        except Exception as exc:  # noqa: BLE001 - reported in status; the tunnel stays up
            self.last_error = f"BGP start failed: {exc}"
            log.error("tunnel=%s event=bgp-start-failed error=%s", self.name, exc)
            return
        self._state = PartState.UP

    def start_soon(self) -> None:
        """Start from a synchronous event handler (the tunnel's first SA pair)."""
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

    async def stop(self, reason: str) -> None:
        self.up_since = None
        if self.source.speaker is None:
            self._state = PartState.DOWN
            return
        self._state = PartState.STOP
        try:
            await self.source.stop(reason)
        except Exception:  # noqa: BLE001
            log.exception("tunnel=%s event=bgp-stop-failed", self.name)
        self._state = PartState.DOWN

    async def close(self, reason: str) -> None:
        """Stop for good (tunnel stop), after any start or stop still under way."""
        self.stop_soon(reason)
        await self._task

    def reconfigure(self, cfg: TunnelConfig, changed: frozenset[str]) -> Reconfigured:
        applied: list[str] = []
        if changed & BGP_SESSION:
            # new ASNs or hold time: a new session (OPEN carries them); IPsec stays up
            running = self.source.speaker is not None
            old = self.source
            self._then(lambda: old.stop("configuration changed"))
            self.cfg = cfg
            self.source = self._source(cfg)
            self.source.drops = old.status()["drops"]  # hostile TCP 179 input counted so far
            applied += sorted(changed & BGP_SESSION)
            if running:
                self.start_soon()
        elif changed & BGP_IN_PLACE:
            self.cfg = cfg
            self.source.reconfigure(export=self._export(cfg))
        applied += sorted(changed & BGP_IN_PLACE)
        self.cfg = cfg
        return Reconfigured(applied=tuple(applied))

    def _on_event(self, ev) -> None:
        if isinstance(ev, SessionUp):
            self.up_since = asyncio.get_running_loop().time()  # monotonic: status shows it as wall time
            self.last_error = None
            log.info("tunnel=%s event=bgp-established peer=%s hold=%s", self.name, self.cfg.inside_remote,
                     ev.hold_time)
        elif isinstance(ev, SessionDown):
            self.up_since = None
            self.last_error = ev.reason
            log.warning("tunnel=%s event=bgp-down reason=%s", self.name, ev.reason)
            if ev.sent and ev.notification and ev.notification[:2] == (4, 0) and self._on_silent is not None:
                self._on_silent(ev.reason)

    def drop_counts(self) -> dict[str, int]:
        return self.source.status()["drops"]

    def status(self) -> dict:
        c = self.cfg
        bgp = self.session.status()
        return {
            "state": (bgp.get("state") or "idle").lower() if self.source.speaker else "idle",
            "peer": str(c.inside_remote), "local": str(c.inside_local.ip),
            "remote_asn": c.remote_asn, "local_asn": c.local_asn,
            "uptime_since": _wall(self.up_since), "hold_time": bgp.get("hold_time", c.hold_time),
            "keepalive": bgp.get("keepalive"),
            "prefixes_received": self.routing.rib.prefix_count(self.name),
            "prefixes_advertised": bgp["prefixes_advertised"] if "prefixes_advertised" in bgp else len(exports(c)),
            "families": bgp.get("families"),
            "advertised": sorted(r.prefix for r in self.session.advertised()),
            "messages_in": bgp.get("messages_in"), "messages_out": bgp.get("messages_out"),
            "last_error": self.last_error or bgp.get("last_error"),
            # max-prefix teardowns (Cease/1) and the pending automatic restart's delay
            "limit_resets": bgp.get("limit_resets", 0), "restart_delay": bgp.get("restart_delay"),
            "restart_in": _remaining(bgp.get("restart_at")), "held_down": bgp.get("held_down", False),
        }


def _wall(at: float | None) -> float | None:
    """A time of the event loop's (monotonic) clock as Unix time, converted now: a step of
    the wall clock moves it along, so that now - it stays the real time since."""
    if at is None:
        return None
    return time.time() - (asyncio.get_running_loop().time() - at)


def link_local_of(ifname: str, path: str = "/proc/net/if_inet6") -> str | None:
    """The IPv6 link-local address of ``ifname`` in this network namespace, or None."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        # address, ifindex, prefix length, scope (0x20: link), flags, name
        if len(parts) == 6 and parts[5] == ifname and parts[3] == "20":
            addr = ipaddress.IPv6Address(bytes.fromhex(parts[0]))
            if addr.is_link_local:
                return str(addr)
    return None


def _remaining(at: float | None) -> float | None:
    """Seconds from now to a deadline of the event loop's clock (the session's)."""
    if at is None:
        return None
    return max(0.0, at - asyncio.get_running_loop().time())
