"""ICMP echo through one tunnel interface: the thin I/O adapter of the static health check.

A raw ICMP socket (CAP_NET_RAW) bound to the tunnel interface and the inside address
sends echo requests to AWS's inside address and hands the sequence numbers of matching
replies (our identifier, from that address, a valid checksum) to ``on_reply``. The decisions
(what is due, what silence means) are the sans-IO core's (:class:`cgwd.routing.static.StaticRoutes`).

IPv4 inside /30s get ICMP (RFC 792), IPv6 inside /126s ICMPv6 (RFC 4443) to AWS's IPv6
inside address: the kernel fills in the ICMPv6 checksum of what we send (it covers a
pseudo-header with the addresses), we check it on what we receive, and an ICMP6_FILTER lets
only echo replies reach the socket (no neighbour discovery traffic).
"""
from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
import struct

ECHO_REQUEST, ECHO_REPLY = 8, 0
ECHO6_REQUEST, ECHO6_REPLY = 128, 129
PAYLOAD = b"cgwd health check"
ICMP6_FILTER = 1                 # <netinet/icmp6.h>: setsockopt(IPPROTO_ICMPV6, ICMP6_FILTER)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    head = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(head + payload), ident, seq) + payload


def parse_echo_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply with our identifier in an IPv4 packet, or None."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8:
        return None
    typ, code, _csum, rid, seq = struct.unpack("!BBHHH", icmp[:8])
    if typ != ECHO_REPLY or code != 0 or rid != ident or checksum(icmp) != 0:
        return None
    return seq


def echo6_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    """An ICMPv6 echo request with a zero checksum: the kernel computes it on raw ICMPv6
    sockets (it covers the IPv6 pseudo-header, RFC 4443 2.3)."""
    return struct.pack("!BBHHH", ECHO6_REQUEST, 0, 0, ident, seq) + payload


def icmp6_checksum(src: str, dst: str, message: bytes) -> int:
    """The ICMPv6 checksum of ``message`` (its checksum field as given) from ``src`` to ``dst``."""
    pseudo = (ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
              + struct.pack("!I3xB", len(message), socket.IPPROTO_ICMPV6))
    return checksum(pseudo + message)


def parse_echo6_reply(message: bytes, ident: int, src: str, dst: str) -> int | None:
    """The sequence number of an ICMPv6 echo reply with our identifier (a raw ICMPv6 socket
    delivers the message without the IPv6 header), from ``src`` to ``dst``, or None."""
    if len(message) < 8:
        return None
    typ, code, _csum, rid, seq = struct.unpack("!BBHHH", message[:8])
    if typ != ECHO6_REPLY or code != 0 or rid != ident or icmp6_checksum(src, dst, message) != 0:
        return None
    return seq


def echo6_filter() -> bytes:
    """struct icmp6_filter passing only echo replies (a set bit blocks that type)."""
    words = [0xFFFFFFFF] * 8
    words[ECHO6_REPLY >> 5] &= ~(1 << (ECHO6_REPLY & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


class IcmpEcho:
    def __init__(self, local_address: str, remote_address: str, ifname: str, on_reply):
        self.local_address, self.remote_address, self.ifname = local_address, remote_address, ifname
        self.on_reply = on_reply
        self.ident = secrets.randbits(16)
        self.v6 = ipaddress.ip_address(remote_address).version == 6
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        if self.v6:
            sk = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            sk = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
            if self.v6:
                sk.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, echo6_filter())
            sk.bind((self.local_address, 0))
            sk.setblocking(False)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(sk.fileno(), self._readable)
        except BaseException:
            sk.close()
            raise
        self._sock = sk

    def send(self, seq: int) -> None:
        if self._sock is not None:
            packet = echo6_request(self.ident, seq) if self.v6 else echo_request(self.ident, seq)
            self._sock.sendto(packet, (self.remote_address, 0))

    def close(self) -> None:
        sk, self._sock = self._sock, None
        if sk is not None:
            if self._loop is not None:
                self._loop.remove_reader(sk.fileno())
            sk.close()

    def _readable(self) -> None:
        sk = self._sock
        for _ in range(64):
            if sk is None:
                return
            try:
                data, addr = sk.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not _same_address(addr[0], self.remote_address):
                continue
            if self.v6:
                seq = parse_echo6_reply(data, self.ident, self.remote_address, self.local_address)
            else:
                seq = parse_echo_reply(data, self.ident)
            if seq is not None:
                self.on_reply(seq)


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b)
    except ValueError:
        return False
