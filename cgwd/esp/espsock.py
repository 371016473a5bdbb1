"""Raw ESP (IP protocol 50) sockets: one per local address, shared by the tunnels on it.

A raw socket receives every ESP packet addressed to its address, whichever tunnel it
belongs to, so one socket per tunnel would hand each tunnel the others' packets (counted
as unknown SPIs). Instead :class:`EspSockets` (the owner) keeps one :class:`EspSocket`
per local address: the first data path that needs plain ESP on an address opens it
(``acquire``), the last one to let go closes it (``release``). Inbound packets are
demultiplexed by SPI to the handler each data path registered for its inbound SPIs;
packets for no registered SPI are counted once, on the socket.

IPv4 raw sockets deliver the IP header with the packet (stripped here); IPv6 raw
sockets deliver the payload only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Callable

log = logging.getLogger(__name__)

IPPROTO_ESP = 50
BATCH = 64  # packets read per readiness callback before yielding to the loop

Handler = Callable[[bytes, str], None]  # (ESP packet from the SPI on, source address)


class EspSocket:
    """One raw ESP socket bound to one local address, dispatching by SPI."""

    def __init__(self, local_address: str, sock: socket.socket | None = None) -> None:
        addr = ipaddress.ip_address(local_address)
        self.local_address = local_address
        self.family = addr.version
        self.counters: dict[str, int] = {}
        self._handlers: dict[int, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        if sock is None:
            sock = socket.socket(socket.AF_INET if self.family == 4 else socket.AF_INET6,
                                 socket.SOCK_RAW, IPPROTO_ESP)
            try:
                sock.setblocking(False)
                if not addr.is_unspecified:
                    sock.bind((local_address, 0))
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tests drive on_readable themselves)
            self._loop = None
        if self._loop is not None:
            self._loop.add_reader(sock.fileno(), self.on_readable)

    # ---------------------------------------------------------------- SPIs
    def register(self, spi: int, handler: Handler) -> bool:
        """Deliver ESP with ``spi`` to ``handler``; False when another handler has it."""
        cur = self._handlers.get(spi)
        if cur is not None and cur != handler:
            return False
        self._handlers[spi] = handler
        return True

    def unregister(self, spi: int, handler: Handler | None = None) -> None:
        if handler is None or self._handlers.get(spi) == handler:
            self._handlers.pop(spi, None)

    def spis(self) -> list[int]:
        return list(self._handlers)

    # ---------------------------------------------------------------- I/O
    def _count(self, reason: str) -> None:
        self.counters[reason] = self.counters.get(reason, 0) + 1

    def dispatch(self, packet: bytes, source: str) -> None:
        """One received datagram as the socket returns it (IPv4: with its IP header)."""
        if self.family == 4:
            if len(packet) < 20 or packet[0] >> 4 != 4:
                self._count("truncated")
                return
            packet = packet[(packet[0] & 15) * 4:]
        if len(packet) < 8:
            self._count("truncated")
            return
        handler = self._handlers.get(int.from_bytes(packet[:4], "big"))
        if handler is None:
            self._count("unknown_spi")
            return
        try:
            handler(packet, source)
        except Exception:  # a data path's bug must not stop the others' traffic
            log.exception("ESP socket %s: handler failed", self.local_address)
            self._count("internal_error")

    def on_readable(self) -> None:
        sock = self.sock
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._count("recv_error")
                return
            self.dispatch(data, addr[0])

    def sendto(self, data: bytes, address: str) -> None:
        self.sock.sendto(data, (address, 0))

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, RuntimeError):  # loop already closed
                pass
        self.sock.close()
        self._handlers.clear()


class EspSockets:
    """The owner of the raw ESP sockets: one per local address, reference counted by the
    data paths that use it (opened with the first, closed with the last)."""

    def __init__(self, opener: Callable[[str], EspSocket] = EspSocket) -> None:
        self._opener = opener
        self._socks: dict[str, EspSocket] = {}
        self._users: dict[str, set[int]] = {}

    @staticmethod
    def _key(local_address: str) -> str:
        return str(ipaddress.ip_address(local_address))

    def acquire(self, local_address: str, user: object) -> EspSocket:
        """The socket of ``local_address`` (opened now if no one holds it)."""
        key = self._key(local_address)
        s = self._socks.get(key)
        if s is None:
            s = self._opener(key)
            self._socks[key] = s
            self._users[key] = set()
            log.info("raw ESP socket opened on %s", key)
        self._users[key].add(id(user))
        return s

    def release(self, local_address: str, user: object) -> None:
        key = self._key(local_address)
        users = self._users.get(key)
        if users is None:
            return
        users.discard(id(user))
        if not users:
            self._socks.pop(key).close()
            del self._users[key]
            log.info("raw ESP socket closed on %s", key)

    def get(self, local_address: str) -> EspSocket | None:
        return self._socks.get(self._key(local_address))

    def addresses(self) -> list[str]:
        return list(self._socks)

    def stats(self) -> dict[str, dict]:
        """Per local address: users, registered SPIs, drops (unknown SPIs etc.)."""
        return {a: {"users": len(self._users[a]), "spis": len(s.spis()), "drops": dict(s.counters)}
                for a, s in self._socks.items()}


#: The process's raw ESP sockets, used by data paths not given another owner.
ESP_SOCKETS = EspSockets()
