"""Sans-IO BGP-4 session (RFC 4271 FSM, 4724 receiving speaker, 6793, 2918, 7606).

Shape follows aioquic: inputs take ``now`` (monotonic seconds); outputs are polled
(:meth:`BgpSession.data_to_send`, :meth:`get_timer`, :meth:`next_event`,
:meth:`wants_connect`, :meth:`connections_to_close`).  No clock, socket or sleep here.

A session may have up to two TCP connections at a time (one we opened, ``outbound=True``,
and one the peer opened): both run the OPEN exchange and collision detection
(RFC 4271 6.8) keeps one.  With a single connection the ``outbound`` keyword of
``receive_data``/``data_to_send``/``connection_lost`` may be left out.
"""
from __future__ import annotations

import ipaddress
import logging
from collections import deque
from dataclasses import dataclass

from . import message as m
from .message import BgpError, Route

log = logging.getLogger("cgwd.bgp.session")

IDLE, CONNECT, ACTIVE, OPENSENT, OPENCONFIRM, ESTABLISHED = (
    "Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established")
_RANK = {IDLE: 0, CONNECT: 1, ACTIVE: 1, OPENSENT: 2, OPENCONFIRM: 3, ESTABLISHED: 4}

LARGE_HOLD = 240.0          # RFC 4271 8: hold timer while waiting for OPEN
MAX_IDLE_HOLD = 60.0


@dataclass
class BgpPeerConfig:
    local_address: str
    remote_address: str
    local_asn: int
    remote_asn: int
    router_id: str
    hold_time: int = 30
    keepalive: int | None = None        # None: hold/3
    connect_retry: float = 5
    passive: bool = False
    ipv6: bool = False
    graceful_restart: bool = True       # receiving speaker (helper) procedures
    restart_time: int = 120             # what we advertise in our GR capability


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
    restart_time: int = 0


@dataclass
class RoutesReceived:
    announced: list
    withdrawn: list


@dataclass
class EndOfRib:
    afi: int = m.AFI_IPV4
    safi: int = m.SAFI_UNICAST


# ------------------------------------------------------------------- connection
class _Conn:
    __slots__ = ("outbound", "state", "buf", "out", "hold_deadline", "ka_deadline",
                 "hold", "ka", "peer_open", "closing")

    def __init__(self, outbound: bool):
        self.outbound = outbound
        self.state = OPENSENT
        self.buf = bytearray()
        self.out = bytearray()
        self.hold_deadline: float | None = None
        self.ka_deadline: float | None = None
        self.hold = 0
        self.ka = 0.0
        self.peer_open: m.Open | None = None
        self.closing = False


def _rid_int(rid: str) -> int:
    return int(ipaddress.IPv4Address(rid))


class BgpSession:
    def __init__(self, config: BgpPeerConfig):
        self.config = config
        self._base = IDLE                      # state when no connection is past Connect
        self._started = False
        self._conns: dict[bool, _Conn] = {}
        self._to_close: list[bool] = []
        self._events: deque = deque()
        self._want_connect = False
        self._base_timer: float | None = None  # connect-retry / idle-hold deadline
        self._established: _Conn | None = None
        self._as4 = True
        self._peer_caps: dict = {}
        self._peer_gr: dict | None = None
        self._rib_out: dict[str, Route] = {}
        self._pending_adv: dict[str, Route] = {}
        self._pending_wd: dict[str, None] = {}
        self._rib_in: set = set()
        self._batch: dict = {}
        self._failures = 0
        self._closed: dict[bool, _Conn] = {}    # dropped, output not yet drained
        # status
        self.uptime_since: float | None = None
        self.msgs_in = {n: 0 for n in m.MESSAGE_NAMES.values()}
        self.msgs_out = {n: 0 for n in m.MESSAGE_NAMES.values()}
        self.last_error = ""
        self.last_error_at: float | None = None
        self.updates_treated_as_withdraw = 0
        self.peer_id = ""
        self.peer_asn = config.remote_asn
        self.negotiated_hold = 0
        self.negotiated_keepalive = 0.0
        self.flaps = 0
        self.export_skipped: set = set()

    # ------------------------------------------------------------ public API
    @property
    def state(self) -> str:
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
        self._base_timer = None
        self._want_connect = False
        if was_up:
            self._session_down(now, "stopped" + (f": {reason}" if reason else ""),
                               (6, 2, b""), sent=True)

    def reset(self, now: float, code: int = 6, subcode: int = 4, data: bytes = b"",
              reason: str = "") -> None:
        """Tear down with a NOTIFICATION (e.g. Cease/1 max-prefix); restarts automatically."""
        c = self._established or self._primary()
        if c is None:
            return
        self._error(c, now, BgpError(code, subcode, data, reason=reason or m.notification_text(code, subcode)))

    def wants_connect(self) -> bool:
        """True once per requested outbound TCP connection attempt."""
        w = self._want_connect
        self._want_connect = False
        return w

    def connection_made(self, now: float, *, outbound: bool) -> None:
        """A TCP connection is up (Tcp_CR_Acked / TcpConnectionConfirmed)."""
        if not self._started:
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
        c.hold_deadline = now + LARGE_HOLD
        self._base_timer = None       # connect-retry stops while a connection is open

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
                               restart_time=gr["restart_time"] if gr else 0)
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
        self._check_keepalive(now)

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
        ts = [self._base_timer] if self._base_timer is not None else []
        for c in self._conns.values():
            if c.closing:
                continue
            if c.hold_deadline is not None:
                ts.append(c.hold_deadline)
            if c.ka_deadline is not None:
                ts.append(c.ka_deadline)
        return min(ts) if ts else None

    def peer_alive(self, now: float, outbound: bool | None = None) -> None:
        """Input from the peer is queued but not yet processed: restart the hold timer.

        Adapters that process input in slices call this before timers so that a backlog
        (which holds the peer's KEEPALIVEs) never makes the hold timer expire.
        """
        c = self._conns.get(outbound) if outbound is not None else self._primary()
        if c is not None and not c.closing and c.state in (OPENCONFIRM, ESTABLISHED) and c.hold:
            c.hold_deadline = now + c.hold

    def request_refresh(self, afi: int = m.AFI_IPV4, safi: int = m.SAFI_UNICAST) -> bool:
        """Ask the peer to re-send its routes (RFC 2918), e.g. after an import policy change."""
        c = self._established
        if c is None or not self._peer_caps.get("route_refresh"):
            return False
        self._send(c, m.encode_route_refresh(afi, safi), m.ROUTE_REFRESH)
        return True

    def keepalive_due(self, now: float) -> bool:
        c = self._established
        return bool(c and c.ka_deadline is not None and now >= c.ka_deadline)

    def handle_timer(self, now: float) -> None:
        for c in list(self._conns.values()):
            if c.closing:
                continue
            if c.hold_deadline is not None and now >= c.hold_deadline:
                self._error(c, now, BgpError(4, 0, reason="hold timer expired"))
                continue
            if c.ka_deadline is not None and now >= c.ka_deadline:
                self._send(c, m.encode_keepalive(), m.KEEPALIVE)
                c.ka_deadline = now + c.ka
        if self._base_timer is not None and now >= self._base_timer:
            self._base_timer = None
            if self._started and not self._conns:
                self._go_connect(now)
            elif self._started:
                self._base_timer = now + self.config.connect_retry

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
            self._rib_out[r.prefix] = out
            self._pending_wd.pop(r.prefix, None)
            self._pending_adv[r.prefix] = out

    def withdraw(self, prefixes) -> None:
        for p in prefixes:
            p = p.prefix if isinstance(p, Route) else str(ipaddress.ip_network(p, strict=False))
            if self._rib_out.pop(p, None) is not None:
                self._pending_adv.pop(p, None)
                self._pending_wd[p] = None

    def advertised(self) -> list[Route]:
        return list(self._rib_out.values())

    def status(self) -> dict:
        c = self._established
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
            "prefixes_advertised": len(self._rib_out),
            "prefixes_not_advertised": sorted(self.export_skipped),
            "updates_treated_as_withdraw": self.updates_treated_as_withdraw,
            "last_error": self.last_error,
            "flaps": self.flaps,
            "capabilities": dict(self._peer_caps),
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

    def _open_message(self) -> bytes:
        cfg = self.config
        caps = [m.cap_mp(m.AFI_IPV4)]
        if cfg.ipv6:
            caps.append(m.cap_mp(m.AFI_IPV6))
        caps += [m.cap_route_refresh(), m.cap_as4(cfg.local_asn)]
        if cfg.graceful_restart:
            caps.append(m.cap_graceful_restart(cfg.restart_time))
        return m.encode_open(cfg.local_asn, cfg.hold_time, cfg.router_id, caps)

    def _outgoing(self, r: Route) -> Route:
        cfg = self.config
        path = r.as_path
        if path and path[0][0] == m.AS_SEQUENCE:
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
        if v6_prefix and not cfg.ipv6:
            log.warning("BGP %s: %s not announced: IPv6 unicast not enabled (ipv6=False)",
                        cfg.remote_address, r.prefix)
            self.export_skipped.add(r.prefix)
            return None
        self.export_skipped.discard(r.prefix)
        return Route(r.prefix, nh, path, r.origin, r.med, None, r.communities,
                     r.atomic_aggregate, r.aggregator)

    def _go_connect(self, now: float) -> None:
        if self.config.passive:
            self._base = ACTIVE
            self._base_timer = None
        else:
            self._base = CONNECT
            self._want_connect = True
            self._base_timer = now + self.config.connect_retry

    def _connect_failed(self, now: float) -> None:
        if self._started and self._base != IDLE:
            self._set_active(now)

    def _set_active(self, now: float) -> None:
        # RFC 4271 Connect/OpenSent + TcpConnectionFails: wait for ConnectRetryTimer in Active
        self._base = ACTIVE
        self._want_connect = False
        if not self.config.passive:
            self._base_timer = now + self.config.connect_retry

    def _idle(self, now: float) -> None:
        """Back to Idle; automatic restart after the idle hold time (RFC 4271 8.1.1)."""
        self._base = IDLE
        self._want_connect = False
        if self._started:
            hold = min(self.config.connect_retry * (2 ** min(self._failures, 4)), MAX_IDLE_HOLD)
            self._base_timer = now + hold
        else:
            self._base_timer = None

    def _send(self, c: _Conn, data: bytes, mtype: int) -> None:
        c.out += data
        self.msgs_out[m.MESSAGE_NAMES[mtype]] += 1

    def _send_notification(self, c: _Conn, code: int, subcode: int, data: bytes = b"") -> None:
        self._send(c, m.encode_notification(code, subcode, data), m.NOTIFICATION)

    def _drop(self, c: _Conn) -> None:
        """Mark a connection for closing (after its pending output is written)."""
        c.closing = True
        c.hold_deadline = c.ka_deadline = None
        if self._conns.get(c.outbound) is c:
            del self._conns[c.outbound]
            self._closed[c.outbound] = c
        if self._established is c:
            self._established = None
        self._to_close.append(c.outbound)

    def _remove(self, c: _Conn) -> None:
        if self._conns.get(c.outbound) is c:
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
        if was_est:
            self._failures = 0 if e.code in (4, 6) else self._failures + 1
            self._session_down(now, e.reason, (e.code, e.subcode, e.data), sent=True)
        else:
            self._failures += 1
        if not self._conns:
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
        st = c.state
        if mtype == m.NOTIFICATION:
            n = m.decode_notification(bytes(body))
            text = n.text()
            self.last_error = f"received: {text}"
            self.last_error_at = now
            was_est = c is self._established
            self._flush_batch()
            self._drop(c)
            if was_est:
                self._session_down(now, f"peer sent {text}", (n.code, n.subcode, n.data))
            if not self._conns:
                self._failures += 0 if n.code == 6 else 1
                self._idle(now)
            return
        if st == OPENSENT:
            if mtype != m.OPEN:
                raise BgpError(5, 1, reason=f"{m.MESSAGE_NAMES[mtype]} in OpenSent")
            self._handle_open(c, m.decode_open(bytes(body)), now)
            return
        if st == OPENCONFIRM:
            if mtype == m.KEEPALIVE:
                self._establish(c, now)
                return
            raise BgpError(5, 2, reason=f"{m.MESSAGE_NAMES[mtype]} in OpenConfirm")
        # Established
        if mtype == m.KEEPALIVE:
            self._restart_hold(c, now)
        elif mtype == m.UPDATE:
            self._restart_hold(c, now)
            self._handle_update(c, body, now)
        elif mtype == m.ROUTE_REFRESH:
            rr = m.decode_route_refresh(bytes(body))
            if rr.subtype == 0:   # normal request (RFC 2918); BoRR/EoRR markers ignored
                self._refresh(rr.afi, rr.safi)
        else:
            raise BgpError(5, 3, reason="OPEN in Established")

    def _restart_hold(self, c: _Conn, now: float) -> None:
        if c.hold:
            c.hold_deadline = now + c.hold

    def _handle_open(self, c: _Conn, op: m.Open, now: float) -> None:
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
        if rid == 0 or rid >= 0xE0000000:
            raise BgpError(2, 3, reason=f"BGP identifier {op.router_id}")
        if op.as4() is None and cfg.local_asn > 0xFFFF:
            pass  # old speaker: we send AS_TRANS + AS4_PATH
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
                                       graceful=True, restart_time=gr["restart_time"])
                else:
                    self._send_notification(c, 6, 7)
                    self._drop(c)
                    return
            if other.state in (OPENSENT, OPENCONFIRM):
                local_lower = _rid_int(cfg.router_id) < rid
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
        c.hold_deadline = now + hold if hold else None
        c.ka_deadline = now + c.ka if hold else None

    def _establish(self, c: _Conn, now: float) -> None:
        op = c.peer_open
        c.state = ESTABLISHED
        self._restart_hold(c, now)
        self._established = c
        self._base = IDLE
        self._base_timer = None
        self._failures = 0
        other = self._conns.get(not c.outbound)
        if other is not None and not other.closing:
            self._send_notification(other, 6, 7)
            self._drop(other)
        self._as4 = op.as4() is not None
        gr = op.graceful_restart()
        self._peer_gr = gr
        mp = op.multiprotocol() or {(m.AFI_IPV4, m.SAFI_UNICAST)}
        caps = {
            "multiprotocol": sorted(f"{'ipv4' if a == 1 else 'ipv6' if a == 2 else a}"
                                    f"/{'unicast' if s == 1 else s}" for a, s in mp),
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
        self._send(c, m.encode_end_of_rib(), m.UPDATE)
        if self.config.ipv6:
            self._send(c, m.encode_end_of_rib(m.AFI_IPV6), m.UPDATE)
        if c.ka:
            c.ka_deadline = now + c.ka

    def _refresh(self, afi: int, safi: int) -> None:
        c = self._established
        if c is None or safi != m.SAFI_UNICAST:
            return
        want = 4 if afi == m.AFI_IPV4 else 6
        routes = [r for r in self._rib_out.values() if (":" in r.prefix) == (want == 6)]
        for msg in m.encode_update((), routes, as4=self._as4):
            self._send(c, msg, m.UPDATE)

    def _flush_updates(self) -> None:
        c = self._established
        if c is None or (not self._pending_adv and not self._pending_wd):
            if c is None:
                self._pending_adv.clear()
                self._pending_wd.clear()
            return
        msgs = m.encode_update(list(self._pending_wd), list(self._pending_adv.values()),
                               as4=self._as4)
        self._pending_adv = {}
        self._pending_wd = {}
        for msg in msgs:
            self._send(c, msg, m.UPDATE)
        # sending an UPDATE restarts the KeepaliveTimer; we keep the deadline as is
        # (a keepalive sent early is harmless, a late one is not)

    def _handle_update(self, c: _Conn, body, now: float) -> None:
        res = m.decode_update(body, as4=self._as4)
        if res.eor is not None:
            self._flush_batch()
            self._events.append(EndOfRib(*res.eor))
            return
        if res.treat_as_withdraw:
            self.updates_treated_as_withdraw += 1
            log.warning("BGP %s: UPDATE treated as withdraw: %s", self.config.remote_address,
                        "; ".join(res.errors))
        elif res.errors:
            log.info("BGP %s: UPDATE attribute(s) discarded: %s", self.config.remote_address,
                     "; ".join(res.errors))
        batch = self._batch
        rib_in = self._rib_in
        for p in res.withdrawn:
            batch[p] = None
            rib_in.discard(p)
        if res.announced:
            r0 = res.announced[0]
            ok = self._route_acceptable(r0)
            for r in res.announced:
                if ok:
                    batch[r.prefix] = r
                    rib_in.add(r.prefix)
                else:
                    batch[r.prefix] = None
                    rib_in.discard(r.prefix)

    def _route_acceptable(self, r: Route) -> bool:
        """eBGP checks that RFC 7606 answers with treat-as-withdraw / route ignore."""
        cfg = self.config
        path = r.as_path
        if not path or path[0][0] != m.AS_SEQUENCE or path[0][1][0] != self.peer_asn:
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
        ann, wd = [], []
        for p, r in self._batch.items():
            if r is None:
                wd.append(p)
            else:
                ann.append(r)
        self._batch = {}
        self._events.append(RoutesReceived(ann, wd))

    def _check_keepalive(self, now: float) -> None:
        c = self._established
        if c is not None and c.ka_deadline is not None and now >= c.ka_deadline:
            self._send(c, m.encode_keepalive(), m.KEEPALIVE)
            c.ka_deadline = now + c.ka
