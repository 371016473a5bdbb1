"""Sans-IO BGP-4 session (RFC 4271 FSM, 4724 receiving speaker, 6793, 2918, 7606).

Shape follows aioquic: inputs take ``now`` (monotonic seconds); outputs are polled
(:meth:`BgpSession.data_to_send`, :meth:`get_timer`, :meth:`next_event`,
:meth:`wants_connect`, :meth:`connections_to_close`).  No clock, socket or sleep here.

A session may have up to two TCP connections at a time (one we opened, ``outbound=True``,
and one the peer opened): both run the OPEN exchange and collision detection
(RFC 4271 6.8) keeps one.  With a single connection the ``outbound`` keyword of
``receive_data``/``data_to_send``/``connection_lost`` may be left out.

States are :class:`State`; what a message does in a state is the :data:`_DISPATCH` table.
Timers are **one schedule** (:class:`_Schedule`) of ``(deadline, action)`` entries:
``get_timer()`` is its earliest deadline and ``handle_timer(now)`` pops and runs exactly
the entries due, so after ``handle_timer(t)`` the next deadline is None or later than t.

Maximum-prefix teardown (Cease / 1, sent by us on the RIB's request or received from the
peer) restarts after a growing delay, as BIRD's ``receive limit ... action restart`` with
its ``error wait time`` and ``error forget time``: ``limit_restart`` seconds, doubled on every
trip up to ``limit_restart_max``, forgotten after ``limit_forget`` seconds of a session that
stayed up; ``limit_restart=None`` keeps the session down until :meth:`restart`.
"""
from __future__ import annotations

import enum
import ipaddress
import logging
import struct
import zlib
from collections import deque
from dataclasses import dataclass

from . import message as m
from .message import BgpError, Route

log = logging.getLogger("cgwd.bgp.session")


class State(enum.StrEnum):
    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPENSENT = "OpenSent"
    OPENCONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"


IDLE, CONNECT, ACTIVE, OPENSENT, OPENCONFIRM, ESTABLISHED = State
_RANK = {IDLE: 0, CONNECT: 1, ACTIVE: 1, OPENSENT: 2, OPENCONFIRM: 3, ESTABLISHED: 4}


class Timer(enum.StrEnum):
    """The actions of the session's one schedule."""
    CONNECT_RETRY = "connect-retry"     # Connect/Active: open a new TCP connection
    RESTART = "restart"                 # Idle: automatic start (idle hold, max-prefix delay)
    HOLD = "hold"                       # per connection: the peer said nothing for too long
    KEEPALIVE = "keepalive"             # per connection: our KEEPALIVE is due


LARGE_HOLD = 240.0          # RFC 4271 8: hold timer while waiting for OPEN
MAX_IDLE_HOLD = 60.0
DEFAULT_LOCAL_PREF = 100     # RFC 4271 5.1.5: what we send an internal peer
MAX_PEER_RESTART_TIME = 360  # bound on the peer's graceful-restart time (FRR's stalepath-time)


@dataclass
class BgpPeerConfig:
    local_address: str
    remote_address: str
    local_asn: int
    remote_asn: int
    router_id: str
    hold_time: int = 30
    keepalive: float | None = None      # None: hold/3
    connect_retry: float = 5
    passive: bool = False
    ipv6: bool = False                  # IPv6 unicast (RFC 4760 MP-BGP, RFC 2545 next hops)
    ipv4: bool = True                   # IPv4 unicast; False with ipv6: an IPv6-only session
    link_local_next_hop: str | None = None  # sent after the global next hop (RFC 2545 3)
    graceful_restart: bool = True       # receiving speaker (helper) procedures
    restart_time: int = 120             # what we advertise in our GR capability
    max_peer_restart_time: int = MAX_PEER_RESTART_TIME   # longest stale time we grant the peer
    limit_restart: float | None = 60.0  # first delay after a max-prefix teardown; None: stay down
    limit_restart_max: float = 300.0
    limit_forget: float = 300.0

    def __post_init__(self):
        if not self.connect_retry > 0:
            raise ValueError(f"connect_retry must be > 0 (got {self.connect_retry})")
        if self.keepalive is not None and not self.keepalive > 0:
            raise ValueError(f"keepalive must be > 0 seconds or None for hold/3 (got {self.keepalive})")
        if self.limit_restart is not None and not 0 < self.limit_restart <= self.limit_restart_max:
            raise ValueError("limit_restart must be > 0 and <= limit_restart_max, or None")
        if not 0 <= self.max_peer_restart_time <= 4095:
            raise ValueError("max_peer_restart_time must be 0..4095 seconds")
        if not (self.ipv4 or self.ipv6):
            raise ValueError("a BGP session carries IPv4 unicast, IPv6 unicast or both")
        if self.link_local_next_hop is not None and \
                not ipaddress.IPv6Address(self.link_local_next_hop).is_link_local:
            raise ValueError(f"link_local_next_hop {self.link_local_next_hop} is not link-local (fe80::/10)")
        try:
            _rid_int(self.router_id)
        except ValueError:
            raise ValueError(f"router_id {self.router_id!r} must be a 4-octet BGP Identifier written as "
                             "an IPv4 address (derive_router_id() makes one for an IPv6 address)") from None

    @property
    def families(self) -> frozenset:
        """The (AFI, SAFI) pairs we offer in OPEN (RFC 4760 capability 1)."""
        return frozenset(f for f, on in (((m.AFI_IPV4, m.SAFI_UNICAST), self.ipv4),
                                         ((m.AFI_IPV6, m.SAFI_UNICAST), self.ipv6)) if on)


def derive_router_id(address: str) -> str:
    """A BGP Identifier (4 octets, RFC 6286) for a speaker known by ``address``: an IPv4
    address is its own; an IPv6 one (a gateway with only IPv6 outside addresses) maps to a
    stable value in 1.0.0.0-223.255.255.255 (unicast-looking, as peers' checks expect)."""
    addr = ipaddress.ip_address(address)
    if addr.version == 4:
        return str(addr)
    folded = zlib.crc32(addr.packed)       # a checksum to spread the bits, not a secret
    return str(ipaddress.IPv4Address(0x01000000 + folded % 0xDF000000))


def family_of(prefix: str) -> tuple[int, int]:
    """(AFI, SAFI unicast) of a prefix string."""
    return (m.AFI_IPV6 if ":" in prefix else m.AFI_IPV4, m.SAFI_UNICAST)


def family_name(fam: tuple[int, int]) -> str:
    afi, safi = fam
    return f"{'ipv4' if afi == 1 else 'ipv6' if afi == 2 else afi}/{'unicast' if safi == 1 else safi}"


# ------------------------------------------------------------------- events
@dataclass
class SessionUp:
    peer_hold: int
    capabilities: dict
    hold_time: int = 0
    keepalive: float = 0
    peer_asn: int = 0
    peer_id: str = ""


@dataclass
class SessionDown:
    reason: str
    notification: tuple | None = None    # (code, subcode, data)
    sent: bool = False                   # True: we sent it; False: received
    graceful_restart: bool = False       # keep the peer's routes as stale (RFC 4724)
    restart_time: int = 0                # bounded by max_peer_restart_time


@dataclass
class RoutesReceived:
    announced: list
    withdrawn: list


@dataclass
class EndOfRib:
    afi: int = m.AFI_IPV4
    safi: int = m.SAFI_UNICAST


# ------------------------------------------------------------------- schedule
class _Schedule:
    """(action, connection direction) -> deadline: the session's only timers."""
    __slots__ = ("_due",)

    def __init__(self):
        self._due: dict[tuple[Timer, bool | None], float] = {}

    def arm(self, action: Timer, at: float, outbound: bool | None = None) -> None:
        self._due[(action, outbound)] = at

    def cancel(self, action: Timer, outbound: bool | None = None) -> None:
        self._due.pop((action, outbound), None)

    def cancel_conn(self, outbound: bool) -> None:
        self._due.pop((Timer.HOLD, outbound), None)
        self._due.pop((Timer.KEEPALIVE, outbound), None)

    def at(self, action: Timer, outbound: bool | None = None) -> float | None:
        return self._due.get((action, outbound))

    def next(self) -> float | None:
        return min(self._due.values()) if self._due else None

    def pop_due(self, now: float) -> list[tuple[Timer, bool | None]]:
        due = sorted((at, k) for k, at in self._due.items() if at <= now)
        for _at, k in due:
            del self._due[k]
        return [k for _at, k in due]


# ------------------------------------------------------------------- connection
class _Conn:
    __slots__ = ("outbound", "state", "buf", "out", "hold", "ka", "peer_open", "closing")

    def __init__(self, outbound: bool):
        self.outbound = outbound
        self.state = OPENSENT
        self.buf = bytearray()
        self.out = bytearray()
        self.hold = 0
        self.ka = 0.0
        self.peer_open: m.Open | None = None
        self.closing = False


def _rid_int(rid: str) -> int:
    return int(ipaddress.IPv4Address(rid))


_IPV4_ONLY = frozenset({(m.AFI_IPV4, m.SAFI_UNICAST)})

#: what each message does in each connection state (NOTIFICATION: in every state)
_DISPATCH = {
    (OPENSENT, m.OPEN): "_on_open",
    (OPENCONFIRM, m.KEEPALIVE): "_on_confirm",
    (ESTABLISHED, m.KEEPALIVE): "_on_keepalive",
    (ESTABLISHED, m.UPDATE): "_on_update",
    (ESTABLISHED, m.ROUTE_REFRESH): "_on_route_refresh",
}
#: RFC 4271 6.6: FSM error subcode for an unexpected message in a state
_FSM_ERROR = {OPENSENT: 1, OPENCONFIRM: 2, ESTABLISHED: 3}
#: what a due timer does
_TIMER_ACTIONS = {
    Timer.CONNECT_RETRY: "_on_connect_retry",
    Timer.RESTART: "_on_restart",
    Timer.HOLD: "_on_hold_expired",
    Timer.KEEPALIVE: "_on_keepalive_due",
}


class BgpSession:
    def __init__(self, config: BgpPeerConfig):
        self.config = config
        self._base = IDLE                      # state when no connection is past Connect
        self._started = False
        self._conns: dict[bool, _Conn] = {}
        self._to_close: list[bool] = []
        self._events: deque = deque()
        self._want_connect = False
        self._timers = _Schedule()
        self._established: _Conn | None = None
        self._as4 = True
        self._families: frozenset = config.families   # negotiated (our offer until OPEN)
        self._peer_caps: dict = {}
        self._peer_gr: dict | None = None
        self._rib_out: dict[str, Route] = {}
        self._pending_adv: dict[str, Route] = {}
        self._pending_wd: dict[str, None] = {}
        self._rib_in: set = set()
        self._batch: dict = {}
        self._batch_withdraws = False           # some value in _batch is None
        self._failures = 0
        self._closed: dict[bool, _Conn] = {}    # dropped, output not yet drained
        self._limit_trips = 0                   # max-prefix teardowns not yet forgotten
        self._limit_wait = False                # the pending RESTART is a max-prefix delay
        # status
        self.uptime_since: float | None = None
        self.msgs_in = {n: 0 for n in m.MESSAGE_NAMES.values()}
        self.msgs_out = {n: 0 for n in m.MESSAGE_NAMES.values()}
        self.last_error = ""
        self.last_error_at: float | None = None
        self.updates_treated_as_withdraw = 0
        self.unnegotiated_ignored = 0          # NLRI of a family the session does not carry
        self.peer_id = ""
        self.peer_asn = config.remote_asn
        self.negotiated_hold = 0
        self.negotiated_keepalive = 0.0
        self.flaps = 0
        self.limit_resets = 0                   # max-prefix teardowns since start
        self.restart_delay: float | None = None  # the delay of the pending automatic restart
        self.held_down = False                   # max-prefix teardown without automatic restart
        self.export_skipped: set = set()

    # ------------------------------------------------------------ public API
    @property
    def ibgp(self) -> bool:
        """An internal session (RFC 4271 5.1): our ASN is the peer's (a LAN router of ours)."""
        return self.config.local_asn == self.config.remote_asn

    @property
    def state(self) -> State:
        best = self._base
        for c in self._conns.values():
            if not c.closing and _RANK[c.state] > _RANK[best]:
                best = c.state
        return best

    def start(self, now: float) -> None:
        """ManualStart (event 1); passive configs go to Active (event 4)."""
        if self._started:
            return
        self._started = True
        self.held_down = False
        self._go_connect(now)

    def restart(self, now: float) -> None:
        """Operator: start again now, ending a max-prefix delay (or a stay-down)."""
        self._limit_trips = 0
        self.held_down = False
        self._limit_wait = False
        self.restart_delay = None
        if not self._started:
            self.start(now)
        elif self._base == IDLE and not self._conns:
            self._timers.cancel(Timer.RESTART)
            self._go_connect(now)

    def stop(self, now: float, reason: str = "") -> None:
        """ManualStop (event 2): Cease/Administrative Shutdown on every connection."""
        self._started = False
        was_up = self._established is not None
        if self._conns:
            self.last_error = "sent: Cease / Administrative Shutdown" + (f": {reason}" if reason else "")
            self.last_error_at = now
        for c in list(self._conns.values()):
            if c.state != CONNECT:
                self._send_notification(c, 6, 2, m.shutdown_data(reason) if reason else b"")
            self._drop(c)
        self._base = IDLE
        self._timers.cancel(Timer.CONNECT_RETRY)
        self._timers.cancel(Timer.RESTART)
        self.restart_delay = None
        self._limit_wait = False
        self._want_connect = False
        if was_up:
            self._session_down(now, "stopped" + (f": {reason}" if reason else ""),
                               (6, 2, b""), sent=True)

    def reset(self, now: float, code: int = 6, subcode: int = 4, data: bytes = b"",
              reason: str = "") -> None:
        """Tear down with a NOTIFICATION (e.g. Cease/1 max-prefix); restarts automatically
        (after the max-prefix delay for Cease/1)."""
        c = self._established or self._primary()
        if c is None:
            return
        self._error(c, now, BgpError(code, subcode, data, reason=reason or m.notification_text(code, subcode)))

    def hold_down(self, now: float, code: int = 6, subcode: int = 10, reason: str = "") -> None:
        """Tear down at once with a NOTIFICATION (default Cease / BFD Down, RFC 9384) and stay
        Idle, refusing connections, until :meth:`restart` (BFD's gate on a LAN session)."""
        self.held_down = True
        self._limit_wait = False
        self._timers.cancel(Timer.RESTART)
        self.restart_delay = None
        c = self._established or self._primary()
        if c is not None:
            self._error(c, now, BgpError(code, subcode, b"", reason=reason or m.notification_text(code, subcode)))
        for other in list(self._conns.values()):
            self._drop(other)
        self._base = IDLE
        self._want_connect = False
        self._timers.cancel(Timer.CONNECT_RETRY)

    def wants_connect(self) -> bool:
        """True once per requested outbound TCP connection attempt."""
        w = self._want_connect
        self._want_connect = False
        return w

    def connection_made(self, now: float, *, outbound: bool) -> None:
        """A TCP connection is up (Tcp_CR_Acked / TcpConnectionConfirmed)."""
        if not self._started or self.held_down or self._limit_wait:
            # not started, or waiting out a max-prefix delay (RFC 4271 8.2.2: Idle refuses)
            self._to_close.append(outbound)
            return
        old = self._conns.get(outbound)
        if old is not None:
            self._drop(old)
        self._closed.pop(outbound, None)
        c = _Conn(outbound)
        self._conns[outbound] = c
        if self._base == IDLE:
            self._base = ACTIVE
        self._send(c, self._open_message(), m.OPEN)
        c.state = OPENSENT
        self._timers.arm(Timer.HOLD, now + LARGE_HOLD, outbound)
        self._timers.cancel(Timer.CONNECT_RETRY)     # stops while a connection is open

    def connection_lost(self, now: float, *, outbound: bool | None = None) -> None:
        """TCP connection failed or closed (TcpConnectionFails, event 18)."""
        if outbound is None:
            if self._closed and not self._conns:
                self._closed.clear()
                return
            c = self._primary()
            if c is None:
                self._connect_failed(now)
                return
        else:
            if outbound in self._closed:
                del self._closed[outbound]
                return
            c = self._conns.get(outbound)
            if c is None:
                if outbound:
                    self._connect_failed(now)
                return
        self._flush_batch()
        was_est = c is self._established
        self._remove(c)
        if was_est:
            gr = self._peer_gr
            graceful = bool(self.config.graceful_restart and gr and gr["afis"])
            self.last_error = "connection lost"
            self.last_error_at = now
            self._session_down(now, "connection lost", None, graceful=graceful,
                               restart_time=self._peer_restart_time())
            if not self._conns:
                self._idle(now)
        elif not self._conns and self._started:
            self._set_active(now)

    def receive_data(self, data: bytes, now: float, *, outbound: bool | None = None) -> None:
        c = self._conns.get(outbound) if outbound is not None else self._primary()
        if c is None or c.closing:
            return
        c.buf += data
        buf = c.buf
        off = 0
        try:
            while True:
                hdr = m.check_header(buf, off)
                if hdr is None:
                    break
                length, mtype = hdr
                if len(buf) - off < length:
                    break
                body = bytes(buf[off + m.HEADER_LEN:off + length])
                off += length
                self._handle_message(c, mtype, body, now)
                if c.closing or self._conns.get(c.outbound) is not c:
                    break
        except BgpError as e:
            self._error(c, now, e)
        except Exception as e:  # never let a malformed message escape as a traceback
            log.exception("unexpected error handling BGP input")
            self._error(c, now, BgpError(6, 8, reason=f"internal error: {e}"))
        if off:
            del buf[:off]
        self._flush_batch()
        # a KEEPALIVE due while a burst was being processed goes out now, not a slice later
        if self._established is not None:
            at = self._timers.at(Timer.KEEPALIVE, self._established.outbound)
            if at is not None and now >= at:
                self._on_keepalive_due(now, self._established.outbound)

    def data_to_send(self, outbound: bool | None = None) -> bytes:
        """Bytes to write on the connection ``outbound`` (None: the only connection)."""
        self._flush_updates()
        dirs = [outbound] if outbound is not None else [False, True]
        out = bytearray()
        for d in dirs:
            for c in (self._closed.get(d), self._conns.get(d)):
                if c is not None and c.out:
                    out += c.out
                    c.out.clear()
        return bytes(out)

    def connections_to_close(self) -> list[bool]:
        """Directions (outbound flags) whose TCP connection the adapter must close
        (after sending what data_to_send() returns for it)."""
        out, self._to_close = self._to_close, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline of the schedule, or None."""
        return self._timers.next()

    def handle_timer(self, now: float) -> None:
        """Run exactly the schedule's entries due at ``now``."""
        for action, outbound in self._timers.pop_due(now):
            getattr(self, _TIMER_ACTIONS[action])(now, outbound)

    def peer_alive(self, now: float, outbound: bool | None = None) -> None:
        """Input from the peer is queued but not yet processed: restart the hold timer.

        Adapters that process input in slices call this before timers so that a backlog
        (which holds the peer's KEEPALIVEs) never makes the hold timer expire.
        """
        c = self._conns.get(outbound) if outbound is not None else self._primary()
        if c is not None and not c.closing and c.state in (OPENCONFIRM, ESTABLISHED) and c.hold:
            self._timers.arm(Timer.HOLD, now + c.hold, c.outbound)

    def request_refresh(self, afi: int | None = None, safi: int = m.SAFI_UNICAST) -> bool:
        """Ask the peer to re-send its routes (RFC 2918), e.g. after an import policy change;
        ``afi`` None: every family the session carries."""
        c = self._established
        if c is None or not self._peer_caps.get("route_refresh"):
            return False
        fams = sorted(self._families) if afi is None else [(afi, safi)]
        for a, sf in fams:
            self._send(c, m.encode_route_refresh(a, sf), m.ROUTE_REFRESH)
        return True

    def next_event(self):
        return self._events.popleft() if self._events else None

    def announce(self, routes) -> None:
        """Add/replace routes in the Adj-RIB-Out (str prefixes or Route objects, as_path
        without our own ASN: it is prepended on the way out)."""
        for r in routes:
            if isinstance(r, str):
                r = Route(r)
            r = Route(str(ipaddress.ip_network(r.prefix, strict=False)), *r.attr_key())
            out = self._outgoing(r)
            if out is None:
                continue
            if self._rib_out.get(r.prefix) == out:
                continue
            self._rib_out[r.prefix] = out
            self._pending_wd.pop(r.prefix, None)
            self._pending_adv[r.prefix] = out

    def withdraw(self, prefixes) -> None:
        for p in prefixes:
            p = p.prefix if isinstance(p, Route) else str(ipaddress.ip_network(p, strict=False))
            self.export_skipped.discard(p)
            if self._rib_out.pop(p, None) is not None:
                self._pending_adv.pop(p, None)
                self._pending_wd[p] = None

    def set_exports(self, routes) -> None:
        """Make the Adj-RIB-Out exactly ``routes`` (reconfigure): withdraw what is gone,
        announce what is new or changed, leave the rest alone."""
        routes = [Route(r) if isinstance(r, str) else r for r in routes]
        keep = {str(ipaddress.ip_network(r.prefix, strict=False)) for r in routes}
        self.withdraw([p for p in list(self._rib_out) + list(self.export_skipped) if p not in keep])
        self.announce(routes)

    def set_link_local_next_hop(self, address: str | None) -> None:
        """The link-local address sent after the global next hop of IPv6 routes (RFC 2545 3:
        the peer shares the inside subnet), or None: 16-octet next hops. Taken from the tunnel
        interface once it exists; a change re-announces the Adj-RIB-Out."""
        if address is not None and not ipaddress.IPv6Address(address).is_link_local:
            raise ValueError(f"{address} is not link-local (fe80::/10)")
        address = str(ipaddress.IPv6Address(address)) if address is not None else None
        if address == self.config.link_local_next_hop:
            return
        self.config.link_local_next_hop = address
        if self._established is not None:
            self._pending_adv.update({p: r for p, r in self._rib_out.items() if family_of(p)[0] == m.AFI_IPV6})

    def advertised(self) -> list[Route]:
        return list(self._rib_out.values())

    def status(self) -> dict:
        c = self._established
        held = {p for p in self._rib_out if family_of(p) not in self._families} if c else set()
        return {
            "state": self.state,
            "uptime_since": self.uptime_since,
            "local_address": self.config.local_address,
            "remote_address": self.config.remote_address,
            "local_asn": self.config.local_asn,
            "hold_time": self.negotiated_hold if c else self.config.hold_time,
            "keepalive": self.negotiated_keepalive if c else self._cfg_keepalive(self.config.hold_time),
            "peer_asn": self.peer_asn,
            "peer_id": self.peer_id,
            "messages_in": dict(self.msgs_in),
            "messages_out": dict(self.msgs_out),
            "prefixes_received": len(self._rib_in),
            "prefixes_advertised": len(self._rib_out) - len(held),
            # refused by the session's families, or of a family the peer did not take
            "prefixes_not_advertised": sorted(self.export_skipped | held),
            "updates_treated_as_withdraw": self.updates_treated_as_withdraw,
            "unnegotiated_ignored": self.unnegotiated_ignored,
            "families": sorted(family_name(f) for f in self._families),
            "last_error": self.last_error,
            "flaps": self.flaps,
            "capabilities": dict(self._peer_caps),
            "limit_resets": self.limit_resets,
            # a pending automatic restart (monotonic deadline) and its delay; held_down: a
            # max-prefix teardown with no automatic restart
            "restart_at": self._timers.at(Timer.RESTART),
            "restart_delay": self.restart_delay,
            "held_down": self.held_down,
        }

    # ------------------------------------------------------------ internals
    def _primary(self) -> _Conn | None:
        if self._established is not None:
            return self._established
        live = [c for c in self._conns.values()]
        if not live:
            return None
        live.sort(key=lambda c: _RANK[c.state], reverse=True)
        return live[0]

    def _cfg_keepalive(self, hold: int) -> float:
        if hold == 0:
            return 0
        ka = self.config.keepalive
        if ka is None:
            return hold / 3
        return min(ka, hold / 3) if hold < self.config.hold_time else ka

    def _peer_restart_time(self) -> int:
        gr = self._peer_gr
        return min(gr["restart_time"], self.config.max_peer_restart_time) if gr else 0

    def _open_message(self) -> bytes:
        cfg = self.config
        caps = [m.cap_mp(afi, safi) for afi, safi in sorted(cfg.families)]
        caps += [m.cap_route_refresh(), m.cap_as4(cfg.local_asn)]
        if cfg.graceful_restart:
            caps.append(m.cap_graceful_restart(cfg.restart_time))
        return m.encode_open(cfg.local_asn, cfg.hold_time, cfg.router_id, caps)

    def _outgoing(self, r: Route) -> Route | None:
        cfg = self.config
        path = r.as_path
        if self.ibgp:
            pass                   # RFC 4271 5.1.2: no AS of ours added inside our AS
        elif path and path[0][0] == m.AS_SEQUENCE:
            path = ((m.AS_SEQUENCE, (cfg.local_asn,) + tuple(path[0][1])),) + tuple(path[1:])
        else:
            path = ((m.AS_SEQUENCE, (cfg.local_asn,)),) + tuple(path)
        nh = r.next_hop or cfg.local_address
        v6_prefix = ":" in r.prefix
        if not v6_prefix and ":" in nh:
            # IPv4 NLRI needs an IPv4 NEXT_HOP (RFC 8950 extended next hop not supported)
            log.warning("BGP %s: cannot announce %s over an IPv6 session without an IPv4 "
                        "next hop: skipped", cfg.remote_address, r.prefix)
            self.export_skipped.add(r.prefix)
            return None
        if v6_prefix and not cfg.ipv6 or not v6_prefix and not cfg.ipv4:
            log.warning("BGP %s: %s not announced: the session does not carry IPv%s unicast",
                        cfg.remote_address, r.prefix, 6 if v6_prefix else 4)
            self.export_skipped.add(r.prefix)
            return None
        self.export_skipped.discard(r.prefix)
        local_pref = (r.local_pref if r.local_pref is not None else DEFAULT_LOCAL_PREF) if self.ibgp else None
        return Route(r.prefix, nh, path, r.origin, r.med, local_pref, r.communities,
                     r.atomic_aggregate, r.aggregator)

    # ------------------------------------------------------------ timer actions
    def _on_connect_retry(self, now: float, _outbound) -> None:
        if self._started and not self._conns:
            self._go_connect(now)

    def _on_restart(self, now: float, _outbound) -> None:
        self._limit_wait = False
        self.restart_delay = None
        if self._started and not self._conns:
            self._go_connect(now)

    def _on_hold_expired(self, now: float, outbound: bool) -> None:
        c = self._conns.get(outbound)
        if c is not None and not c.closing:
            self._error(c, now, BgpError(4, 0, reason="hold timer expired"))

    def _on_keepalive_due(self, now: float, outbound: bool) -> None:
        c = self._conns.get(outbound)
        if c is not None and not c.closing and c.ka:
            self._send(c, m.encode_keepalive(), m.KEEPALIVE)
            self._timers.arm(Timer.KEEPALIVE, now + c.ka, outbound)

    # ------------------------------------------------------------ state changes
    def _go_connect(self, now: float) -> None:
        if self.config.passive:
            self._base = ACTIVE
            self._timers.cancel(Timer.CONNECT_RETRY)
        else:
            self._base = CONNECT
            self._want_connect = True
            self._timers.arm(Timer.CONNECT_RETRY, now + self.config.connect_retry)

    def _connect_failed(self, now: float) -> None:
        if self._started and self._base != IDLE:
            self._set_active(now)

    def _set_active(self, now: float) -> None:
        # RFC 4271 Connect/OpenSent + TcpConnectionFails: wait for ConnectRetryTimer in Active
        self._base = ACTIVE
        self._want_connect = False
        if not self.config.passive:
            self._timers.arm(Timer.CONNECT_RETRY, now + self.config.connect_retry)

    def _idle(self, now: float) -> None:
        """Back to Idle; automatic restart after the idle hold time (RFC 4271 8.1.1), or
        after the growing max-prefix delay."""
        self._base = IDLE
        self._want_connect = False
        self._timers.cancel(Timer.CONNECT_RETRY)
        if not self._started:
            self._timers.cancel(Timer.RESTART)
            return
        if self._limit_wait or self.held_down:
            return              # _limit_teardown armed (or withheld) the restart
        hold = min(self.config.connect_retry * (2 ** min(self._failures, 4)), MAX_IDLE_HOLD)
        self.restart_delay = hold
        self._timers.arm(Timer.RESTART, now + hold)

    def _limit_teardown(self, now: float) -> None:
        """A max-prefix teardown (Cease / 1, either side): restart after a growing delay."""
        cfg = self.config
        up = self.uptime_since
        if up is not None and now - up >= cfg.limit_forget:
            self._limit_trips = 0          # the session had stayed up long enough: forgiven
        self._limit_trips += 1
        self.limit_resets += 1
        if cfg.limit_restart is None:
            self.held_down = True
            self._limit_wait = False
            self.restart_delay = None
            self._timers.cancel(Timer.RESTART)
            log.warning("BGP %s: maximum prefix count teardown: staying down until restarted",
                        cfg.remote_address)
            return
        delay = min(cfg.limit_restart * 2 ** (self._limit_trips - 1), cfg.limit_restart_max)
        self._limit_wait = True
        self.restart_delay = delay
        self._timers.arm(Timer.RESTART, now + delay)
        log.warning("BGP %s: maximum prefix count teardown #%d: restart in %.0f s",
                    cfg.remote_address, self._limit_trips, delay)

    def _send(self, c: _Conn, data: bytes, mtype: int) -> None:
        c.out += data
        self.msgs_out[m.MESSAGE_NAMES[mtype]] += 1

    def _send_notification(self, c: _Conn, code: int, subcode: int, data: bytes = b"") -> None:
        self._send(c, m.encode_notification(code, subcode, data), m.NOTIFICATION)

    def _drop(self, c: _Conn) -> None:
        """Mark a connection for closing (after its pending output is written)."""
        c.closing = True
        if self._conns.get(c.outbound) is c:
            self._timers.cancel_conn(c.outbound)
            del self._conns[c.outbound]
            self._closed[c.outbound] = c
        if self._established is c:
            self._established = None
        self._to_close.append(c.outbound)

    def _remove(self, c: _Conn) -> None:
        if self._conns.get(c.outbound) is c:
            self._timers.cancel_conn(c.outbound)
            del self._conns[c.outbound]
        if self._closed.get(c.outbound) is c:
            del self._closed[c.outbound]
        if self._established is c:
            self._established = None

    def _error(self, c: _Conn, now: float, e: BgpError) -> None:
        """Send NOTIFICATION, close the connection, go Idle (RFC 4271 6)."""
        log.warning("BGP %s: %s", self.config.remote_address, e)
        self._flush_batch()
        self._send_notification(c, e.code, e.subcode, e.data)
        was_est = c is self._established
        self.last_error = f"sent: {m.notification_text(e.code, e.subcode, e.data)} ({e.reason})"
        self.last_error_at = now
        self._drop(c)
        if (e.code, e.subcode) == (6, 1):
            self._limit_teardown(now)
        if was_est:
            self._failures = 0 if e.code in (4, 6) else self._failures + 1
            self._session_down(now, e.reason, (e.code, e.subcode, e.data), sent=True)
        else:
            self._failures += 1
        if not self._conns or self._limit_wait or self.held_down:
            for other in list(self._conns.values()):
                self._send_notification(other, e.code, e.subcode, e.data)
                self._drop(other)
            self._idle(now)

    def _session_down(self, now, reason, notification, *, sent=False, graceful=False,
                      restart_time=0) -> None:
        self.flaps += 1
        self.uptime_since = None
        self._rib_in.clear()
        self._events.append(SessionDown(reason, notification, sent, graceful, restart_time))

    # ------------------------------------------------------------ message handling
    def _handle_message(self, c: _Conn, mtype: int, body, now: float) -> None:
        self.msgs_in[m.MESSAGE_NAMES[mtype]] += 1
        if mtype == m.NOTIFICATION:
            self._on_notification(c, body, now)
            return
        handler = _DISPATCH.get((c.state, mtype))
        if handler is None:
            raise BgpError(5, _FSM_ERROR[c.state], reason=f"{m.MESSAGE_NAMES[mtype]} in {c.state}")
        getattr(self, handler)(c, body, now)

    def _on_notification(self, c: _Conn, body, now: float) -> None:
        n = m.decode_notification(bytes(body))
        text = n.text()
        self.last_error = f"received: {text}"
        self.last_error_at = now
        was_est = c is self._established
        self._flush_batch()
        self._drop(c)
        if (n.code, n.subcode) == (6, 1):
            self._limit_teardown(now)       # our announcements exceed the peer's limit
        if was_est:
            self._session_down(now, f"peer sent {text}", (n.code, n.subcode, n.data))
        if not self._conns or self._limit_wait or self.held_down:
            for other in list(self._conns.values()):
                self._drop(other)
            self._failures += 0 if n.code == 6 else 1
            self._idle(now)

    def _on_keepalive(self, c: _Conn, body, now: float) -> None:
        self._restart_hold(c, now)

    def _on_update(self, c: _Conn, body, now: float) -> None:
        self._restart_hold(c, now)
        self._handle_update(c, body, now)

    def _on_route_refresh(self, c: _Conn, body, now: float) -> None:
        rr = m.decode_route_refresh(bytes(body))
        if rr.subtype == 0:   # normal request (RFC 2918); BoRR/EoRR markers ignored
            self._refresh(rr.afi, rr.safi)

    def _restart_hold(self, c: _Conn, now: float) -> None:
        if c.hold:
            self._timers.arm(Timer.HOLD, now + c.hold, c.outbound)

    def _on_open(self, c: _Conn, body, now: float) -> None:
        op = m.decode_open(bytes(body))
        cfg = self.config
        peer_as = op.peer_asn()
        if op.as4() is not None and op.asn != (peer_as if peer_as <= 0xFFFF else m.AS_TRANS) \
                and op.asn != m.AS_TRANS:
            raise BgpError(2, 2, reason=f"My AS {op.asn} inconsistent with 4-octet AS {peer_as}")
        if peer_as != cfg.remote_asn:
            raise BgpError(2, 2, reason=f"peer AS {peer_as}, expected {cfg.remote_asn}")
        if op.hold_time in (1, 2):
            raise BgpError(2, 6, reason=f"hold time {op.hold_time}")
        rid = _rid_int(op.router_id)
        if rid == 0:
            # RFC 6286 2.2: any non-zero value (an IPv6-only speaker's need not look like IPv4)
            raise BgpError(2, 3, reason=f"BGP identifier {op.router_id}")
        common = cfg.families & (op.multiprotocol() or {(m.AFI_IPV4, m.SAFI_UNICAST)})
        if not common:
            # RFC 5492 / RFC 4760: nothing to carry (FRR answers so too); the data names
            # the capabilities we need
            ours = b"".join(bytes([m.CAP_MP, 4]) + struct.pack("!HBB", afi, 0, safi)
                            for afi, safi in sorted(cfg.families))
            offered = ", ".join(sorted(map(family_name, op.multiprotocol() or {(1, 1)})))
            raise BgpError(2, 7, ours, reason=f"no common address family: we carry "
                           f"{', '.join(sorted(map(family_name, cfg.families)))}, the peer {offered}")
        # (an old speaker without 4-octet AS support gets AS_TRANS + AS4_PATH from us)
        # collision detection (RFC 4271 6.8)
        other = self._conns.get(not c.outbound)
        if other is not None and not other.closing:
            if other.state == ESTABLISHED:
                gr = self._peer_gr
                if self.config.graceful_restart and gr and gr["afis"]:
                    # RFC 4724 4.2: an OPEN on a new connection means the peer restarted:
                    # the old session is gone (routes kept as stale), continue with the new.
                    self._flush_batch()
                    self._drop(other)
                    self._session_down(now, "peer restarted (new connection)", None,
                                       graceful=True, restart_time=self._peer_restart_time())
                else:
                    self._send_notification(c, 6, 7)
                    self._drop(c)
                    return
            if other.state in (OPENSENT, OPENCONFIRM):
                ours = _rid_int(cfg.router_id)
                # RFC 6286 2.3: equal identifiers (eBGP): the larger AS number wins
                local_lower = ours < rid if ours != rid else cfg.local_asn < peer_as
                # lower local id: keep the connection the peer opened
                loser = (c if c.outbound else other) if local_lower else (other if c.outbound else c)
                self._send_notification(loser, 6, 7)
                self._drop(loser)
                if loser is c:
                    return
        c.peer_open = op
        hold = min(cfg.hold_time, op.hold_time)
        c.hold = hold
        c.ka = self._cfg_keepalive(hold)
        self._send(c, m.encode_keepalive(), m.KEEPALIVE)
        c.state = OPENCONFIRM
        if hold:
            self._timers.arm(Timer.HOLD, now + hold, c.outbound)
            self._timers.arm(Timer.KEEPALIVE, now + c.ka, c.outbound)
        else:
            self._timers.cancel_conn(c.outbound)

    def _on_confirm(self, c: _Conn, body, now: float) -> None:
        op = c.peer_open
        c.state = ESTABLISHED
        self._restart_hold(c, now)
        self._established = c
        self._base = IDLE
        self._timers.cancel(Timer.CONNECT_RETRY)
        self._timers.cancel(Timer.RESTART)
        self._failures = 0
        other = self._conns.get(not c.outbound)
        if other is not None and not other.closing:
            self._send_notification(other, 6, 7)
            self._drop(other)
        self._as4 = op.as4() is not None
        gr = op.graceful_restart()
        self._peer_gr = gr
        mp = op.multiprotocol() or {(m.AFI_IPV4, m.SAFI_UNICAST)}
        self._families = frozenset(self.config.families & mp)
        caps = {
            "multiprotocol": sorted(family_name(f) for f in mp),
            "families": sorted(family_name(f) for f in self._families),   # what the session carries
            "four_octet_as": self._as4,
            "route_refresh": op.route_refresh(),
            "graceful_restart": ({"restart_time": gr["restart_time"],
                                  "afis": [f"{a}/{s}" for a, s in gr["afis"]]} if gr else None),
            "unknown": sorted({cp.code for cp in op.capabilities
                               if cp.code not in (m.CAP_MP, m.CAP_ROUTE_REFRESH, m.CAP_AS4,
                                                  m.CAP_GRACEFUL_RESTART, m.CAP_ROUTE_REFRESH_OLD)}),
        }
        self._peer_caps = caps
        self.peer_id = op.router_id
        self.peer_asn = op.peer_asn()
        self.negotiated_hold = c.hold
        self.negotiated_keepalive = c.ka
        self.uptime_since = now
        self._rib_in.clear()
        self._events.append(SessionUp(op.hold_time, caps, c.hold, c.ka, self.peer_asn, op.router_id))
        # initial Adj-RIB-Out, then End-of-RIB
        self._pending_adv = dict(self._rib_out)
        self._pending_wd = {}
        self._flush_updates()
        for afi, safi in sorted(self._families):      # RFC 4724 2: one per family carried
            self._send(c, m.encode_end_of_rib(afi, safi), m.UPDATE)
        if c.ka:
            self._timers.arm(Timer.KEEPALIVE, now + c.ka, c.outbound)

    def _refresh(self, afi: int, safi: int) -> None:
        c = self._established
        if c is None or (afi, safi) not in self._families:
            return
        routes = [r for r in self._rib_out.values() if family_of(r.prefix) == (afi, safi)]
        for msg in m.encode_update((), routes, as4=self._as4, ibgp=self.ibgp,
                                   link_local=self.config.link_local_next_hop):
            self._send(c, msg, m.UPDATE)

    def _flush_updates(self) -> None:
        c = self._established
        if c is None or (not self._pending_adv and not self._pending_wd):
            if c is None:
                self._pending_adv.clear()
                self._pending_wd.clear()
            return
        fams = self._families
        msgs = m.encode_update([p for p in self._pending_wd if family_of(p) in fams],
                               [r for r in self._pending_adv.values() if family_of(r.prefix) in fams],
                               as4=self._as4, ibgp=self.ibgp, link_local=self.config.link_local_next_hop)
        self._pending_adv = {}
        self._pending_wd = {}
        for msg in msgs:
            self._send(c, msg, m.UPDATE)
        # sending an UPDATE restarts the KeepaliveTimer; we keep the deadline as is
        # (a keepalive sent early is harmless, a late one is not)

    def _handle_update(self, c: _Conn, body, now: float) -> None:
        fams = self._families
        res = m.decode_update(body, as4=self._as4, ibgp=self.ibgp,
                              mp_nlri=any(a != m.AFI_IPV4 for a, _s in fams))
        if res.eor is not None:
            if res.eor in fams:        # an End-of-RIB of a family not carried says nothing
                self._flush_batch()
                self._events.append(EndOfRib(*res.eor))
            return
        if fams != _IPV4_ONLY:
            # RFC 4760 6: the peer may send only the families both announced; others ignored
            keep = [r for r in res.announced if family_of(r.prefix) in fams]
            if len(keep) != len(res.announced):
                self.unnegotiated_ignored += len(res.announced) - len(keep)
                log.warning("BGP %s: %d prefix(es) of a family this session does not carry ignored",
                            self.config.remote_address, len(res.announced) - len(keep))
                res.announced = keep
        if res.treat_as_withdraw:
            self.updates_treated_as_withdraw += 1
            log.warning("BGP %s: UPDATE treated as withdraw: %s", self.config.remote_address,
                        "; ".join(res.errors))
        elif res.errors:
            log.info("BGP %s: UPDATE attribute(s) discarded: %s", self.config.remote_address,
                     "; ".join(res.errors))
        # the final state per prefix of this input slice (None: withdrawn); whole lists at a
        # time (dict/set updates in C), in the order of the UPDATE
        batch = self._batch
        rib_in = self._rib_in
        if res.withdrawn:
            batch.update(dict.fromkeys(res.withdrawn))
            rib_in.difference_update(res.withdrawn)
            self._batch_withdraws = True
        ann = res.announced
        if ann:
            prefixes = [r.prefix for r in ann]
            if self._route_acceptable(ann[0]):   # one attribute set per UPDATE: checked once
                batch.update(zip(prefixes, ann))
                rib_in.update(prefixes)
            else:
                batch.update(dict.fromkeys(prefixes))
                rib_in.difference_update(prefixes)
                self._batch_withdraws = True

    def _route_acceptable(self, r: Route) -> bool:
        """eBGP checks that RFC 7606 answers with treat-as-withdraw / route ignore."""
        cfg = self.config
        path = r.as_path
        if self.ibgp:
            pass                   # iBGP: a route of our own AS has an empty or foreign path
        elif not path or path[0][0] != m.AS_SEQUENCE or path[0][1][0] != self.peer_asn:
            self.updates_treated_as_withdraw += 1
            log.warning("BGP %s: AS_PATH does not start with peer AS: treat-as-withdraw",
                        cfg.remote_address)
            return False
        for _t, asns in path:
            if cfg.local_asn in asns:
                return False      # loop: ignore
        try:
            nh = ipaddress.ip_address(r.next_hop)
        except ValueError:
            return False
        if nh.is_unspecified or nh.is_multicast or nh.is_loopback or str(nh) == cfg.local_address:
            log.warning("BGP %s: semantically invalid NEXT_HOP %s: route ignored",
                        cfg.remote_address, nh)
            return False
        return True

    def _flush_batch(self) -> None:
        if not self._batch:
            return
        if self._batch_withdraws:
            ann, wd = [], []
            for p, r in self._batch.items():
                if r is None:
                    wd.append(p)
                else:
                    ann.append(r)
        else:
            ann, wd = list(self._batch.values()), []
        self._batch = {}
        self._batch_withdraws = False
        self._events.append(RoutesReceived(ann, wd))

