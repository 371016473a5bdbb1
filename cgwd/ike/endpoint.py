"""asyncio adapter for IKE engines (:class:`cgwd.ike.engine.IkeEngine`, either version): UDP
500 and 4500 on one address, shared by every tunnel of that address.

On the NAT-T port a datagram is
  * ``b"\\xff"``: a NAT keepalive (ignored),
  * starting with four zero bytes (the non-ESP marker): IKE, handed on without the marker,
  * anything else: UDP-encapsulated ESP, handed to ``esp_handler(data, remote)``.

IKE goes to the engine of the tunnel of the sender's address, demultiplexed by IKE version:
the version octet (offset 17 of the header: 0x10 IKEv1, 0x20 IKEv2) must be the engine's
(``engine.version``): a datagram of the other version is a counted drop
(``drop_wrong_ike_version``); what is no IKE at all the engine counts as malformed.

The engine's ``now`` is ``loop.time()`` (monotonic). Ports handed to the engine are the
logical ones (500 / 4500) even when the endpoint binds others (tests).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from cgwd.ipsec_sa import IKE_PORT, NATT_PORT, NON_ESP_MARKER, SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP

from .engine import IkeEngine
from .events import Datagram

log = logging.getLogger("cgwd.ike")

SO_RCVBUFFORCE = 33  # Linux; Python's socket module does not name it
VERSION_OFFSET = 17  # the version octet of both IKE headers (major version in the high nibble)
# Unauthenticated initiations are the engine's to limit (it alone knows which messages prove
# the sender's address): a spoofed first message from the peer's address must not cost the
# real peer its exchange, which a per-address bucket here would.


class IkeEndpoint:
    def __init__(self, local_address: str, *, port: int = IKE_PORT, natt_port: int = NATT_PORT) -> None:
        self.local_address = local_address
        self.port = port
        self.natt_port = natt_port
        self.event_handler: Callable[[IkeEngine, object], None] | None = None
        self.esp_handler: Callable[[bytes, tuple[str, int]], None] | None = None
        self.counters: dict[str, int] = {}
        self._peers: dict[str, IkeEngine] = {}
        # the remote addresses of tunnels disabled by the operator (`enabled = false`, `cgwctl
        # down`): what their peer sends is dropped (drop_tunnel_disabled) before the engine
        # sees it, so a disabled tunnel answers no initiation and caches nothing
        self._disabled: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sock: socket.socket | None = None
        self._natt_sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kernel_encap = False

    # ------------------------------------------------------------------ lifecycle

    def _bind(self, port: int) -> socket.socket:
        fam = socket.AF_INET6 if ":" in self.local_address else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # ESP-in-UDP shares the 4500 socket: bulk TCP through the tunnel overruns the
            # default receive buffer (about 10 % loss measured), so ask for 4 MiB.
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # beyond rmem_max (root)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setblocking(False)
            s.bind((self.local_address, port))
        except BaseException:
            s.close()
            raise
        return s

    async def start(self) -> None:
        self.open()

    def open(self) -> None:
        """Bind the sockets and register them with the running (or current) event loop."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = asyncio.get_event_loop()
        sock = self._bind(self.port)
        try:
            natt = self._bind(self.natt_port)
        except BaseException:
            sock.close()  # no half-open endpoint: both sockets or none
            raise
        self._sock, self._natt_sock = sock, natt
        try:
            if self._kernel_encap:
                self._set_encap()
        except BaseException:
            self._sock = self._natt_sock = None
            sock.close()
            natt.close()
            raise
        self._loop.add_reader(self._sock.fileno(), self._on_readable, self._sock, False)
        self._loop.add_reader(self._natt_sock.fileno(), self._on_readable, self._natt_sock, True)
        log.info("IKE endpoint on %s ports %d/%d", self.local_address, self.port, self.natt_port)

    def close(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        for s in (self._sock, self._natt_sock):
            if s is not None:
                try:
                    if self._loop is not None:
                        self._loop.remove_reader(s.fileno())
                except Exception:  # noqa: BLE001
                    pass
                s.close()
        self._sock = self._natt_sock = None

    def enable_kernel_encap(self) -> None:
        """Let the kernel decapsulate ESP-in-UDP on the NAT-T socket (kernel XFRM data path only)."""
        self._kernel_encap = True
        if self._natt_sock is not None:
            self._set_encap()

    def _set_encap(self) -> None:
        assert self._natt_sock is not None
        self._natt_sock.setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)

    @property
    def natt_socket(self) -> socket.socket | None:
        return self._natt_sock

    # ------------------------------------------------------------------ peers

    def add_peer(self, peer: IkeEngine) -> None:
        self._peers[peer.config.remote_address] = peer
        self.service(peer)

    def remove_peer(self, peer: IkeEngine) -> None:
        addr = peer.config.remote_address
        if self._peers.get(addr) is peer:
            del self._peers[addr]
            self._disabled.discard(addr)
        t = self._timers.pop(addr, None)
        if t:
            t.cancel()

    def peers(self) -> list[IkeEngine]:
        return list(self._peers.values())

    def now(self) -> float:
        loop = self._loop or asyncio.get_event_loop()
        return loop.time()

    def set_enabled(self, peer: IkeEngine, enabled: bool) -> None:
        """The operator enabled or disabled ``peer``'s tunnel (see ``_disabled``)."""
        if enabled:
            self._disabled.discard(peer.config.remote_address)
        else:
            self._disabled.add(peer.config.remote_address)

    def start_peer(self, peer: IkeEngine) -> None:
        """Convenience: ``peer.start(now)`` and flush its output."""
        peer.start(self.now())
        self.service(peer)

    def stop_peer(self, peer: IkeEngine) -> None:
        peer.stop(self.now())
        self.service(peer)

    def service(self, peer: IkeEngine) -> None:
        """Flush a peer's datagrams and events and re-arm its timer (call after any input)."""
        for d in peer.datagrams_to_send():
            self._send(d)
        while (ev := peer.next_event()) is not None:
            if self.event_handler is not None:
                try:
                    self.event_handler(peer, ev)
                except Exception:  # noqa: BLE001
                    log.exception("event handler failed for %s", ev)
        # the event handler may have fed the peer
        for d in peer.datagrams_to_send():
            self._send(d)
        addr = peer.config.remote_address
        old = self._timers.pop(addr, None)
        if old:
            old.cancel()
        if self._peers.get(addr) is not peer or self._loop is None:
            return
        deadline = peer.get_timer()
        if deadline is not None:
            self._timers[addr] = self._loop.call_at(deadline, self._on_timer, peer)

    def _on_timer(self, peer: IkeEngine) -> None:
        self._timers.pop(peer.config.remote_address, None)
        peer.handle_timer(self.now())
        self.service(peer)

    # ------------------------------------------------------------------ I/O

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _send(self, d: Datagram) -> None:
        natt = d.local_port == NATT_PORT
        sock = self._natt_sock if natt else self._sock
        if sock is None:
            self._count("send_no_socket")
            return
        data = d.data if (d.raw or not natt) else NON_ESP_MARKER + d.data
        try:
            sock.sendto(data, d.remote)
            self._count("sent")
        except OSError as e:
            self._count("send_errors")
            log.debug("send to %s failed: %s", d.remote, e)

    def send_esp(self, data: bytes, remote: tuple[str, int]) -> None:
        if self._natt_sock is None:
            self._count("send_no_socket")
            return
        try:
            self._natt_sock.sendto(data, remote)
        except OSError as e:
            self._count("send_errors")
            log.debug("ESP send to %s failed: %s", remote, e)

    def _on_readable(self, sock: socket.socket, natt: bool) -> None:
        for _ in range(64):
            try:
                data, remote = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._count("recv_errors")
                log.debug("recv failed: %s", e)
                return
            remote = (remote[0], remote[1])
            try:
                self._dispatch(data, remote, natt)
            except Exception:  # noqa: BLE001
                log.exception("dispatch failed")

    def _dispatch(self, data: bytes, remote: tuple[str, int], natt: bool) -> None:
        if natt:
            if data == b"\xff":
                self._count("keepalives_received")
                return
            if len(data) < 4:
                self._count("drop_short")
                return
            if data[:4] != NON_ESP_MARKER:
                if self.esp_handler is not None:
                    self.esp_handler(data, remote)
                else:
                    self._count("drop_esp_no_handler")
                return
            data = data[4:]
        peer = self._peers.get(remote[0])
        if peer is None:
            self._count("drop_unknown_peer")
            log.debug("IKE datagram from unknown peer %s", remote)
            return
        if remote[0] in self._disabled:
            self._count("drop_tunnel_disabled")
            log.debug("IKE datagram from %s for a disabled tunnel", remote)
            return
        major = data[VERSION_OFFSET] >> 4 if len(data) > VERSION_OFFSET else None
        if major in (1, 2) and major != peer.version:
            # (anything else malformed is the engine's to count)
            self._count("drop_wrong_ike_version")
            log.debug("IKEv%d datagram from %s for an IKEv%d tunnel", major, remote, peer.version)
            return
        peer.receive_datagram(data, remote, NATT_PORT if natt else IKE_PORT, self.now())
        self.service(peer)
