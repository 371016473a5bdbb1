"""Sans-IO RIB: Adj-RIB-In per tunnel, best path across tunnels, FIB change sets.

Best path (AWS semantics, eBGP to the same neighbour AS on every tunnel):
  1. fresh over stale (graceful-restart retained paths lose to live ones)
  2. shortest AS_PATH (AS_SET counts 1)
  3. lowest MED, compared always (AWS sets MED across tunnels; missing MED = 0)
  4. lower tunnel index, then lower gateway address (stable tie-break)
With ``ecmp`` every path equal on 1-3 is used (Transit Gateway).

Every method that changes the selection returns a :class:`RibChanges`
(add / replace / remove) for the kernel layer.  No clock: times are arguments.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field

from .message import Route
from .policy import ImportPolicy, MAX_PREFIX_ACTIONS

log = logging.getLogger("cgwd.bgp.rib")


@dataclass(frozen=True)
class NextHop:
    tunnel: str
    ifname: str
    gateway: str


@dataclass
class RibChanges:
    add: dict = field(default_factory=dict)       # prefix -> tuple[NextHop, ...]
    replace: dict = field(default_factory=dict)   # prefix -> tuple[NextHop, ...]
    remove: list = field(default_factory=list)    # prefixes

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.remove)

    def merge(self, other: "RibChanges") -> "RibChanges":
        """Combine two successive change sets into one equivalent set."""
        for p, nh in other.add.items():
            if p in self.remove:
                self.remove.remove(p)
                self.replace[p] = nh
            else:
                self.add[p] = nh
        for p, nh in other.replace.items():
            if p in self.add:
                self.add[p] = nh
            else:
                self.replace[p] = nh
        for p in other.remove:
            if p in self.add:
                del self.add[p]
            else:
                self.replace.pop(p, None)
                self.remove.append(p)
        return self


@dataclass
class _Tunnel:
    name: str
    index: int
    ifname: str | None = None
    gateway: str | None = None
    up: bool = False
    rib_in: dict = field(default_factory=dict)     # prefix -> Route (accepted)
    stale: set = field(default_factory=set)
    stale_deadline: float | None = None
    rejected: int = 0
    max_prefix_hit: bool = False

    gw_int: int = 0

    def gw_key(self) -> int:
        return self.gw_int


class Rib:
    def __init__(self, *, ecmp: bool = False, import_policy: ImportPolicy | None = None,
                 max_prefix: int | None = 1000, max_prefix_action: str = "warn"):
        if max_prefix_action not in MAX_PREFIX_ACTIONS:
            raise ValueError(f"max_prefix_action must be one of {MAX_PREFIX_ACTIONS}")
        self.ecmp = ecmp
        self.import_policy = import_policy or ImportPolicy("deny")
        self.max_prefix = max_prefix
        self.max_prefix_action = max_prefix_action
        self.tunnels: dict[str, _Tunnel] = {}
        self._paths: dict[str, dict[str, Route]] = {}     # prefix -> tunnel -> Route
        self.selected: dict[str, tuple] = {}              # prefix -> tuple[NextHop]
        self._nh_cache: dict = {}                         # interned NextHop tuples

    # ------------------------------------------------------------ tunnels
    def _tunnel(self, name: str) -> _Tunnel:
        t = self.tunnels.get(name)
        if t is None:
            t = _Tunnel(name, len(self.tunnels))
            self.tunnels[name] = t
        return t

    def add_tunnel(self, name: str, index: int | None = None) -> None:
        t = self._tunnel(name)
        if index is not None:
            t.index = index

    def tunnel_up(self, name: str, ifname: str, gateway: str, index: int | None = None) -> RibChanges:
        t = self._tunnel(name)
        if index is not None:
            t.index = index
        t.ifname, t.gateway, t.up = ifname, gateway, True
        try:
            t.gw_int = int(ipaddress.ip_address(gateway)) if gateway else 0
        except ValueError:
            t.gw_int = 0
        return self._recompute(list(t.rib_in))

    def tunnel_down(self, name: str) -> RibChanges:
        """The tunnel cannot carry traffic: its routes leave the FIB at once and its
        Adj-RIB-In is cleared (the BGP session over it is gone too)."""
        t = self._tunnel(name)
        t.up = False
        return self._clear(t)

    def _clear(self, t: _Tunnel) -> RibChanges:
        prefixes = list(t.rib_in)
        for p in prefixes:
            d = self._paths.get(p)
            if d is not None:
                d.pop(t.name, None)
                if not d:
                    del self._paths[p]
        t.rib_in.clear()
        t.stale.clear()
        t.stale_deadline = None
        t.max_prefix_hit = False
        return self._recompute(prefixes)

    # ------------------------------------------------------------ updates
    def update(self, name: str, announced, withdrawn) -> tuple[RibChanges, str | None]:
        """Apply an UPDATE batch from tunnel ``name``.

        Returns (changes, action) where action is "reset" when max-prefix with action
        reset was exceeded (the caller tears the session down with Cease/1).
        """
        t = self._tunnel(name)
        touched = []
        action = None
        rib_in, paths, stale = t.rib_in, self._paths, t.stale
        for p in withdrawn:
            if rib_in.pop(p, None) is not None:
                stale.discard(p)
                d = paths.get(p)
                if d is not None:
                    d.pop(name, None)
                    if not d:
                        del paths[p]
                touched.append(p)
        accepts = self.import_policy.accepts
        limit = self.max_prefix
        for r in announced:
            p = r.prefix
            if not accepts(p):
                t.rejected += 1
                if p in rib_in:       # previously accepted (policy changed): remove
                    del rib_in[p]
                    stale.discard(p)
                    paths.get(p, {}).pop(name, None)
                    touched.append(p)
                continue
            if p not in rib_in and limit is not None and len(rib_in) >= limit:
                if not t.max_prefix_hit:
                    log.warning("tunnel %s: maximum prefix count %d reached (action %s)",
                                name, limit, self.max_prefix_action)
                t.max_prefix_hit = True
                if self.max_prefix_action == "drop":
                    continue
                if self.max_prefix_action == "reset":
                    action = "reset"
                    break
            rib_in[p] = r
            stale.discard(p)
            d = paths.get(p)
            if d is None:
                paths[p] = {name: r}
            else:
                d[name] = r
            touched.append(p)
        if action == "reset":
            return self._clear(t), action
        return self._recompute(touched), action

    def session_down(self, name: str, graceful: bool = False, restart_time: float = 0,
                     now: float = 0.0) -> RibChanges:
        """BGP session over ``name`` ended.  graceful (RFC 4724 receiving speaker): keep
        the routes as stale for ``restart_time``; otherwise remove them."""
        t = self._tunnel(name)
        if graceful and restart_time > 0 and t.rib_in:
            t.stale = set(t.rib_in)
            t.stale_deadline = now + restart_time
            return self._recompute(list(t.stale))
        return self._clear(t)

    def end_of_rib(self, name: str) -> RibChanges:
        """End-of-RIB after a restart: stale routes not refreshed are removed."""
        t = self._tunnel(name)
        return self._flush_stale(t)

    def _flush_stale(self, t: _Tunnel) -> RibChanges:
        if not t.stale:
            t.stale_deadline = None
            return RibChanges()
        prefixes = list(t.stale)
        for p in prefixes:
            t.rib_in.pop(p, None)
            d = self._paths.get(p)
            if d is not None:
                d.pop(t.name, None)
                if not d:
                    del self._paths[p]
        t.stale.clear()
        t.stale_deadline = None
        return self._recompute(prefixes)

    def expire_stale(self, now: float) -> RibChanges:
        ch = RibChanges()
        for t in self.tunnels.values():
            if t.stale_deadline is not None and now >= t.stale_deadline:
                ch.merge(self._flush_stale(t))
        return ch

    def get_timer(self) -> float | None:
        ds = [t.stale_deadline for t in self.tunnels.values() if t.stale_deadline is not None]
        return min(ds) if ds else None

    # ------------------------------------------------------------ selection
    def _rank(self, t: _Tunnel, r: Route, prefix: str) -> tuple:
        return (prefix in t.stale, r.as_path_length(), r.med or 0)

    def best(self, prefix: str) -> list[tuple[str, Route]]:
        """The selected (tunnel, route) pairs for ``prefix`` (several with ECMP)."""
        d = self._paths.get(prefix)
        if not d:
            return []
        if len(d) == 1:
            for name, r in d.items():
                return [(name, r)] if self.tunnels[name].up else []
        cands = []
        for name, r in d.items():
            t = self.tunnels[name]
            if not t.up:
                continue
            cands.append((self._rank(t, r, prefix), t.index, t.gw_key(), name, r))
        if not cands:
            return []
        cands.sort(key=lambda c: c[:4])
        if not self.ecmp:
            return [(cands[0][3], cands[0][4])]
        top = cands[0][0]
        return [(c[3], c[4]) for c in cands if c[0] == top]

    def _recompute(self, prefixes) -> RibChanges:
        ch = RibChanges()
        sel = self.selected
        tunnels = self.tunnels
        cache = self._nh_cache
        for p in dict.fromkeys(prefixes):
            names = tuple(n for n, _r in self.best(p))
            key = tuple((n, tunnels[n].ifname, tunnels[n].gateway) for n in names)
            new = cache.get(key)
            if new is None:
                new = cache[key] = tuple(NextHop(*k) for k in key)
            old = sel.get(p)
            if new:
                if old is None:
                    ch.add[p] = new
                elif old != new:
                    ch.replace[p] = new
                else:
                    continue
                sel[p] = new
            elif old is not None:
                ch.remove.append(p)
                del sel[p]
        return ch

    # ------------------------------------------------------------ views
    def routes(self) -> list[dict]:
        out = []
        for p in sorted(self._paths, key=_prefix_sort_key):
            chosen = {nh.tunnel for nh in self.selected.get(p, ())}
            for name, r in sorted(self._paths[p].items(), key=lambda kv: self.tunnels[kv[0]].index):
                t = self.tunnels[name]
                out.append({
                    "prefix": p, "tunnel": name, "nexthop": t.gateway or r.next_hop,
                    "bgp_next_hop": r.next_hop, "as_path": r.as_path_list(),
                    "as_path_str": r.as_path_str(), "med": r.med, "best": name in chosen,
                    "stale": p in t.stale,
                })
        return out

    def prefix_count(self, name: str) -> int:
        """Accepted prefixes in the Adj-RIB-In of tunnel ``name``."""
        t = self.tunnels.get(name)
        return len(t.rib_in) if t is not None else 0

    def counts(self, name: str) -> dict:
        t = self._tunnel(name)
        return {"accepted": len(t.rib_in), "rejected": t.rejected, "stale": len(t.stale),
                "max_prefix_hit": t.max_prefix_hit}


def _prefix_sort_key(p: str):
    try:
        n = ipaddress.ip_network(p)
        return (n.version, int(n.network_address), n.prefixlen)
    except ValueError:
        return (9, 0, 0)
