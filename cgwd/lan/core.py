"""What crosses between the LAN routers and the VPN connections (sans-IO: no socket, no clock).

``LanExchange`` holds two views and answers two questions:

* **to the LAN**: the VPC prefixes each VPN connection's tunnels carry now (fed from the
  routing tables' selection: a prefix is carried while a tunnel that is up has a route for it),
  each with the path its selected route was learned with (AWS's AS_PATH; none for a static
  VPN) -> :meth:`LanExchange.to_lan` (a router gets the union over the VPN connections it
  serves; ``as_path`` on the neighbor says whether that path is carried or cgwd originates);
* **to AWS**: the prefixes each router gave and its import filter accepted, in the order they
  were first accepted -> :meth:`LanExchange.to_aws` for one tunnel: the prefixes of the
  VPN's family from the routers serving it, minus those already in ``advertise``, cut to the
  room the gateway leaves (``max_advertise`` less the static exports). What does not fit is
  *held*: not sent, counted, reported. The oldest prefixes keep their place, so a new one over
  the limit never displaces one AWS already has, and a withdrawal makes room for the oldest
  held one.
"""
from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Mapping

from ..bgp.message import as_path_length
from ..routing.source import LearnedPath
from .config import ImportFilter


REFUSED_KEPT = 1000   # refused prefixes remembered per router (for status); all are counted


class Verdict(enum.Enum):
    """What happened to one prefix a router announced."""

    ACCEPTED = "accepted"
    REFUSED = "refused"


@dataclass
class _Learned:
    """One router's view: what it gave (accepted, in arrival order) and what was refused."""

    vpns: tuple[str, ...]
    filter: ImportFilter
    max_prefix: int | None = None
    summaries: tuple = ()                                     # ip_networks: sent to AWS instead
    accepted: dict[str, None] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)     # prefix -> reason
    refused_total: int = 0


@dataclass(frozen=True)
class AwsPlan:
    """One tunnel's share of the LAN prefixes: ``sent`` fits the limit, ``held`` does not."""

    sent: tuple[str, ...]
    held: tuple[str, ...]
    room: int


def _family(prefix: str) -> int:
    return 6 if ":" in prefix else 4


def canonical(prefix: str) -> str:
    return str(ipaddress.ip_network(prefix, strict=False))


class LanExchange:
    def __init__(self) -> None:
        self.carried: dict[str, dict[str, LearnedPath]] = {}   # VPN -> prefix a tunnel carries now -> its path
        self._carriers: dict[str, int] = {}           # prefix -> how many VPNs carry it
        self.routers: dict[str, _Learned] = {}
        self._seq: dict[str, int] = {}                # prefix -> order of first acceptance
        self._next = 0

    # ------------------------------------------------------------ the VPN side
    def set_carried(self, vpn: str, carried: Mapping[str, LearnedPath]) -> bool:
        """The VPN carries exactly the prefixes of ``carried``, each with the path its selected
        route was learned with; True when that changed."""
        new = {canonical(p): lp for p, lp in carried.items()}
        if self.carried.get(vpn) == new:
            return False
        for p in self.carried.get(vpn, ()):
            self._uncount(p)
        for p in new:
            self._carriers[p] = self._carriers.get(p, 0) + 1
        self.carried[vpn] = new
        return True

    def _uncount(self, p: str) -> None:
        n = self._carriers.get(p, 0) - 1
        if n > 0:
            self._carriers[p] = n
        else:
            self._carriers.pop(p, None)

    def shadowed(self, prefix: str) -> str | None:
        """The VPC prefix a LAN prefix equals or lies inside (a tunnel carries it now), or None.
        Such a prefix is neither sent to AWS nor routed to the router: it would take the VPC's
        own traffic away from the tunnels. (A LAN prefix covering a VPC prefix is fine: the
        longer VPC route wins.)"""
        if not self._carriers:
            return None
        net = ipaddress.ip_network(prefix)
        for plen in range(net.prefixlen, -1, -1):
            sup = str(net.supernet(new_prefix=plen)) if plen < net.prefixlen else prefix
            if sup in self._carriers:
                return sup
        return None

    def selection_changed(self, vpn: str, changed: Mapping[str, LearnedPath | None]) -> bool:
        """The selection of ``changed``'s prefixes moved: each is carried now with that learned
        path, or (None) no longer carried. True when what the routers are sent changes: a
        prefix came or went, or its path differs (a failover to a tunnel that learned the same
        path changes nothing, so nothing is re-sent)."""
        cur = self.carried.setdefault(vpn, {})
        moved = False
        for p, lp in changed.items():
            old = cur.get(p)
            if lp is not None:
                if old is None:
                    self._carriers[p] = self._carriers.get(p, 0) + 1
                if old != lp:
                    cur[p] = lp
                    moved = True
            elif old is not None:
                del cur[p]
                self._uncount(p)
                moved = True
        return moved

    def drop_vpn(self, vpn: str) -> bool:
        gone = self.carried.pop(vpn, None)
        for p in gone or ():
            self._uncount(p)
        return gone is not None

    def to_lan(self, vpns) -> dict[str, LearnedPath]:
        """What a router serving ``vpns`` is sent: every prefix one of them carries now, with
        its learned path; a prefix two of them carry takes the shorter AS path (the first of
        ``vpns`` on a tie), as a router choosing between them would."""
        out: dict[str, LearnedPath] = {}
        for v in vpns:
            for p, lp in self.carried.get(v, {}).items():
                have = out.get(p)
                if have is None or as_path_length(lp.as_path) < as_path_length(have.as_path):
                    out[p] = lp
        return {p: out[p] for p in sorted(out, key=_sort_key)}

    # ------------------------------------------------------------ the LAN side
    def add_router(self, name: str, vpns, import_filter: ImportFilter, max_prefix: int | None = None,
                   summaries=()) -> None:
        if name not in self.routers:
            self.routers[name] = _Learned(tuple(vpns), import_filter, max_prefix, _nets(summaries))

    def set_policy(self, name: str, vpns, import_filter: ImportFilter, max_prefix: int | None = None,
                   summaries=()) -> bool:
        """New VPNs served or import filter (reload, in place). Prefixes the new filter
        refuses leave; ones it accepts that the old refused can only come back by the router
        sending them again (we keep no Adj-RIB-In of refused routes: a route refresh asks)."""
        r = self.routers[name]
        sums = _nets(summaries)
        changed = (r.vpns, r.filter, r.max_prefix, r.summaries) != (tuple(vpns), import_filter, max_prefix, sums)
        r.vpns, r.filter, r.max_prefix, r.summaries = tuple(vpns), import_filter, max_prefix, sums
        for p in [p for p in r.accepted if not import_filter.accepts(p)]:
            del r.accepted[p]
            r.refused[p] = import_filter.reason(p)
        self._forget_unused()
        return changed

    def remove_router(self, name: str) -> None:
        self.routers.pop(name, None)
        self._forget_unused()

    def received(self, name: str, announced, withdrawn) -> dict[str, Verdict]:
        """A router's UPDATE (prefix strings): the verdict on each announced prefix."""
        r = self.routers[name]
        for p in withdrawn:
            p = canonical(p)
            r.accepted.pop(p, None)
            r.refused.pop(p, None)
        out: dict[str, Verdict] = {}
        for p in announced:
            p = canonical(p)
            why = r.filter.reason(p)
            if why == "accepted" and p not in r.accepted and r.max_prefix is not None \
                    and len(r.accepted) >= r.max_prefix:
                why = f"over max_prefix {r.max_prefix}"
            if why == "accepted":
                r.refused.pop(p, None)
                r.accepted.setdefault(p, None)
                if p not in self._seq:
                    self._seq[p] = self._next
                    self._next += 1
                out[p] = Verdict.ACCEPTED
            else:
                r.accepted.pop(p, None)
                if p not in r.refused:
                    r.refused_total += 1
                if p in r.refused or len(r.refused) < REFUSED_KEPT:
                    r.refused[p] = why
                out[p] = Verdict.REFUSED
        self._forget_unused()
        return out

    def router_down(self, name: str) -> bool:
        """The session went down: everything it gave leaves (AWS is told at once)."""
        r = self.routers.get(name)
        if r is None or not (r.accepted or r.refused):
            return False
        r.accepted.clear()
        r.refused.clear()
        self._forget_unused()
        return True

    def _forget_unused(self) -> None:
        used = {p for r in self.routers.values() for p in r.accepted}
        for p in [p for p in self._seq if p not in used]:
            del self._seq[p]

    def learned(self, vpn: str, family: int) -> list[str]:
        """The LAN prefixes of ``family`` for ``vpn``, oldest first; one inside a router's
        summary is sent as the summary (in the place of its oldest component)."""
        order: dict[str, int] = {}
        for r in self.routers.values():
            if vpn not in r.vpns:
                continue
            for p in r.accepted:
                if _family(p) != family or self.shadowed(p) is not None:
                    continue
                q = summary_of(p, r.summaries) or p
                if q != p and self.shadowed(q) is not None:
                    q = p
                seq = self._seq[p]
                if order.get(q, seq) >= seq:
                    order[q] = seq
        return sorted(order, key=order.__getitem__)

    def routable(self, name: str) -> list[str]:
        """What the box routes to router ``name``: its accepted prefixes no VPC prefix shadows."""
        r = self.routers.get(name)
        return [p for p in r.accepted if self.shadowed(p) is None] if r is not None else []

    def to_aws(self, vpn: str, family: int, static, limit: int | None) -> AwsPlan:
        """One tunnel's share: ``static`` is what it exports anyway (advertise, the default
        route), ``limit`` the gateway's (max_advertise; None: no limit)."""
        static = {canonical(p) for p in static}
        cands = [p for p in self.learned(vpn, family) if p not in static]
        room = len(cands) if limit is None else max(0, limit - len(static))
        return AwsPlan(tuple(cands[:room]), tuple(cands[room:]), room)


def _nets(prefixes) -> tuple:
    return tuple(ipaddress.ip_network(str(p)) for p in prefixes)


def summary_of(prefix: str, summaries) -> str | None:
    """The summary (an ip_network of ``summaries``) ``prefix`` lies inside, as a string."""
    if not summaries:
        return None
    net = ipaddress.ip_network(prefix)
    for sm in summaries:
        if sm.version == net.version and net.subnet_of(sm):
            return str(sm)
    return None


def _sort_key(p: str):
    n = ipaddress.ip_network(p)
    return (n.version, int(n.network_address), n.prefixlen)
