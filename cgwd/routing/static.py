"""Static routing (``routing = "static"``): no BGP; the VPN's configured prefixes
(``static_routes``) are carried by the tunnels that are alive.

AWS routes the on-prem prefixes configured on its side into the tunnels and sends over one
tunnel of its choosing; the customer gateway routes the VPC's CIDRs into the tunnels itself.
Per tunnel, a route source offers the static routes to the VPN's routing table while the
tunnel carries traffic (the daemon starts it when the tunnel's SA pair is installed and
stops it when DPD declares the peer dead or the last SA goes):

* the primary tunnel (the first one unless configured) offers them with preference 0, the
  others with 1: one tunnel carries the routes, the others are backups; with ``ecmp`` every
  tunnel offers 0 and the kernel spreads the traffic;
* a tunnel that comes back after an outage first offers them as a backup (a worse
  preference) for ``hold_down`` seconds: routes move to a returning tunnel only when it
  has stayed up that long, so a flapping tunnel does not flap the routes, while a tunnel
  that is the only one alive carries them at once;
* optional health check as AWS advises for static VPNs: an ICMP echo (ICMPv6 for an IPv6
  inside CIDR) to AWS's inside address through the tunnel every ``health_interval`` seconds;
  ``health_misses`` intervals without a reply count like DPD: the tunnel offers nothing until
  a reply comes again (then it returns through the hold-down), and :class:`HealthLost` tells
  the tunnel to act on IKE as DPD would (its ``dpd_action``). Only the first silence since a
  reply asks for that (``HealthLost.first``): when the check stays unanswered after IKE was
  renegotiated, renegotiating again would not help, so the tunnel keeps its SAs and the
  routes stay withdrawn until AWS's inside address answers.

:class:`StaticRoutes` is the sans-IO core (``now`` in; offered routes, probes, events and
one schedule of deadlines out; states as :class:`Carry`, what an input does in a state is
the :data:`_TRANSITIONS` table). :class:`StaticRouteSource` is its asyncio adapter (the
routing table's :class:`~cgwd.routing.source.RouteSource`); the ICMP socket lives in
:mod:`cgwd.routing.icmp`.
"""
from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
from collections import deque
from dataclasses import dataclass

from .source import ORIGINATED, LearnedPath

log = logging.getLogger("cgwd.routing.static")

PREF_PRIMARY = 0
PREF_BACKUP = 1
PREF_HELD = 2            # a returning tunnel during its hold-down (ECMP: 1)


@dataclass(frozen=True)
class StaticRoute:
    """A configured route as the RIB sees it (an :class:`~cgwd.routing.source.OfferedRoute`)."""
    prefix: str
    pref: tuple = (PREF_PRIMARY,)

    def preference(self) -> tuple:
        return self.pref

    def learned_path(self) -> LearnedPath:
        return ORIGINATED       # nobody announced it: announced further, cgwd originates it

    def describe(self) -> dict:
        return {"source": "static", "as_path": [], "as_path_str": "", "med": None,
                "preference": list(self.pref)}


class Carry(enum.StrEnum):
    DOWN = "down"            # the tunnel carries no traffic (no SA pair, peer dead, stopped)
    HOLD_DOWN = "hold-down"  # back after an outage: a backup until the hold-down ends
    UP = "up"                # offers the routes with its preference
    SILENT = "silent"        # the health check went unanswered: offers nothing


class Input(enum.StrEnum):
    UP = "up"                # the tunnel's SA pair is installed (start)
    DOWN = "down"            # the tunnel is lost (stop)
    REPLY = "reply"          # an echo reply from AWS's inside address
    HOLD_DOWN_END = "hold-down-end"
    SILENCE = "silence"      # health_misses intervals without a reply


class Timer(enum.StrEnum):
    HOLD_DOWN_END = "hold-down-end"
    PROBE = "probe"
    SILENCE = "silence"


_TIMER_INPUT = {Timer.HOLD_DOWN_END: Input.HOLD_DOWN_END, Timer.SILENCE: Input.SILENCE}

#: what an input does in a state (anything else: nothing)
_TRANSITIONS = {
    (Carry.DOWN, Input.UP): "_come_up",
    (Carry.HOLD_DOWN, Input.DOWN): "_go_down",
    (Carry.UP, Input.DOWN): "_go_down",
    (Carry.SILENT, Input.DOWN): "_go_down",
    (Carry.HOLD_DOWN, Input.HOLD_DOWN_END): "_hold_down_over",
    (Carry.UP, Input.SILENCE): "_go_silent",
    (Carry.HOLD_DOWN, Input.SILENCE): "_go_silent",
    (Carry.UP, Input.REPLY): "_alive",
    (Carry.HOLD_DOWN, Input.REPLY): "_alive",
    (Carry.SILENT, Input.REPLY): "_come_back",
}


@dataclass(frozen=True)
class StaticConfig:
    prefixes: tuple = ()
    primary: bool = True                 # this tunnel carries the routes when several are up
    ecmp: bool = False                   # every live tunnel carries them
    hold_down: float = 60.0              # seconds a returning tunnel is only a backup
    health_interval: float | None = None  # seconds between echo requests; None: no check
    health_misses: int = 3               # unanswered intervals that mean dead (like DPD)

    def __post_init__(self):
        object.__setattr__(self, "prefixes", tuple(dict.fromkeys(
            str(ipaddress.ip_network(str(p), strict=False)) for p in self.prefixes)))
        if self.hold_down < 0:
            raise ValueError("hold_down must be >= 0 seconds")
        if self.health_interval is not None and not self.health_interval > 0:
            raise ValueError("health_interval must be > 0 seconds (or None: no health check)")
        if self.health_misses < 1:
            raise ValueError("health_misses must be at least 1")


# ------------------------------------------------------------------- events
@dataclass
class RoutesChanged:
    routes: list                         # what the tunnel offers now (StaticRoute)


@dataclass
class HealthLost:
    reason: str
    #: the first silence since a reply (or since the check began): act on IKE as DPD would;
    #: False: still unanswered after that, IKE has been dealt with already
    first: bool = True


@dataclass
class HealthRestored:
    pass


@dataclass
class _Probe:
    seq: int
    sent_at: float


class StaticRoutes:
    """Sans-IO core of one tunnel's static routing."""

    def __init__(self, config: StaticConfig):
        self.config = config
        self.state = Carry.DOWN
        self._due: dict[Timer, float] = {}
        self._events: deque = deque()
        self._probes: list[int] = []
        self._outstanding: deque = deque(maxlen=64)
        self._seq = 0
        self._offered: tuple = ()
        self._carried_before = False
        self._silences_since_reply = 0
        # status
        self.since: float | None = None
        self.hold_down_until: float | None = None
        self.last_reply: float | None = None
        self.last_rtt: float | None = None
        self.reason = "not started"
        self.counters = {"probes_sent": 0, "replies": 0, "late_replies": 0, "silences": 0,
                         "hold_downs": 0, "downs": 0}

    # ------------------------------------------------------------ inputs
    def tunnel_up(self, now: float) -> None:
        self._input(Input.UP, now)

    def tunnel_down(self, now: float, reason: str = "") -> None:
        self._input(Input.DOWN, now, reason)

    def echo_reply(self, seq: int, now: float) -> None:
        """An ICMP echo reply from AWS's inside address with one of our sequence numbers."""
        sent = next((p for p in self._outstanding if p.seq == seq), None)
        if sent is None:
            self.counters["late_replies"] += 1
            return
        self.counters["replies"] += 1
        self._silences_since_reply = 0
        self.last_reply = now
        self.last_rtt = now - sent.sent_at
        self._input(Input.REPLY, now)

    def reconfigure(self, config: StaticConfig, now: float) -> list[str]:
        old, self.config = self.config, config
        changed = [f for f in StaticConfig.__dataclass_fields__ if getattr(old, f) != getattr(config, f)]
        if self.state == Carry.HOLD_DOWN and config.hold_down != old.hold_down:
            self._arm(Timer.HOLD_DOWN_END, now, (self.since or now) + config.hold_down)
        if config.health_interval != old.health_interval and self.state != Carry.DOWN:
            self._health_start(now)
        self._publish()
        return changed

    # ------------------------------------------------------------ timers
    def get_timer(self) -> float | None:
        return min(self._due.values()) if self._due else None

    def handle_timer(self, now: float) -> None:
        """Run exactly the entries due at ``now``."""
        due = sorted((at, t) for t, at in self._due.items() if at <= now)
        for _at, t in due:
            del self._due[t]
        for _at, t in due:
            if t == Timer.PROBE:
                self._probe(now)
            else:
                self._input(_TIMER_INPUT[t], now)

    # ------------------------------------------------------------ outputs
    def offered(self) -> list[StaticRoute]:
        return list(self._offered)

    def probes_to_send(self) -> list[int]:
        out, self._probes = self._probes, []
        return out

    def next_event(self):
        return self._events.popleft() if self._events else None

    def status(self) -> dict:
        c = self.config
        return {"state": self.state, "reason": self.reason, "since": self.since,
                "primary": c.primary, "ecmp": c.ecmp, "hold_down": c.hold_down,
                "hold_down_until": self.hold_down_until if self.state == Carry.HOLD_DOWN else None,
                "routes": [r.prefix for r in self._offered],
                "preference": list(self._offered[0].pref) if self._offered else None,
                "health_check": ({"interval": c.health_interval, "misses": c.health_misses,
                                  "last_reply": self.last_reply, "rtt": self.last_rtt,
                                  "silences_since_reply": self._silences_since_reply}
                                 if c.health_interval else None),
                "counters": dict(self.counters)}

    # ------------------------------------------------------------ transitions
    def _input(self, what: Input, now: float, reason: str = "") -> None:
        handler = _TRANSITIONS.get((self.state, what))
        if handler is not None:
            getattr(self, handler)(now, reason)

    def _come_up(self, now: float, _reason: str) -> None:
        self._enter_carrying(now)
        self._health_start(now)

    def _come_back(self, now: float, _reason: str) -> None:
        self._events.append(HealthRestored())
        self._enter_carrying(now)
        self._arm(Timer.SILENCE, now, now + self.config.health_interval * self.config.health_misses)

    def _enter_carrying(self, now: float) -> None:
        self.since = now
        if self._carried_before and self.config.hold_down > 0:
            self.state = Carry.HOLD_DOWN
            self.reason = f"back after an outage: a backup for {self.config.hold_down:g} s (hold-down)"
            self.hold_down_until = now + self.config.hold_down
            self.counters["hold_downs"] += 1
            self._arm(Timer.HOLD_DOWN_END, now, self.hold_down_until)
        else:
            self._up(now)
        self._carried_before = True
        self._publish()

    def _up(self, now: float) -> None:
        self.state = Carry.UP
        self.hold_down_until = None
        self.reason = "tunnel up" + (": primary" if self.config.primary or self.config.ecmp else ": backup")

    def _hold_down_over(self, now: float, _reason: str) -> None:
        self._up(now)
        self._publish()

    def _go_down(self, now: float, reason: str) -> None:
        self.state = Carry.DOWN
        self.since = now
        self.reason = reason or "tunnel down"
        self.hold_down_until = None
        self.counters["downs"] += 1
        self._due.clear()
        self._outstanding.clear()
        self._probes = []
        self._publish()

    def _go_silent(self, now: float, _reason: str) -> None:
        c = self.config
        self.state = Carry.SILENT
        self.since = now
        self.hold_down_until = None
        self._due.pop(Timer.HOLD_DOWN_END, None)
        first = self._silences_since_reply == 0
        self.reason = (f"health check: no echo reply from AWS's inside address for "
                       f"{c.health_interval * c.health_misses:g} s")
        self.counters["silences"] += 1
        self._events.append(HealthLost(self.reason, first=first))
        if not first:
            self.reason += " (still none since the tunnel came back: the routes return with the first reply)"
        self._silences_since_reply += 1
        self._publish()

    def _alive(self, now: float, _reason: str) -> None:
        c = self.config
        self._arm(Timer.SILENCE, now, now + c.health_interval * c.health_misses)

    # ------------------------------------------------------------ health check
    def _health_start(self, now: float) -> None:
        c = self.config
        if c.health_interval is None:
            self._due.pop(Timer.PROBE, None)
            self._due.pop(Timer.SILENCE, None)
            return
        self._probe(now)
        self._arm(Timer.SILENCE, now, now + c.health_interval * c.health_misses)

    def _probe(self, now: float) -> None:
        if self.state == Carry.DOWN or self.config.health_interval is None:
            return
        self._seq = (self._seq + 1) & 0xFFFF
        self._probes.append(self._seq)
        self._outstanding.append(_Probe(self._seq, now))
        self.counters["probes_sent"] += 1
        self._arm(Timer.PROBE, now, now + self.config.health_interval)

    # ------------------------------------------------------------ helpers
    def _arm(self, t: Timer, now: float, at: float) -> None:
        self._due[t] = at if at > now else now + 1e-3

    def _pref(self) -> tuple:
        c = self.config
        if self.state == Carry.HOLD_DOWN:
            return (PREF_BACKUP,) if c.ecmp else (PREF_HELD,)
        return (PREF_PRIMARY,) if (c.ecmp or c.primary) else (PREF_BACKUP,)

    def _publish(self) -> None:
        if self.state in (Carry.UP, Carry.HOLD_DOWN):
            pref = self._pref()
            new = tuple(StaticRoute(p, pref) for p in self.config.prefixes)
        else:
            new = ()
        if new != self._offered:
            self._offered = new
            self._events.append(RoutesChanged(list(new)))


def route_report(carriers: dict[str, list[str]], tunnels: list[dict]) -> list[dict]:
    """Per configured prefix of a static VPN connection (``carriers``: prefix -> the tunnels
    the routing table selected): who carries it, which tunnels stand by, and when none
    carries it, why (each tunnel's static state and reason). ``tunnels``: the status of the
    VPN's tunnels (``name``, ``enabled``, ``ike.state``, ``static``)."""
    out = []
    for prefix, carrying in carriers.items():
        ready = [t["name"] for t in tunnels if (t.get("static") or {}).get("state") in (Carry.UP, Carry.HOLD_DOWN)
                 and prefix in ((t.get("static") or {}).get("routes") or ())]
        backups = [n for n in ready if n not in carrying]
        reason = None
        if not carrying:
            reason = "; ".join(f"{t['name']} {_why_not(t, prefix)}" for t in tunnels) or "no tunnels"
        out.append({"prefix": prefix, "tunnels": list(carrying), "backups": backups, "reason": reason})
    return out


def _why_not(t: dict, prefix: str) -> str:
    st = t.get("static") or {}
    state, reason = st.get("state", Carry.DOWN), st.get("reason") or "-"
    if not t.get("enabled", True):
        return "disabled (enabled = false or `cgwctl down`)"
    if state == Carry.DOWN and reason == "not started":
        return f"has no IPsec SA yet (IKE {(t.get('ike') or {}).get('state', 'idle')})"
    if state in (Carry.UP, Carry.HOLD_DOWN):
        return (f"offers {prefix} but the routing table did not select it (refused or not in the kernel: "
                f"see `journalctl -u cgwd`)")
    return f"{state}: {reason}"


class StaticRouteSource:
    """asyncio adapter: one tunnel's static routes into the VPN's routing table.

    Daemon wiring, per tunnel of a static VPN::

        src = StaticRouteSource(tunnel_name, routing_table,
                                StaticConfig(static_routes, primary=i == primary_index, ecmp=vpn.ecmp,
                                             hold_down=60, health_interval=None or 10),
                                local_address=str(t.inside_local.ip), remote_address=str(t.inside_remote),
                                ifname=t.ifname, index=i, on_event=hook)
        await src.start()      # the first SA pair is installed (after routing.tunnel_up)
        await src.stop(why)    # PeerDead / last SA gone / admin down (after routing.tunnel_down)

    ``on_event(HealthLost(...))`` lets the daemon treat a silent health check like DPD.
    """
    kind = "static"

    def __init__(self, tunnel: str, routing, config: StaticConfig, *, local_address: str,
                 remote_address: str, ifname: str, index: int | None = None, on_event=None,
                 prober=None):
        self.tunnel = tunnel
        self.routing = routing
        self.core = StaticRoutes(config)
        self.local_address, self.remote_address, self.ifname = local_address, remote_address, ifname
        self.on_event = on_event
        self._make_prober = prober
        self._prober = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.prober_error: str | None = None
        routing.rib.add_tunnel(tunnel, index)

    # ------------------------------------------------------------ RouteSource
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._open_prober()
        self.core.tunnel_up(self._now())
        self._pump()

    async def stop(self, reason: str = "") -> None:
        if self._loop is None:
            return
        self.core.tunnel_down(self._now(), reason)
        self._pump()
        self._close_prober()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def reconfigure(self, **settings) -> list[str]:
        cfg = self.core.config
        new = StaticConfig(**{f: settings.get(f, getattr(cfg, f)) for f in StaticConfig.__dataclass_fields__})
        changed = self.core.reconfigure(new, self._now())
        if "health_interval" in changed and self._loop is not None:
            self._close_prober()
            if self.core.state != Carry.DOWN:
                self._open_prober()
        self._pump()
        return changed

    def status(self) -> dict:
        st = {"kind": self.kind, **self.core.status()}
        if self.prober_error:
            st["health_check_error"] = self.prober_error
        return st

    def offered(self) -> list:
        return self.core.offered()

    @property
    def carrying(self) -> bool:
        """Offering the routes now (up, or a backup during its hold-down)."""
        return self.core.state in (Carry.UP, Carry.HOLD_DOWN)

    # ------------------------------------------------------------ internals
    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _open_prober(self) -> None:
        if self.core.config.health_interval is None or self._prober is not None:
            return
        make = self._make_prober
        if make is None:
            from .icmp import IcmpEcho
            make = IcmpEcho
        try:
            self._prober = make(self.local_address, self.remote_address, self.ifname, self._on_reply)
            self._prober.open()
            self.prober_error = None
        except OSError as e:
            # no reply will come: the check fails closed (routes withdrawn), status says why
            self.prober_error = f"cannot open the ICMP socket: {e}"
            log.error("tunnel=%s event=health-check-failed error=%s", self.tunnel, e)
            self._prober = None

    def _close_prober(self) -> None:
        p, self._prober = self._prober, None
        if p is not None:
            p.close()

    def _on_reply(self, seq: int) -> None:
        self.core.echo_reply(seq, self._now())
        self._pump()

    def _on_timer(self) -> None:
        self._timer = None
        self.core.handle_timer(self._now())
        self._pump()

    def _pump(self) -> None:
        core = self.core
        for seq in core.probes_to_send():
            if self._prober is not None:
                try:
                    self._prober.send(seq)
                except OSError as e:
                    log.debug("tunnel=%s health check send failed: %s", self.tunnel, e)
        while (ev := core.next_event()) is not None:
            if isinstance(ev, RoutesChanged):
                self.routing.offer(self.tunnel, ev.routes)
                log.info("tunnel=%s event=static-routes state=%s routes=%d", self.tunnel, core.state,
                         len(ev.routes))
            elif isinstance(ev, HealthLost):
                log.warning("tunnel=%s event=health-check-lost reason=%s", self.tunnel, ev.reason)
            if self.on_event is not None:
                try:
                    self.on_event(ev)
                except Exception:
                    log.exception("tunnel=%s static route event handler failed", self.tunnel)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        t = core.get_timer()
        if t is not None and self._loop is not None:
            self._timer = self._loop.call_at(t, self._on_timer)

