"""asyncio adapter for one BgpSession (one peer, one tunnel).

* active connect from ``local_address`` (bound before connect) to remote:port;
* a passive listener bound to ``local_address:port`` (IP_FREEBIND, so it can be set up
  before the tunnel's inside address exists), accepting only ``remote_address``;
* both connections are fed to the core, which resolves collisions (RFC 4271 6.8);
* timers via loop.call_at on the core's get_timer();
* input processed in bounded slices with ``await asyncio.sleep(0)`` in between, and
  reading paused while a backlog is pending, so keepalives go out on time during a
  large UPDATE burst.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque

from .md5 import set_tcp_md5
from .session import BgpSession

log = logging.getLogger("cgwd.bgp.speaker")

IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
SLICE_BYTES = 16 * 1024
PAUSE_BACKLOG = 256 * 1024
RESUME_BACKLOG = 64 * 1024
FAST_CONNECT_ATTEMPTS = (0.25, 0.5)   # seconds; see _connect


def tune_socket(sk: socket.socket) -> None:
    """What a BGP connection's socket gets, either family: no Nagle delay, CS6 like routers
    (IPv4 TOS or IPv6 traffic class), and TCP keepalive probes, which find a connection the
    peer closed while its RST was lost (a peer rejecting our connection resets it): otherwise
    it sits in OpenSent for the 240 s hold and collision resolution refuses every connection
    the peer opens. Each option on its own: one the kernel refuses leaves the others set."""
    v6 = sk.family == socket.AF_INET6
    opts = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
            (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, 0xC0) if v6 else (socket.IPPROTO_IP, socket.IP_TOS, 0xC0),
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 3), (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)]
    for level, opt, value in opts:
        try:
            sk.setsockopt(level, opt, value)
        except OSError:
            pass


class _Proto(asyncio.Protocol):
    def __init__(self, speaker: "BgpSpeaker", outbound: bool):
        self.speaker = speaker
        self.outbound = outbound
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.speaker._on_made(self)

    def data_received(self, data):
        self.speaker._on_data(self, data)

    def connection_lost(self, exc):
        self.speaker._on_lost(self, exc)


class BgpSpeaker:
    def __init__(self, session: BgpSession, *, local_address: str, remote_address: str,
                 port: int = 179, on_event=None, listen: bool = True,
                 slice_bytes: int = SLICE_BYTES, md5_key: bytes | None = None):
        self.session = session
        self.md5_key = md5_key          # RFC 2385 signature to remote_address (cgwd.bgp.md5)
        self.local_address = local_address
        self.remote_address = remote_address
        self.port = port
        self.on_event = on_event
        self.listen = listen
        self.slice_bytes = slice_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._protos: dict[bool, _Proto] = {}
        self._closing: set = set()
        self._backlog: dict[bool, deque] = {True: deque(), False: deque()}
        self._backlog_bytes = {True: 0, False: 0}
        self._wake: asyncio.Event | None = None
        self._reader: asyncio.Task | None = None
        self._connect_task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pumping = False
        self._stopped = False
        self.listen_error: str | None = None
        self.counters: dict[str, int] = {}   # drops by reason (hostile input), for status/metrics

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopped = False
        if self.listen:
            try:
                self._server = await self._loop.create_server(
                    lambda: _Proto(self, False), sock=self._listen_socket())
            except OSError as e:
                self.listen_error = str(e)
                log.warning("BGP listener on %s:%d failed: %s", self.local_address, self.port, e)
        self._reader = self._loop.create_task(self._read_loop())
        self.session.start(self._now())
        self._pump()

    def _listen_socket(self) -> socket.socket:
        fam = socket.AF_INET6 if ":" in self.local_address else socket.AF_INET
        sk = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                # only the one address, never IPv4-mapped connections on it
                sk.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sk.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)   # IPv6 sockets take it too
            except OSError:
                pass
            if self.md5_key:
                set_tcp_md5(sk, self.remote_address, self.md5_key)
            sk.bind((self.local_address, self.port))
            sk.listen(8)
            sk.setblocking(False)
        except Exception:
            sk.close()
            raise
        return sk

    async def stop(self, reason: str = "") -> None:
        if self._loop is None:
            return
        self.session.stop(self._now(), reason)
        self._pump()
        self._stopped = True
        if self._connect_task is not None:
            self._connect_task.cancel()
        for p in list(self._protos.values()):
            if p.transport is not None:
                p.transport.close()
        self._protos.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
        await asyncio.sleep(0)

    # ------------------------------------------------------------ API passthrough
    def announce(self, routes) -> None:
        self.session.announce(routes)
        if self._loop is not None:
            self._pump()

    def withdraw(self, prefixes) -> None:
        self.session.withdraw(prefixes)
        if self._loop is not None:
            self._pump()

    def status(self) -> dict:
        st = self.session.status()
        if self.listen_error:
            st["listen_error"] = self.listen_error
        return st

    # ------------------------------------------------------------ internals
    def _now(self) -> float:
        return self._loop.time()

    def _on_made(self, p: _Proto) -> None:
        if self._stopped:
            p.transport.close()
            return
        if not p.outbound:
            peer = p.transport.get_extra_info("peername")
            if not peer or peer[0] != self.remote_address:
                log.info("BGP: rejecting connection from %s (expect %s)", peer, self.remote_address)
                self.counters["rejected_connection"] = self.counters.get("rejected_connection", 0) + 1
                self._closing.add(p)
                p.transport.close()
                return
        old = self._protos.get(p.outbound)
        if old is not None and old is not p:
            self._closing.add(old)
            old.transport.close()
            self.session.connection_lost(self._now(), outbound=p.outbound)
        sk = p.transport.get_extra_info("socket")
        if sk is not None:
            tune_socket(sk)
        self._protos[p.outbound] = p
        self._backlog[p.outbound].clear()
        self._backlog_bytes[p.outbound] = 0
        self.session.connection_made(self._now(), outbound=p.outbound)
        self._pump()

    def _on_data(self, p: _Proto, data: bytes) -> None:
        if self._protos.get(p.outbound) is not p:
            return
        self._backlog[p.outbound].append(data)
        self._backlog_bytes[p.outbound] += len(data)
        if self._backlog_bytes[p.outbound] > PAUSE_BACKLOG:
            try:
                p.transport.pause_reading()
            except Exception:
                pass
        self._wake.set()

    def _on_lost(self, p: _Proto, exc) -> None:
        if p in self._closing:
            self._closing.discard(p)
            return
        if self._protos.get(p.outbound) is not p:
            return
        del self._protos[p.outbound]
        # deliver what was already received before reporting the loss
        d = p.outbound
        if self._backlog[d]:
            self.session.receive_data(b"".join(self._backlog[d]), self._now(), outbound=d)
            self._backlog[d].clear()
            self._backlog_bytes[d] = 0
        if not self._stopped:
            self.session.connection_lost(self._now(), outbound=d)
            self._pump()

    async def _read_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                worked = False
                for d in (True, False):
                    q = self._backlog[d]
                    if not q:
                        continue
                    worked = True
                    chunk = q.popleft()
                    if len(chunk) > self.slice_bytes:
                        q.appendleft(chunk[self.slice_bytes:])
                        chunk = chunk[:self.slice_bytes]
                    self._backlog_bytes[d] -= len(chunk)
                    p = self._protos.get(d)
                    if p is not None:
                        self.session.receive_data(chunk, self._now(), outbound=d)
                        if self._backlog_bytes[d] < RESUME_BACKLOG:
                            try:
                                p.transport.resume_reading()
                            except Exception:
                                pass
                    self._pump()
                if not worked:
                    break
                await asyncio.sleep(0)     # let timers (keepalives) and other tunnels run

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._now()
        t = self.session.get_timer()
        if t is not None and t <= now:
            # unprocessed input from the peer proves it is alive (and holds its KEEPALIVEs)
            for d, q in self._backlog.items():
                if q:
                    self.session.peer_alive(now, outbound=d)
            self.session.handle_timer(now)
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            for _ in range(100):
                sess = self.session
                if sess.wants_connect() and not self._stopped:
                    self._start_connect()
                wrote = False
                for d, p in list(self._protos.items()):
                    data = sess.data_to_send(d)
                    if data and p.transport is not None and not p.transport.is_closing():
                        p.transport.write(data)
                        wrote = True
                for d in sess.connections_to_close():
                    p = self._protos.pop(d, None)
                    if p is not None:
                        data = sess.data_to_send(d)
                        if data:
                            p.transport.write(data)
                        self._closing.add(p)
                        p.transport.close()       # flushes the buffered NOTIFICATION first
                        self._backlog[d].clear()
                        self._backlog_bytes[d] = 0
                had_event = False
                while True:
                    ev = sess.next_event()
                    if ev is None:
                        break
                    had_event = True
                    if self.on_event is not None:
                        try:
                            self.on_event(ev)
                        except Exception:
                            log.exception("BGP on_event handler failed")
                if not had_event and not wrote:
                    break
            self._schedule()
        finally:
            self._pumping = False

    def _schedule(self) -> None:
        t = self.session.get_timer()
        if t == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = t
        if t is not None and not self._stopped:
            self._timer = self._loop.call_at(t, self._on_timer)

    def _start_connect(self) -> None:
        if self._connect_task is not None and not self._connect_task.done():
            return
        self._connect_task = self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        fam = socket.AF_INET6 if ":" in self.remote_address else socket.AF_INET
        timeout = max(1.0, float(self.session.config.connect_retry))
        deadline = self._loop.time() + timeout
        # The first SYN, sent the moment the tunnel's SA is installed, is often lost: an IKEv1
        # responder installs its SA only once it has processed the last quick-mode message.
        # The kernel would re-send it after 1 s; fresh attempts after 0.25 s and 0.5 s come
        # sooner, and the last attempt gets the rest of the connect-retry time.
        quick = list(FAST_CONNECT_ATTEMPTS)
        while True:
            sk = socket.socket(fam, socket.SOCK_STREAM)
            try:
                sk.setblocking(False)
                sk.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.md5_key:
                    set_tcp_md5(sk, self.remote_address, self.md5_key)
                sk.bind((self.local_address, 0))
                left = deadline - self._loop.time()
                wait = quick.pop(0) if quick and left > 2 * quick[0] else left
                await asyncio.wait_for(self._loop.sock_connect(sk, (self.remote_address, self.port)),
                                       max(wait, 0.01))
                await self._loop.create_connection(lambda: _Proto(self, True), sock=sk)
                return
            except asyncio.CancelledError:
                sk.close()
                raise
            except (OSError, asyncio.TimeoutError) as e:
                sk.close()
                if isinstance(e, asyncio.TimeoutError) and wait < left and not self._stopped:
                    continue           # a quick attempt timed out: a new SYN now
                log.debug("BGP connect %s -> %s failed: %s", self.local_address, self.remote_address, e)
                if not self._stopped:
                    self.session.connection_lost(self._now(), outbound=True)
                    self._pump()
                return
