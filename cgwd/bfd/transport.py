"""BFD over UDP, single hop (RFC 5881), on the asyncio event loop.

* Control packets go to UDP port 3784 from a source port in 49152-65535, one send socket per
  session (bound to the LAN local address, so the port is the session's own), with TTL / hop
  limit 255 and DSCP CS6.
* One receive socket per local address (``local:3784``), shared by the sessions on it
  (refcounted in :data:`RECEIVERS`). asyncio's datagram endpoints do not hand over ancillary
  data, so the socket is read with ``loop.add_reader`` + ``recvmsg``: the TTL / hop limit of
  every packet comes with it (IP_RECVTTL / IPV6_RECVHOPLIMIT) and anything but 255 is dropped
  (counted "ttl", RFC 5881 5: the GTSM check that keeps off-link senders out).
* Demultiplexing (RFC 5881 3, single hop): by Your Discriminator when set, else by the source
  address; a packet whose source is not the session's peer is dropped ("no_session").

:class:`BfdRunner` drives one :class:`~cgwd.bfd.session.BfdSession`: the socket's packets in,
its datagrams out, its one deadline as a ``loop.call_at`` timer, its events to ``on_event``.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import random
import socket
import sys
from collections import Counter
from typing import Callable, Protocol

from .session import BfdParams, BfdSession

log = logging.getLogger("cgwd")

CONTROL_PORT = 3784
SOURCE_PORTS = (49152, 65535)
TTL = 255
_TOS_CS6 = 0xC0
_IP_RECVTTL = getattr(socket, "IP_RECVTTL", 12)
_IP_TTL = socket.IP_TTL
_IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)


class BfdEndpoint(Protocol):
    """What a receiver hands packets to (a :class:`BfdRunner`)."""

    peer: str
    local_disc: int

    def datagram(self, data: bytes, now: float) -> None: ...

    def drop(self, reason: str) -> None: ...


def _family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


def _norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr.split("%", 1)[0]))


class Receiver:
    """``local:3784``: the packets of every session on one local address."""

    def __init__(self, local: str) -> None:
        self.local = local
        self.by_peer: dict[str, BfdEndpoint] = {}
        self.by_disc: dict[int, BfdEndpoint] = {}
        self.drops: Counter[str] = Counter()     # packets no session could be blamed for
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        fam = _family(self.local)
        sk = socket.socket(fam, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                sk.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVHOPLIMIT, 1)
            else:
                sk.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
            sk.setblocking(False)
            sk.bind((self.local, CONTROL_PORT))
        except OSError:
            sk.close()
            raise
        self.sock, self._loop = sk, loop
        loop.add_reader(sk.fileno(), self._readable)

    def close(self) -> None:
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def add(self, ep: BfdEndpoint) -> None:
        self.by_peer[_norm(ep.peer)] = ep
        self.by_disc[ep.local_disc] = ep

    def remove(self, ep: BfdEndpoint) -> None:
        if self.by_peer.get(_norm(ep.peer)) is ep:
            del self.by_peer[_norm(ep.peer)]
        if self.by_disc.get(ep.local_disc) is ep:
            del self.by_disc[ep.local_disc]

    def _readable(self) -> None:
        sk = self.sock
        for _ in range(64):
            if sk is None:
                return
            try:
                data, anc, _flags, src = sk.recvmsg(2048, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.drops[f"recv_error_{errno.errorcode.get(e.errno, e.errno)}"] += 1
                return
            self.deliver(data, _norm(src[0]), _ttl(anc), self._loop.time())

    def deliver(self, data: bytes, src: str, ttl: int | None, now: float) -> None:
        """One datagram from ``src`` with TTL/hop limit ``ttl`` (None: the kernel gave none)."""
        ep = self.by_peer.get(src)
        if ttl != TTL:
            if ep is not None:
                ep.drop("ttl")
            else:
                self.drops["ttl"] += 1
            return
        your = int.from_bytes(data[8:12], "big") if len(data) >= 12 else 0
        if your:
            by_disc = self.by_disc.get(your)
            if by_disc is None:
                (ep.drop if ep is not None else self._drop)("your_discriminator_unknown")
                return
            if ep is not by_disc:
                self.drops["no_session"] += 1     # ours, but from another address: not single hop
                return
        if ep is None:
            self.drops["no_session"] += 1
            return
        ep.datagram(data, now)

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1


def _ttl(anc) -> int | None:
    """The TTL / hop limit from recvmsg's ancillary data (an int in host order), or None."""
    for level, kind, data in anc:
        if (level, kind) in ((socket.IPPROTO_IP, _IP_TTL), (socket.IPPROTO_IPV6, _IPV6_HOPLIMIT)) and data:
            return int.from_bytes(data[:4], sys.byteorder) if len(data) >= 4 else data[0]
    return None


class Receivers:
    """The shared receive sockets, one per local address, while a session uses it."""

    def __init__(self) -> None:
        self.open: dict[str, tuple[Receiver, int]] = {}

    def acquire(self, local: str, loop: asyncio.AbstractEventLoop) -> Receiver:
        local = _norm(local)
        r, n = self.open.get(local, (None, 0))
        if r is None:
            r = Receiver(local)
            r.open(loop)
        self.open[local] = (r, n + 1)
        return r

    def release(self, r: Receiver) -> None:
        cur, n = self.open.get(r.local, (None, 0))
        if cur is not r:
            return
        if n <= 1:
            del self.open[r.local]
            r.close()
        else:
            self.open[r.local] = (r, n - 1)


RECEIVERS = Receivers()


def open_sender(local: str, rand: Callable[[], float], tries: int = 64) -> socket.socket:
    """A UDP socket bound to ``local`` and a free source port in 49152-65535, TTL 255."""
    fam = _family(local)
    lo, hi = SOURCE_PORTS
    last: OSError | None = None
    for _ in range(tries):
        port = lo + int(rand() * (hi - lo + 1)) % (hi - lo + 1)
        sk = socket.socket(fam, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            if fam == socket.AF_INET6:
                sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
                sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, _TOS_CS6)
            else:
                sk.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
                sk.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, _TOS_CS6)
            sk.setblocking(False)
            sk.bind((local, port))
            return sk
        except OSError as e:
            sk.close()
            last = e
            if e.errno != errno.EADDRINUSE:
                raise
    raise last or OSError(errno.EADDRINUSE, "no free BFD source port")


_DISCS: set[int] = set()


def new_discriminator(rand: Callable[[], float]) -> int:
    """A local discriminator unique in this process (RFC 5880 6.8.1: nonzero, unique)."""
    while True:
        d = 1 + int(rand() * (2 ** 32 - 2))
        if d not in _DISCS:
            _DISCS.add(d)
            return d


class BfdRunner:
    """One BFD session on the event loop (the peer's address, our local address, the params)."""

    def __init__(self, local: str, peer: str, params: BfdParams, on_event: Callable[[object], None], *,
                 rand: Callable[[], float] | None = None, receivers: Receivers = RECEIVERS) -> None:
        self.local, self.peer, self.params = local, peer, params
        self.on_event = on_event
        self.rand = rand or random.SystemRandom().random
        self.receivers = receivers
        self.session: BfdSession | None = None
        self.local_disc = 0
        self.error: str | None = None
        self.send_errors: Counter[str] = Counter()
        self._rx: Receiver | None = None
        self._tx: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def start(self) -> None:
        if self.session is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._rx = self.receivers.acquire(self.local, loop)
        except OSError as e:
            self.error = f"cannot listen on {self.local}:{CONTROL_PORT}: {e.strerror or e}"
            log.error("bfd peer=%s event=bfd-listen-failed error=%s", self.peer, self.error)
            return
        try:
            self._tx = open_sender(self.local, self.rand)
        except OSError as e:
            self.receivers.release(self._rx)
            self._rx = None
            self.error = f"cannot bind a source port on {self.local}: {e.strerror or e}"
            log.error("bfd peer=%s event=bfd-bind-failed error=%s", self.peer, self.error)
            return
        self._loop = loop
        self.error = None
        self.local_disc = new_discriminator(self.rand)
        self.session = BfdSession(self.params, local_disc=self.local_disc, rand=self.rand, now=loop.time())
        self._rx.add(self)
        self._pump()

    def stop(self) -> None:
        """Tell the peer AdminDown (RFC 5880 6.8.16: not a path failure), then close."""
        s = self.session
        if s is None:
            return
        s.admin_down(self._loop.time())
        self._send_all()
        while s.next_event() is not None:
            pass
        self.session = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self._rx is not None:
            self._rx.remove(self)
            self.receivers.release(self._rx)
            self._rx = None
        if self._tx is not None:
            self._tx.close()
            self._tx = None
        _DISCS.discard(self.local_disc)

    def set_params(self, params: BfdParams) -> bool:
        self.params = params
        if self.session is None:
            return False
        changed = self.session.set_params(params, self._loop.time())
        self._pump()
        return changed

    # BfdEndpoint
    def datagram(self, data: bytes, now: float) -> None:
        if self.session is not None:
            self.session.receive(data, now)
            self._pump()

    def drop(self, reason: str) -> None:
        if self.session is not None:
            self.session.drops[reason] += 1

    def _send_all(self) -> None:
        s, sk = self.session, self._tx
        for d in s.datagrams_to_send() if s is not None else ():
            if sk is None:
                continue
            try:
                sk.sendto(d, (self.peer, CONTROL_PORT))
            except OSError as e:
                self.send_errors[errno.errorcode.get(e.errno, str(e.errno))] += 1

    def _pump(self) -> None:
        s = self.session
        if s is None:
            return
        self._send_all()
        while (ev := s.next_event()) is not None:
            try:
                self.on_event(ev)
            except Exception:  # noqa: BLE001 - the session keeps running
                log.exception("bfd peer=%s event handler failed", self.peer)
            if self.session is None:
                return
        self._send_all()
        t = s.next_deadline()
        if t == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        self._timer = self._loop.call_at(t, self._on_timer) if t is not None else None

    def _on_timer(self) -> None:
        at, self._timer, self._timer_at = self._timer_at, None, None
        if self.session is not None:
            self.session.timer(max(self._loop.time(), at or 0.0))   # call_at may fire a hair early
            self._pump()

    def status(self) -> dict:
        st = self.session.status() if self.session is not None else {"state": "stopped"}
        if self.send_errors:
            st["send_errors"] = dict(self.send_errors)
        if self.error:
            st["error"] = self.error
        return st
