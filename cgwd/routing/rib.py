"""Sans-IO RIB of one VPN connection: the paths every tunnel offers, the best across
tunnels, ECMP, fail-closed guards, FIB change sets.  Nothing here is BGP.

Each tunnel's route source offers routes (:class:`cgwd.routing.source.OfferedRoute`: a
prefix, a ``preference()`` tuple, lower is better, and ``describe()`` for status):

* *learned* routes (:meth:`Rib.update`, e.g. BGP) pass the VPN's import policy and the
  per-tunnel maximum prefix count; the refused ones are kept (soft reconfiguration), so a
  new policy or limit applies in place (:meth:`Rib.reconfigure`);
* *configured* routes (:meth:`Rib.offer`, e.g. static routing) replace what the tunnel
  offered before.

No route, learned or configured, may cover one of the ``protected`` addresses (the
tunnels' own outside addresses): installed, IKE and ESP to the endpoint would route into
the tunnel itself.  Refusals are counted per reason.

Best path: fresh over stale (graceful-restart retained paths lose to live ones), then the
source's preference (BGP: shortest AS_PATH, then lowest MED; static: the primary tunnel),
then the lower tunnel index, then the lower gateway address.  With ``ecmp`` every path
equal on the first two is used.

Fail closed: every prefix configured or ever learned is *guarded*; the kernel layer keeps an
unreachable route for it at a worse metric (``RibChanges.guard_add/guard_remove``).

Every method that changes the selection returns a :class:`RibChanges` (add / replace /
remove, guard_add / guard_remove) for the kernel layer.  No clock: times are arguments.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass, field

from ..bgp.policy import MAX_PREFIX_ACTIONS, ImportPolicy
from .source import LearnedPath

log = logging.getLogger("cgwd.routing.rib")

REFUSED_POLICY = "import_policy"
REFUSED_OUTSIDE = "covers_outside_address"
REFUSED_LIMIT = "max_prefix"
REFUSED_KEEP = 100_000        # refused routes kept per tunnel for reconfiguration
GUARDED_MAX = 100_000         # learned prefixes kept unreachable while no tunnel carries them
_PLEN = {str(i): i for i in range(33)}          # canonical IPv4 prefix lengths
_inet_pton, _AF_INET = socket.inet_pton, socket.AF_INET


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
    guard_add: set = field(default_factory=set)     # prefixes to keep unreachable (fail closed)
    guard_remove: set = field(default_factory=set)  # prefixes no longer guarded
    #: prefixes whose selected next hops stayed but whose selected route was replaced (a new
    #: AS path from the same tunnel): nothing for the kernel, but the LAN side re-reads the
    #: path it passes on (not counted in ``bool()``, which says whether the kernel has work)
    updated: set = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.remove or self.guard_add or self.guard_remove)

    def selection_touched(self) -> list:
        """Every prefix whose selection or selected route changed (the listeners' feed)."""
        return [*self.add, *self.replace, *self.remove, *(p for p in self.updated
                                                           if p not in self.add and p not in self.replace)]

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
        for p in other.guard_add:
            self.guard_remove.discard(p)
            self.guard_add.add(p)
        for p in other.guard_remove:
            if p in self.guard_add:
                self.guard_add.discard(p)
            self.guard_remove.add(p)
        self.updated |= other.updated
        return self


class _Protected:
    """Addresses no route may cover (a prefix covers an address when it contains it)."""

    def __init__(self, addresses=()):
        addrs = sorted({ipaddress.ip_address(str(a)) for a in addresses}, key=lambda a: (a.version, int(a)))
        self.addresses = tuple(str(a) for a in addrs)
        self._v4 = [int(a) for a in addrs if a.version == 4]
        self._v6 = [a for a in addrs if a.version == 6]

    def covered(self, prefix: str) -> str | None:
        """The first protected address ``prefix`` covers, or None."""
        if not self.addresses:
            return None
        if ":" not in prefix:
            addr_s, _sep, plen_s = prefix.partition("/")
            plen = _PLEN.get(plen_s)
            try:    # a canonical spelling (the decoder's): exactly what int() per part reads
                net = int.from_bytes(_inet_pton(_AF_INET, addr_s), "big") if plen is not None else None
            except (OSError, ValueError):
                net = None
            if net is None:
                try:
                    a, plen = prefix.split("/")
                    o = [int(x) for x in a.split(".")]
                    plen = int(plen)
                    net = (o[0] << 24) | (o[1] << 16) | (o[2] << 8) | o[3]
                except (ValueError, IndexError):
                    return None
            shift = 32 - plen
            for addr in self._v4:
                if shift >= 32 or (addr >> shift) == (net >> shift):
                    return str(ipaddress.IPv4Address(addr))
            return None
        try:
            n = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            return None
        for a in self._v6:
            if a in n:
                return str(a)
        return None


@dataclass
class _Tunnel:
    name: str
    index: int
    ifname: str | None = None
    gateway: str | None = None
    up: bool = False
    rib_in: dict = field(default_factory=dict)     # prefix -> route (accepted)
    refused: dict = field(default_factory=dict)    # prefix -> (route, reason), learned only
    stale: set = field(default_factory=set)
    stale_deadline: float | None = None
    rejected: int = 0
    reasons: dict = field(default_factory=dict)    # refusal reason -> count
    max_prefix_hit: bool = False
    configured: bool = False                       # offers configured (static) routes

    gw_int: int = 0

    def gw_key(self) -> int:
        return self.gw_int

    def count(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


class Rib:
    def __init__(self, *, ecmp: bool = False, import_policy: ImportPolicy | None = None,
                 max_prefix: int | None = 1000, max_prefix_action: str = "warn",
                 protected=(), fail_closed: bool = False, configured=()):
        if max_prefix_action not in MAX_PREFIX_ACTIONS:
            raise ValueError(f"max_prefix_action must be one of {MAX_PREFIX_ACTIONS}")
        self.ecmp = ecmp
        self.import_policy = import_policy or ImportPolicy("deny")
        self.max_prefix = max_prefix
        self.max_prefix_action = max_prefix_action
        self.protected = _Protected(protected)
        self.fail_closed = fail_closed
        self.configured: set = set()                      # configured prefixes (guarded)
        self.learned: set = set()                         # prefixes ever learned (guarded)
        self.guarded: set = set()                         # what the kernel keeps unreachable
        self.tunnels: dict[str, _Tunnel] = {}
        self._paths: dict[str, dict] = {}                 # prefix -> tunnel -> route
        self.selected: dict[str, tuple] = {}              # prefix -> tuple[NextHop]
        self._nh_cache: dict = {}                         # interned NextHop tuples
        self._logged_outside = 0
        self.set_configured(configured)

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
        """The tunnel cannot carry traffic: its routes leave the FIB at once and what it
        offered is forgotten (its route source is gone too)."""
        t = self._tunnel(name)
        t.up = False
        return self._clear(t)

    def _clear(self, t: _Tunnel) -> RibChanges:
        prefixes = list(t.rib_in)
        for p in prefixes:
            self._unpath(p, t.name)
        t.rib_in.clear()
        t.refused.clear()
        t.stale.clear()
        t.stale_deadline = None
        t.max_prefix_hit = False
        return self._recompute(prefixes)

    def _unpath(self, p: str, name: str) -> None:
        d = self._paths.get(p)
        if d is not None:
            d.pop(name, None)
            if not d:
                del self._paths[p]

    # ------------------------------------------------------------ guards (fail closed)
    def set_configured(self, prefixes) -> RibChanges:
        """The VPN's configured prefixes (static routes): guarded from the start."""
        new = set()
        for p in prefixes:
            p = str(ipaddress.ip_network(str(p), strict=False))
            if self.protected.covered(p) is None:
                new.add(p)
        self.configured = new
        return self._reguard()

    def _reguard(self) -> RibChanges:
        want = (self.configured | self.learned) if self.fail_closed else set()
        ch = RibChanges(guard_add=want - self.guarded, guard_remove=self.guarded - want)
        self.guarded = want
        return ch

    def inherit_guards(self, prefixes) -> RibChanges:
        """Prefixes a crashed run kept unreachable (its fail-closed routes, found at start):
        guarded as if learned, so that they stay unreachable, not sent in cleartext, until a
        tunnel carries them again (BGP learns them anew only once the tunnels are up)."""
        ch = RibChanges()
        for p in prefixes:
            p = str(ipaddress.ip_network(str(p), strict=False))
            if self.protected.covered(p) is None:
                self._learn(p, ch)
        return ch

    def _learn(self, p: str, ch: RibChanges) -> None:
        if p in self.learned or len(self.learned) >= GUARDED_MAX:
            return
        self.learned.add(p)
        if self.fail_closed and p not in self.guarded:
            self.guarded.add(p)
            ch.guard_add.add(p)

    # ------------------------------------------------------------ updates
    def _refuse(self, t: _Tunnel, r, reason: str, detail: str = "") -> None:
        t.count(reason)
        if len(t.refused) < REFUSED_KEEP:
            t.refused[r.prefix] = (r, reason)
        if reason == REFUSED_OUTSIDE and self._logged_outside < 20:
            self._logged_outside += 1
            log.warning("tunnel %s: %s refused: it covers the outside address %s (the tunnel "
                        "would carry its own IKE/ESP)", t.name, r.prefix, detail)

    def update(self, name: str, announced, withdrawn) -> tuple[RibChanges, str | None]:
        """Apply a batch of learned routes (e.g. one BGP UPDATE slice) from tunnel ``name``.

        Returns (changes, action) where action is "reset" when max-prefix with action
        reset was exceeded (the caller tears the session down with Cease/1).
        """
        t = self._tunnel(name)
        touched = []
        replaced = []          # accepted before, now with other attributes
        action = None
        rib_in, paths, stale, refused = t.rib_in, self._paths, t.stale, t.refused
        for p in withdrawn:
            refused.pop(p, None)
            if rib_in.pop(p, None) is not None:
                stale.discard(p)
                self._unpath(p, name)
                touched.append(p)
        ch = RibChanges()
        covered = self.protected.covered if self.protected.addresses else None
        limit = self.max_prefix
        learned, guarded, fail_closed, guard_add = self.learned, self.guarded, self.fail_closed, ch.guard_add
        if announced.__class__ is not list:
            announced = list(announced)
        verdicts = self.import_policy.accepted([r.prefix for r in announced])
        for r, ok in zip(announced, verdicts):
            p = r.prefix
            if not ok:
                reason, detail = REFUSED_POLICY, ""
            elif covered is not None and (detail := covered(p)) is not None:
                reason = REFUSED_OUTSIDE
            else:
                reason = None
            if reason is not None:
                self._refuse(t, r, reason, detail)
                if p in rib_in:       # previously accepted (policy changed): remove
                    del rib_in[p]
                    stale.discard(p)
                    self._unpath(p, name)
                    touched.append(p)
                continue
            if limit is not None and p not in rib_in and len(rib_in) >= limit:
                if not t.max_prefix_hit:
                    log.warning("tunnel %s: maximum prefix count %d reached (action %s)",
                                name, limit, self.max_prefix_action)
                t.max_prefix_hit = True
                if self.max_prefix_action == "drop":
                    self._refuse(t, r, REFUSED_LIMIT)
                    continue
                if self.max_prefix_action == "reset":
                    action = "reset"
                    break
            if refused:
                refused.pop(p, None)
            old = rib_in.get(p)
            if old is not None and old != r:
                replaced.append(p)
            rib_in[p] = r
            if stale:
                stale.discard(p)
            d = paths.get(p)
            if d is None:
                paths[p] = {name: r}
            else:
                d[name] = r
            touched.append(p)
            if p not in learned and len(learned) < GUARDED_MAX:
                learned.add(p)              # _learn(p, ch), inline
                if fail_closed and p not in guarded:
                    guarded.add(p)
                    guard_add.add(p)
        if action == "reset":
            return ch.merge(self._clear(t)), action
        # ch holds guard_add only: the selection changes go straight into it (what
        # ch.merge(self._recompute(touched)) would give, without a second pass)
        self._recompute(touched, ch)
        for p in replaced:
            if p not in ch.add and p not in ch.replace and any(nh.tunnel == name for nh in self.selected.get(p, ())):
                ch.updated.add(p)
        return ch, action

    def offer(self, name: str, routes) -> RibChanges:
        """Tunnel ``name`` now offers exactly ``routes`` (configured routes, e.g. static)."""
        t = self._tunnel(name)
        t.configured = True
        new = {}
        for r in routes:
            where = self.protected.covered(r.prefix)
            if where is not None:
                t.count(REFUSED_OUTSIDE)
                if self._logged_outside < 20:
                    self._logged_outside += 1
                    log.warning("tunnel %s: route %s refused: it covers the outside address %s",
                                name, r.prefix, where)
                continue
            new[r.prefix] = r
        touched = [p for p in t.rib_in if p not in new]
        for p in touched:
            self._unpath(p, name)
        for p, r in new.items():
            if t.rib_in.get(p) != r:
                self._paths.setdefault(p, {})[name] = r
                touched.append(p)
        t.rib_in = new
        t.stale.clear()
        return self._recompute(touched)

    def session_down(self, name: str, graceful: bool = False, restart_time: float = 0,
                     now: float = 0.0) -> RibChanges:
        """The route source over ``name`` ended.  graceful (RFC 4724 receiving speaker):
        keep the routes as stale for ``restart_time``; otherwise remove them."""
        t = self._tunnel(name)
        if graceful and restart_time > 0 and t.rib_in:
            t.stale = set(t.rib_in)
            t.stale_deadline = now + restart_time
            return self._recompute(list(t.stale))
        return self._clear(t)

    def end_of_rib(self, name: str, family: int | None = None) -> RibChanges:
        """End-of-RIB after a restart: stale routes not refreshed are removed (of ``family``,
        4 or 6, only: a session carrying both families sends one End-of-RIB per family)."""
        return self._flush_stale(self._tunnel(name), family)

    def _flush_stale(self, t: _Tunnel, family: int | None = None) -> RibChanges:
        if not t.stale:
            t.stale_deadline = None
            return RibChanges()
        prefixes = [p for p in t.stale if family is None or (6 if ":" in p else 4) == family]
        for p in prefixes:
            t.rib_in.pop(p, None)
            self._unpath(p, t.name)
            t.stale.discard(p)
        if not t.stale:
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

    # ------------------------------------------------------------ reconfiguration
    def reconfigure(self, *, ecmp: bool, import_policy: ImportPolicy, max_prefix: int | None,
                    max_prefix_action: str, protected=(), fail_closed: bool,
                    configured=()) -> tuple[RibChanges, list[str]]:
        """Apply new VPN-level settings in place: every tunnel's learned routes (accepted
        and refused) go through the new policy and limit again, best paths and guards are
        recomputed.  Returns (changes, tunnels whose session must be reset (max-prefix))."""
        if max_prefix_action not in MAX_PREFIX_ACTIONS:
            raise ValueError(f"max_prefix_action must be one of {MAX_PREFIX_ACTIONS}")
        self.ecmp = ecmp
        self.import_policy = import_policy or ImportPolicy("deny")
        self.max_prefix, self.max_prefix_action = max_prefix, max_prefix_action
        self.protected = _Protected(protected)
        self.fail_closed = fail_closed
        ch = RibChanges()
        resets = []
        for t in self.tunnels.values():
            if t.configured:
                ch.merge(self.offer(t.name, list(t.rib_in.values())))
                continue
            routes = list(t.rib_in.values()) + [r for r, _why in t.refused.values()]
            stale = set(t.stale)
            deadline = t.stale_deadline
            # re-run acceptance on the same routes: clear without recomputing the FIB yet
            for p in list(t.rib_in):
                self._unpath(p, t.name)
            t.rib_in, t.refused, t.stale = {}, {}, set()
            t.max_prefix_hit = False
            t.rejected, t.reasons = 0, {}
            sub, action = self.update(t.name, routes, [])
            ch.merge(sub)
            if action == "reset":
                resets.append(t.name)
            else:
                t.stale = stale & set(t.rib_in)
                t.stale_deadline = deadline if t.stale else None
        self.learned = {p for p in self.learned
                        if self.import_policy.accepts(p) and self.protected.covered(p) is None}
        ch.merge(self.set_configured(configured))
        ch.merge(self._recompute(list(self._paths) + list(self.selected)))
        return ch, resets

    # ------------------------------------------------------------ selection
    def _rank(self, t: _Tunnel, r, prefix: str) -> tuple:
        return (prefix in t.stale, r.preference())

    def best(self, prefix: str) -> list:
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

    def _nexthops(self, names: tuple) -> tuple:
        """The interned NextHop tuple of the tunnels ``names`` (as they are now)."""
        tunnels = self.tunnels
        key = tuple((n, tunnels[n].ifname, tunnels[n].gateway) for n in names)
        new = self._nh_cache.get(key)
        if new is None:
            new = self._nh_cache[key] = tuple(NextHop(*k) for k in key)
        return new

    def _recompute(self, prefixes, ch: RibChanges | None = None) -> RibChanges:
        """Re-select ``prefixes``; the changes go into ``ch`` (a new RibChanges by default,
        or one without add/replace/remove entries yet)."""
        if ch is None:
            ch = RibChanges()
        sel = self.selected
        paths = self._paths
        tunnels = self.tunnels
        only = {}              # tunnel -> its NextHop tuple when it is a prefix's only path
        for p in dict.fromkeys(prefixes):
            d = paths.get(p)
            if d is not None and len(d) == 1:
                # one path (best() would return it if its tunnel is up): the common case
                for name in d:
                    new = only.get(name)
                    if new is None:
                        new = only[name] = self._nexthops((name,) if tunnels[name].up else ())
            else:
                new = self._nexthops(tuple(n for n, _r in self.best(p)))
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
                row = {"prefix": p, "tunnel": name, "nexthop": t.gateway, "best": name in chosen,
                       "stale": p in t.stale}
                row.update(r.describe())
                if row["nexthop"] is None:
                    row["nexthop"] = row.get("bgp_next_hop")
                out.append(row)
        return out

    def learned_path(self, prefix: str) -> LearnedPath | None:
        """The path the selected route for ``prefix`` was learned with (the first of the
        selected tunnels: the best, or with ECMP the lowest index), or None when no tunnel
        carries it now."""
        sel = self.selected.get(prefix)
        if not sel:
            return None
        return self._paths[prefix][sel[0].tunnel].learned_path()

    def learned_paths(self, prefixes) -> dict[str, LearnedPath | None]:
        """``learned_path`` of each of ``prefixes`` (the LAN side's feed after a change)."""
        sel, paths = self.selected, self._paths
        out = {}
        for p in prefixes:
            nhs = sel.get(p)
            out[p] = paths[p][nhs[0].tunnel].learned_path() if nhs else None
        return out

    def carried(self) -> dict[str, LearnedPath]:
        """Every prefix a tunnel carries now with the path its selected route was learned with."""
        paths = self._paths
        return {p: paths[p][sel[0].tunnel].learned_path() for p, sel in self.selected.items()}

    def tunnel_routes(self, name: str) -> list:
        """What tunnel ``name`` offers now (accepted routes)."""
        t = self.tunnels.get(name)
        return list(t.rib_in.values()) if t is not None else []

    def prefix_count(self, name: str) -> int:
        """Accepted prefixes in the Adj-RIB-In of tunnel ``name``."""
        t = self.tunnels.get(name)
        return len(t.rib_in) if t is not None else 0

    def counts(self, name: str) -> dict:
        t = self._tunnel(name)
        return {"accepted": len(t.rib_in), "rejected": t.rejected, "stale": len(t.stale),
                "max_prefix_hit": t.max_prefix_hit, "refused": dict(t.reasons)}

    def unreachable(self) -> list[str]:
        """Guarded prefixes no tunnel carries now (the kernel has them unreachable)."""
        return sorted((p for p in self.guarded if p not in self.selected), key=_prefix_sort_key)


def _prefix_sort_key(p: str):
    try:
        n = ipaddress.ip_network(p)
        return (n.version, int(n.network_address), n.prefixlen)
    except ValueError:
        return (9, 0, 0)
