"""LAN-side BGP in the daemon: one :class:`LanNeighbor` per on-prem router, and
:class:`LanBgp`, which joins them to the VPN connections' routing tables and tunnels.

Daemon wiring::

    lan = LanBgp(targets=lambda: [bgp parts of the running tunnels])
    lan.attach(vpn_name, routing_table)     # each VPN's table, when made (detach when dropped)
    await lan.start(config.lan_neighbors)   # after the tunnels start
    lan.sync()                              # after tunnels were (re)started: their LAN exports
    await lan.reconfigure(new.lan_neighbors) -> {"applied": {...}, "restarted": {...}, ...}
    await lan.stop("shutdown")
    lan.status()                            # the "lan" section of the daemon's status

A router's session is a BgpSession (sans-IO) with its BgpSpeaker bound to the LAN address
(which is the next hop of everything announced: next hop self), TCP MD5 when a password is
configured. A password the kernel cannot apply keeps the session down (never unsigned). On an
IPv6 session with a router on a shared link (the route to it has no gateway) the next hop is
32 octets, RFC 2545 3: the LAN address, then the link-local address of the interface towards
the router, as the tunnels' IPv6 sessions send it; a router reached through a gateway gets the
global address alone.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable, Iterable, Mapping, Protocol

from ..bgp.md5 import md5_supported
from ..bgp.message import AS_SEQUENCE, Route
from ..bgp.session import (BgpPeerConfig, BgpSession, RoutesReceived, SessionDown, SessionUp, State,
                           derive_router_id)
from ..bgp.speaker import BgpSpeaker
from ..config import TunnelConfig
from ..routing.source import ORIGINATED, LearnedPath
from ..routing.table import RoutingSettings
from ..seams import PartState, Reconfigured
from ..tunnel.bgp_part import _wall, exports, link_local_of
from .bfd import LanBfd
from .config import AS_PATH_AWS, LAN_IN_PLACE, LanNeighborConfig
from .core import AwsPlan, LanExchange, Verdict

log = logging.getLogger("cgwd")

LAN_CONNECT_RETRY = 5


class ExportTarget(Protocol):
    """A tunnel's BGP part as the LAN side sees it (cgwd.tunnel.bgp_part.BgpPart)."""

    cfg: TunnelConfig
    lan: tuple[str, ...]

    def set_lan_prefixes(self, prefixes) -> bool: ...


def peer_config(c: LanNeighborConfig) -> BgpPeerConfig:
    v6 = c.address.version == 6
    return BgpPeerConfig(
        local_address=str(c.local_address), remote_address=str(c.address), local_asn=c.local_asn,
        remote_asn=c.remote_asn, router_id=derive_router_id(str(c.local_address)), hold_time=c.hold_time,
        connect_retry=LAN_CONNECT_RETRY, passive=c.passive, ipv4=not v6, ipv6=v6, graceful_restart=False)


class LanNeighbor:
    """One on-prem router's session (the TunnelPart life cycle)."""

    def __init__(self, cfg: LanNeighborConfig, on_event: Callable[["LanNeighbor", object], None], *,
                 link_local: Callable[[str], str | None] | None = None) -> None:
        self.cfg = cfg
        self.on_event = on_event
        #: the router's address -> our link-local address on the link shared with it, or None
        self.link_local = link_local
        self.session = BgpSession(peer_config(cfg))
        self.speaker: BgpSpeaker | None = None
        self.up_since: float | None = None
        self.last_error: str | None = None
        self._state = PartState.DOWN
        self.bfd = LanBfd(self)          # cgwd.lan.bfd: BFD and its gate on this session

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def state(self) -> PartState:
        return self._state

    async def start(self) -> None:
        if self.speaker is not None:
            return
        self._state = PartState.START
        if self.cfg.password:
            why = md5_supported(str(self.cfg.address))
            if why is not None:
                self.last_error = f"TCP MD5 password configured but {why}: session not started"
                log.error("lan=%s event=lan-md5-unavailable reason=%s", self.name, why)
                self._state = PartState.DOWN
                return
        if self.cfg.address.version == 6 and self.link_local is not None:
            ll = await asyncio.get_running_loop().run_in_executor(None, self.link_local, str(self.cfg.address))
            self.session.set_link_local_next_hop(ll)
            log.info("lan=%s event=lan-next-hop global=%s link_local=%s", self.name, self.cfg.local_address,
                     ll or "none")
        sp = BgpSpeaker(self.session, local_address=str(self.cfg.local_address), remote_address=str(self.cfg.address),
                        on_event=self._on_event, md5_key=self.cfg.password or None)
        try:
            await sp.start()
        except Exception as exc:  # noqa: BLE001 - reported in status; the tunnels stay up
            self.last_error = f"BGP start failed: {exc}"
            log.error("lan=%s event=lan-start-failed error=%s", self.name, exc)
            self._state = PartState.DOWN
            return
        self.speaker = sp
        if sp.listen_error:
            self.last_error = f"listener on {self.cfg.local_address}:179: {sp.listen_error}"
        self._state = PartState.UP
        self.bfd.start()

    async def stop(self, reason: str) -> None:
        self.bfd.stop()
        sp, self.speaker = self.speaker, None
        self.up_since = None
        if sp is None:
            self._state = PartState.DOWN
            return
        self._state = PartState.STOP
        try:
            await sp.stop(reason)
        except Exception:  # noqa: BLE001
            log.exception("lan=%s event=lan-stop-failed", self.name)
        self._state = PartState.DOWN

    def reconfigure(self, cfg: LanNeighborConfig, changed: frozenset[str]) -> Reconfigured:
        """Import filter, VPNs served, prepend, MED and as_path apply in place (LanBgp recomputes
        and re-sends); anything else needs a new session."""
        restart = tuple(sorted(changed - LAN_IN_PLACE))
        if restart:
            return Reconfigured(restart=restart)
        self.cfg = cfg
        self.bfd.reconfigure(cfg)
        return Reconfigured(applied=tuple(sorted(changed & LAN_IN_PLACE)))

    def set_exports(self, carried: Mapping[str, LearnedPath]) -> None:
        """Announce exactly ``carried``'s prefixes of the session's family to the router (next
        hop: our LAN address; an IPv4 session carries IPv4 prefixes only, an IPv6 one IPv6),
        with the path ``as_path`` says (AWS's learned path or ours), the configured prepend and
        MED. What changed is re-sent; a prefix whose attributes are equal is not."""
        v6 = self.cfg.address.version == 6
        self.session.set_exports(lan_routes({p: lp for p, lp in carried.items() if (":" in p) == v6}, self.cfg))
        if self.speaker is not None:
            self.speaker.announce([])      # pump: the UPDATEs leave now

    def sent(self) -> list[str]:
        return sorted(r.prefix for r in self.session.advertised())

    def looped(self) -> list[str]:
        """What the router was sent with its own ASN in the AS path (a path AWS sent that
        holds it further along, which the config check cannot see): the router drops these
        as loops (RFC 4271 9.1.2); status says so, ``as_path = "originate"`` sends them."""
        asn = self.cfg.remote_asn
        return sorted(r.prefix for r in self.session.advertised() if asn in r.as_path_list())

    def _on_event(self, ev) -> None:
        if isinstance(ev, SessionUp):
            self.up_since = self.session.uptime_since   # the event loop's clock: status shows wall time
            self.last_error = None
            log.info("lan=%s event=lan-bgp-established peer=%s hold=%s", self.name, self.cfg.address, ev.hold_time)
        elif isinstance(ev, SessionDown):
            self.up_since = None
            self.last_error = ev.reason
            log.warning("lan=%s event=lan-bgp-down peer=%s reason=%s", self.name, self.cfg.address, ev.reason)
        self.on_event(self, ev)

    def status(self) -> dict:
        c = self.cfg
        st = self.speaker.status() if self.speaker is not None else self.session.status()
        return {
            "name": c.name, "address": str(c.address), "local_address": str(c.local_address),
            "remote_asn": c.remote_asn, "local_asn": c.local_asn, "ibgp": c.ibgp,
            "state": str(st.get("state") or "idle").lower() if self.speaker is not None else "idle",
            "part": self._state.value,
            "uptime_since": _wall(self.up_since) if self.speaker is not None else None,
            "hold_time": st.get("hold_time", c.hold_time), "passive": c.passive,
            "md5": bool(c.password), "vpns": list(c.vpns), "import": c.import_filter.to_config(),
            "max_prefix": c.max_prefix, "summarise": [str(p) for p in c.summarise],
            "prepend": c.prepend, "med": c.med, "as_path": c.as_path,
            "next_hop": [str(c.local_address)] + [a for a in (self.session.config.link_local_next_hop,) if a],
            "messages_in": st.get("messages_in"), "messages_out": st.get("messages_out"),
            "last_error": self.last_error or st.get("last_error") or None,
            "bfd": self.bfd.status(),
        }


def lan_routes(carried: Mapping[str, LearnedPath], c: LanNeighborConfig) -> list[Route]:
    """What a router is sent: ``carried``'s prefixes and ``med``; the next hop is the session's.

    The path: with ``as_path = "aws"`` the one the prefix was learned with (AWS's AS_PATH,
    ORIGIN, ATOMIC_AGGREGATE/AGGREGATOR if AWS set them) behind ``prepend`` copies of our ASN;
    with ``"originate"``, or for a prefix with no learned path (a static VPN's), the prepend
    copies alone (ORIGIN IGP). On eBGP the session adds the one copy of our ASN itself; on
    iBGP it adds nothing (and prepend is refused there), so the path goes unchanged."""
    pre = (c.local_asn,) * c.prepend
    out = []
    for p, lp in carried.items():
        if c.as_path != AS_PATH_AWS:
            lp = ORIGINATED
        out.append(Route(p, None, prepend_path(pre, lp.as_path), lp.origin, c.med,
                         atomic_aggregate=lp.atomic_aggregate, aggregator=lp.aggregator))
    return out


def prepend_path(asns: tuple[int, ...], path: tuple) -> tuple:
    """``asns`` in front of ``path`` (segments): into its first AS_SEQUENCE, or a new one before
    an AS_SET (the encoder splits segments over 255 ASes)."""
    if not asns:
        return path
    if path and path[0][0] == AS_SEQUENCE:
        return ((AS_SEQUENCE, asns + tuple(path[0][1])),) + tuple(path[1:])
    return ((AS_SEQUENCE, asns),) + tuple(path)


def route_towards(address: str) -> tuple[str, str | None] | None:
    """(interface, gateway or None) of the kernel's route to ``address``, or None (no route)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        with IPRoute() as ipr:
            found = ipr.route("get", dst=address)
            oif = found[0].get_attr("RTA_OIF") if found else None
            if not oif:
                return None
            return socket.if_indextoname(oif), found[0].get_attr("RTA_GATEWAY")
    except (OSError, NetlinkError):  # NetlinkError (e.g. no route) is not an OSError
        return None


def interface_towards(address: str) -> str | None:
    """The interface this box reaches ``address`` on (the kernel's route lookup), or None."""
    r = route_towards(address)
    return r[0] if r else None


def link_local_towards(address: str) -> str | None:
    """Our link-local address on the link shared with ``address`` (RFC 2545 3: the kernel's
    route to it has no gateway), or None: reached through a gateway, or no such address."""
    r = route_towards(address)
    return link_local_of(r[0]) if r and r[1] is None else None


def lan_routing_settings(config) -> RoutingSettings:
    """The LAN routing table's settings: the routers' prefixes went through their import
    filters already; none may cover a tunnel's outside address (IKE and ESP must not follow
    them), none is guarded (the LAN is not a tunnel: no fail-closed routes)."""
    addrs = {str(a) for t in config.tunnels for a in (t.local_address, t.public_address, t.remote_address)}
    return RoutingSettings(import_policy="any", max_prefix=None, fail_closed=False, protected=tuple(addrs),
                           reconcile_interval=config.daemon.reconcile_interval)


def lan_key(name: str) -> str:
    """A router's name in the LAN routing table (beside tunnel names in status and logs)."""
    return f"lan:{name}"


class LanBgp:
    def __init__(self, targets: Callable[[], Iterable[ExportTarget]], *, table=None,
                 resolve: Callable[[str], str | None] = interface_towards,
                 link_local: Callable[[str], str | None] = link_local_towards) -> None:
        self.targets = targets
        self.link_local = link_local
        #: a RoutingTable for the routers' accepted prefixes, so that the box forwards the VPC's
        #: return traffic to the router that gave them (None: the kernel is not told)
        self.table = table
        self.resolve = resolve
        self.exchange = LanExchange()
        self.neighbors: dict[str, LanNeighbor] = {}
        self.tables: dict[str, object] = {}
        self.plans: dict[str, AwsPlan] = {}        # tunnel -> its share of the LAN prefixes
        self.held_total = 0                        # prefixes held back over the limit, counted once each time
        self.export_errors = 0

    # ------------------------------------------------------------ the VPN side
    def attach(self, vpn: str, table) -> None:
        """Follow a VPN's routing table: its carried prefixes go to the routers serving it."""
        if self.tables.get(vpn) is table:
            return
        self.detach(vpn)
        self.tables[vpn] = table
        table.listeners.append(self._on_selection)
        if self.exchange.set_carried(vpn, table.rib.carried()):
            self.refresh_lan({vpn})

    def detach(self, vpn: str) -> None:
        table = self.tables.pop(vpn, None)
        if table is not None and self._on_selection in table.listeners:
            table.listeners.remove(self._on_selection)
        if self.exchange.drop_vpn(vpn):
            self.refresh_lan({vpn})

    def _on_selection(self, table, prefixes) -> None:
        if not self.neighbors:
            return        # no router to tell: add() reads every table afresh
        if self.exchange.selection_changed(table.name, table.rib.learned_paths(prefixes)):
            self.refresh_lan({table.name})
            if any(r.accepted for r in self.exchange.routers.values()):
                for name in self.neighbors:     # what the VPC now carries may shadow LAN prefixes
                    self._offer(name)
                self.sync()

    def refresh_lan(self, vpns: set[str] | None = None) -> None:
        for n in self.neighbors.values():
            if vpns is None or vpns & set(n.cfg.vpns):
                n.set_exports(self.exchange.to_lan(n.cfg.vpns))

    # ------------------------------------------------------------ the LAN side
    def _on_event(self, n: LanNeighbor, ev) -> None:
        if self.neighbors.get(n.name) is not n:
            return
        if isinstance(ev, SessionUp):
            self._route_up(n)
        elif isinstance(ev, RoutesReceived):
            verdicts = self.exchange.received(n.name, [r.prefix for r in ev.announced], ev.withdrawn)
            refused = [p for p, v in verdicts.items() if v is Verdict.REFUSED]
            if refused:
                log.info("lan=%s event=lan-prefixes-refused count=%d first=%s", n.name, len(refused), refused[0])
            self._offer(n.name)
            self.sync()
        elif isinstance(ev, SessionDown):
            self._route_down(n.name)
            if self.exchange.router_down(n.name):
                self.sync()

    # ------------------------------------------------------------ the box's own routes to the LAN
    def _route_up(self, n: LanNeighbor) -> None:
        """Route the router's prefixes via it: the interface towards it is looked up off the
        event loop (netlink), then the LAN table's "tunnel" for it comes up."""
        if self.table is None:
            return
        addr = str(n.cfg.address)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._route_up_via(n, self.resolve(addr))
            return
        fut = loop.run_in_executor(None, self.resolve, addr)
        fut.add_done_callback(lambda f: self._route_up_via(n, None if f.cancelled() or f.exception() else f.result()))

    def _route_up_via(self, n: LanNeighbor, ifname: str | None) -> None:
        if self.neighbors.get(n.name) is not n or n.session.state is not State.ESTABLISHED:
            return
        addr = str(n.cfg.address)
        if ifname is None:
            n.last_error = f"no interface of this box reaches {addr}: its prefixes are not routed"
            log.error("lan=%s event=lan-no-interface peer=%s", n.name, addr)
            return
        self.table.tunnel_up(lan_key(n.name), ifname, addr)

    def _route_down(self, name: str) -> None:
        if self.table is not None:
            self.table.tunnel_down(lan_key(name))

    def _offer(self, name: str) -> None:
        n = self.neighbors.get(name)
        if self.table is not None and n is not None:
            self.table.offer(lan_key(name), [Route(p, str(n.cfg.address)) for p in self.exchange.routable(name)])

    def sync(self) -> None:
        """Give every running tunnel its share of the LAN prefixes (after LAN changes, and
        after tunnels were started or restarted)."""
        for t in self.targets():
            c = t.cfg
            try:
                static = [r.prefix for r in exports(c)]
                plan = self.exchange.to_aws(c.vpn, c.inner_family, static, c.max_advertise)
                old = self.plans.get(c.name)
                self.plans[c.name] = plan
                t.set_lan_prefixes(plan.sent)
            except ValueError as exc:
                self.export_errors += 1
                log.error("tunnel=%s event=lan-export-failed error=%s", c.name, exc)
                continue
            new_held = set(plan.held) - set(old.held if old else ())
            if new_held:
                self.held_total += len(new_held)
                log.warning("tunnel=%s event=lan-prefixes-over-limit held=%d limit=%d sent=%d first_held=%s",
                            c.name, len(plan.held), c.max_advertise, len(static) + len(plan.sent),
                            sorted(new_held)[0])
        names = {t.cfg.name for t in self.targets()}
        for gone in [n for n in self.plans if n not in names]:
            del self.plans[gone]

    # ------------------------------------------------------------ life cycle
    def add(self, cfg: LanNeighborConfig) -> LanNeighbor:
        """A router's neighbor, its session loaded with what it is to be sent (not started)."""
        if not self.neighbors:          # the tables were not followed while no router was configured
            for vpn, table in self.tables.items():
                self.exchange.set_carried(vpn, table.rib.carried())
        n = LanNeighbor(cfg, self._on_event, link_local=self.link_local)
        self.neighbors[cfg.name] = n
        self.exchange.add_router(cfg.name, cfg.vpns, cfg.import_filter, cfg.max_prefix, cfg.summarise)
        if self.table is not None:
            self.table.rib.add_tunnel(lan_key(cfg.name))
        n.set_exports(self.exchange.to_lan(cfg.vpns))
        return n

    async def _add(self, cfg: LanNeighborConfig) -> None:
        await self.add(cfg).start()

    async def _remove(self, name: str, reason: str) -> None:
        n = self.neighbors.get(name)
        if n is not None:
            await n.stop(reason)
        self._route_down(name)
        if self.table is not None:
            self.table.offer(lan_key(name), [])
        self.neighbors.pop(name, None)
        self.exchange.remove_router(name)

    async def start(self, configs: Iterable[LanNeighborConfig]) -> None:
        for cfg in configs:
            await self._add(cfg)
        self.sync()

    async def stop(self, reason: str = "shutdown") -> None:
        for name in list(self.neighbors):
            await self._remove(name, reason)
        self.sync()

    async def reconfigure(self, configs: Iterable[LanNeighborConfig]) -> dict:
        """A reload: neighbors gone stop, new ones start, changed ones apply in place or restart."""
        new = {c.name: c for c in configs}
        out: dict = {"added": [], "removed": [], "applied": {}, "restarted": {}}
        for name in [n for n in self.neighbors if n not in new]:
            await self._remove(name, "reload: removed")
            out["removed"].append(name)
        for name, cfg in new.items():
            n = self.neighbors.get(name)
            if n is None:
                await self._add(cfg)
                out["added"].append(name)
                continue
            ch = n.cfg.changes(cfg)
            if not ch:
                continue
            r = n.reconfigure(cfg, frozenset(ch.in_place | ch.restart))
            if r.needs_restart:
                await self._remove(name, "reload: " + ", ".join(r.restart) + " changed")
                await self._add(cfg)
                out["restarted"][name] = list(r.restart)
            else:
                self.exchange.set_policy(name, cfg.vpns, cfg.import_filter, cfg.max_prefix, cfg.summarise)
                self._offer(name)
                n.set_exports(self.exchange.to_lan(cfg.vpns))
                out["applied"][name] = list(r.applied)
        self.sync()
        return out

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        ex = self.exchange
        neighbors = []
        for n in self.neighbors.values():
            r = ex.routers.get(n.name)
            neighbors.append({**n.status(), "sent": n.sent(), "looped": n.looped(),
                              "received": sorted(r.accepted) if r else [],
                              "refused": dict(sorted(r.refused.items())) if r else {},
                              "refused_total": r.refused_total if r else 0,
                              "shadowed": {p: v for p in (r.accepted if r else ()) if (v := ex.shadowed(p))}})
        to_aws = {name: {"sent": list(p.sent), "held": list(p.held), "room": p.room}
                  for name, p in sorted(self.plans.items())}
        routes = self.table.routes() if self.table is not None else []
        return {"neighbors": neighbors, "to_aws": to_aws, "routes": routes, "held_total": self.held_total,
                "held_now": sum(len(p.held) for p in self.plans.values()), "export_errors": self.export_errors}
