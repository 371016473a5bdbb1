"""The box's health from the tunnels' real state: one verdict, one line, one exit status.

Read from the daemon's status (``cgwctl status --json``): per VPN connection, which tunnels
carry traffic (IKE established, an SA pair installed, and the route source up: BGP
established or the static routes offered) and whether any prefix is carried at all.

=================  ===========================================================  ======
verdict            when                                                          exit
=================  ===========================================================  ======
``up``             every tunnel of every VPN carries and every VPN carries        0
``degraded``       every VPN carries, but one has lost redundancy (a tunnel     0 / 1
                   down, a prefix no tunnel carries)                            strict
``down``           some VPN carries nothing (no tunnel up, nothing learned),      1
                   no VPN configured, or the box does not forward
``unavailable``    cgwd not running, or no answer within the timeout              2
=================  ===========================================================  ======

keepalived's ``track_script`` with ``weight 0`` puts the instance into FAULT on any non-zero
exit, so 1 and 2 both hand the address to the peer; the two codes tell a monitor *why*.
Pure functions of the status dict: no socket, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Health", "HealthReport", "VpnHealth", "evaluate", "exit_code", "unavailable", "tunnel_carries"]


class Health(enum.IntEnum):
    """Ordered: the box's verdict is the worst of its VPNs'."""

    UP = 0
    DEGRADED = 1
    DOWN = 2
    UNAVAILABLE = 3

    @property
    def word(self) -> str:
        return self.name.lower()


#: verdict -> exit status (normal, --strict)
EXIT_CODES: dict[Health, tuple[int, int]] = {
    Health.UP: (0, 0),
    Health.DEGRADED: (0, 1),
    Health.DOWN: (1, 1),
    Health.UNAVAILABLE: (2, 2),
}

#: system findings (``status.system[].name``) that stop the box from forwarding at all
NOT_FORWARDING = frozenset({"ip_forward_off", "ipv6_forwarding_off"})

#: static route source states in which the tunnel offers its routes
STATIC_CARRYING = frozenset({"up", "hold-down"})


@dataclass(frozen=True)
class VpnHealth:
    name: str
    health: Health
    tunnels_up: tuple[str, ...]
    tunnels_down: tuple[str, ...]
    carried: int  # prefixes carried through this VPN's tunnels now
    unreachable: tuple[str, ...]  # configured/learned prefixes no tunnel carries
    why: str

    @property
    def line(self) -> str:
        return f"{self.name}: {self.why}"


@dataclass(frozen=True)
class HealthReport:
    health: Health
    reason: str
    vpns: tuple[VpnHealth, ...] = field(default_factory=tuple)

    def exit_code(self, strict: bool = False) -> int:
        return exit_code(self.health, strict)

    @property
    def line(self) -> str:
        """The one line of text saying why (``health: reason``)."""
        return f"{self.health.word}: {self.reason}"


def exit_code(health: Health, strict: bool = False) -> int:
    return EXIT_CODES[health][1 if strict else 0]


def unavailable(why: str) -> HealthReport:
    return HealthReport(Health.UNAVAILABLE, why)


def _state(part: object) -> str:
    return str((part or {}).get("state") or "").lower() if isinstance(part, dict) else ""


def tunnel_carries(t: dict, learned: int) -> tuple[bool, str]:
    """Whether tunnel ``t`` carries traffic now, and if not, the first thing missing.

    ``learned``: the routes through this tunnel in the status's ``routes[]`` (a BGP tunnel
    that is established but learned nothing carries nothing)."""
    if t.get("enabled") is False:
        return False, "disabled"
    ike = _state(t.get("ike"))
    if ike != "established":
        return False, f"IKE {ike or 'unknown'}"
    ipsec = t.get("ipsec") if isinstance(t.get("ipsec"), dict) else {}
    if _state(ipsec) != "installed" or ipsec.get("sas") == []:
        return False, "no SA installed"
    if "static" in t:
        st = _state(t.get("static"))
        if st not in STATIC_CARRYING:
            return False, f"static routes {st or 'unknown'}"
        return True, "up"
    bgp = t.get("bgp") if isinstance(t.get("bgp"), dict) else {}
    if _state(bgp) != "established":
        return False, f"BGP {_state(bgp) or 'unknown'}"
    received = bgp.get("prefixes_received")
    if not learned and not (isinstance(received, int) and received > 0):
        return False, "BGP established, nothing learned"
    return True, "up"


def _list(x: object) -> list:
    """A status field that should be a list, or [] (whatever else the JSON holds)."""
    return x if isinstance(x, list) else []


def _name(x: object) -> str | None:
    return x if isinstance(x, str) else None


def _vpn_names(status: dict) -> list[str]:
    names: list[str] = []
    for v in _list(status.get("vpns")):
        if isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"] not in names:
            names.append(v["name"])
    for t in _list(status.get("tunnels")):
        if isinstance(t, dict) and isinstance(t.get("vpn"), str) and t["vpn"] not in names:
            names.append(t["vpn"])
    return names


def _vpn(name: str, tunnels: list[dict], vpn: dict, routes: list[dict]) -> VpnHealth:
    by_tunnel: dict[str, int] = {}
    carried: set[str] = set()
    names = {_name(t.get("name")) for t in tunnels} - {None}
    for r in routes:
        tn = _name(r.get("tunnel"))
        if tn in names:
            by_tunnel[tn] = by_tunnel.get(tn, 0) + 1
    up, down, missing = [], [], []
    for t in tunnels:
        ok, why = tunnel_carries(t, by_tunnel.get(_name(t.get("name")) or "", 0))
        (up if ok else down).append(str(t.get("name")))
        if not ok:
            missing.append(f"{t.get('name')} {why}")
    for r in routes:
        if _name(r.get("tunnel")) in up and r.get("best", True) and isinstance(r.get("prefix"), str):
            carried.add(r["prefix"])
    carriers = vpn.get("carriers")
    for prefix, via in (carriers.items() if isinstance(carriers, dict) else ()):
        if isinstance(via, list) and any(v in up for v in via):
            carried.add(prefix)
    unreachable = tuple(str(p) for p in _list(vpn.get("unreachable")) if str(p) not in carried)
    n = len(tunnels)
    if not tunnels:
        return VpnHealth(name, Health.DOWN, (), (), 0, unreachable, "no tunnels")
    if not up:
        return VpnHealth(name, Health.DOWN, (), tuple(down), 0, unreachable,
                         f"no tunnel up ({', '.join(missing)})")
    if not carried:
        return VpnHealth(name, Health.DOWN, tuple(up), tuple(down), 0, unreachable,
                         f"{len(up)}/{n} tunnels up but no prefix carried")
    if down or unreachable:
        parts = [f"{len(up)}/{n} tunnels up"] + missing
        if unreachable:
            parts.append(f"unreachable {', '.join(unreachable)}")
        return VpnHealth(name, Health.DEGRADED, tuple(up), tuple(down), len(carried), unreachable,
                         "; ".join(parts))
    return VpnHealth(name, Health.UP, tuple(up), (), len(carried), (),
                     f"{n}/{n} tunnels up, {len(carried)} prefixes carried")


def evaluate(status: object) -> HealthReport:
    """The box's verdict from a status dict as ``cgwctl status --json`` prints it."""
    if not isinstance(status, dict) or not isinstance(status.get("tunnels"), list):
        return HealthReport(Health.UNAVAILABLE, "cgwd answered without a status (no tunnels list)")
    tunnels = [t for t in status["tunnels"] if isinstance(t, dict)]
    routes = [r for r in _list(status.get("routes")) if isinstance(r, dict)]
    vpns_cfg = {v["name"]: v for v in _list(status.get("vpns")) if isinstance(v, dict) and isinstance(v.get("name"), str)}
    system = [f.get("name") for f in _list(status.get("system")) if isinstance(f, dict)]
    names = _vpn_names(status)
    if not names:
        return HealthReport(Health.DOWN, "no VPN connection configured")
    vpns = tuple(_vpn(n, [t for t in tunnels if t.get("vpn") == n], vpns_cfg.get(n, {}), routes) for n in names)
    worst = max(v.health for v in vpns)
    stop = sorted(set(system) & NOT_FORWARDING)
    if stop:
        return HealthReport(Health.DOWN, f"the box does not forward ({', '.join(stop)}); "
                            + "; ".join(v.line for v in vpns), vpns)
    total = sum(len(v.tunnels_up) + len(v.tunnels_down) for v in vpns)
    ups = sum(len(v.tunnels_up) for v in vpns)
    if worst == Health.UP:
        reason = f"{ups}/{total} tunnels up, {len(vpns)} VPN(s) carrying"
        if len(vpns) == 1:
            reason = vpns[0].line
    else:
        reason = "; ".join(v.line for v in vpns if v.health == worst)
        others = [f"{v.name} {v.health.word}" for v in vpns if v.health != worst]
        if others:
            reason += f" ({', '.join(others)})"
    return HealthReport(worst, reason, vpns)
