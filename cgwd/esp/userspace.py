"""Userspace ESP tunnel-mode data path: a TUN interface per tunnel, ESP in Python.

Outbound: packets read from the TUN -> traffic-selector check -> MSS clamp, clear DF,
fragment above the tunnel MTU -> ESP with the newest installed SA pair -> the
daemon's ``send_udp`` (UDP-encapsulated, RFC 3948) or our raw IP protocol 50 socket.

Inbound: ESP from ``receive_esp`` (UDP 4500, owned by the IKE endpoint) or from the raw
socket -> SA by SPI -> replay pre-check -> ICV -> decrypt -> padding check -> window
update -> inner checks (IPv4, selectors) -> MSS clamp -> TUN.

Every bad packet is a counted drop (per SA when the SA is known, else per data path);
no exception from packet handling reaches the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from typing import Callable

from cgwd.esp.datapath import Datapath
from cgwd.esp.events import SaExpiring, SequenceExhausted
from cgwd.esp.inner import InnerDrop, Selector, clamp_mss, prepare_outbound, validate_ipv4
from cgwd.esp.packet import (
    NEXT_HEADER_IPV4,
    NEXT_HEADER_NONE,
    EspDecoder,
    EspDrop,
    EspEncoder,
    SequenceExhaustedError,
)
from cgwd.esp.sa import SaPair
from cgwd.esp.tun import TunDevice
from cgwd.ipsec_sa import IpsecSaPair

log = logging.getLogger(__name__)

BATCH = 64  # packets handled per readiness callback before yielding to the loop
TICK_SECONDS = 1.0
IPPROTO_ESP = 50


class _Entry:
    """Everything the hot path needs for one installed pair."""

    __slots__ = ("sa", "enc", "dec", "sel_out", "sel_in", "dest", "udp", "in_c", "out_c")

    def __init__(self, sa: SaPair) -> None:
        p = sa.pair
        self.sa = sa
        self.enc = EspEncoder(sa.outbound)
        self.dec = EspDecoder(sa.inbound)
        self.sel_out = Selector(p.local_ts, p.remote_ts)
        self.sel_in = Selector(p.remote_ts, p.local_ts)
        self.udp = p.udp_encap
        self.dest = (p.remote_address, p.remote_port if p.udp_encap else 0)
        self.in_c = sa.inbound.counters
        self.out_c = sa.outbound.counters


class UserspaceDatapath(Datapath):
    kind = "userspace"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._tun: TunDevice | None = None
        self._tun_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._raw: socket.socket | None = None
        self._entries: dict[int, _Entry] = {}  # spi_in -> entry, in install order
        self._out: _Entry | None = None
        self._drops: dict[str, int] = {}
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        tun = TunDevice(self.ifname)
        tun.open()
        try:
            await tun.configure(self.inside, self.mtu)
        except BaseException:
            tun.close()
            raise
        self._tun = tun
        self._tun_fd = tun.fd
        self._loop.add_reader(tun.fd, self._on_tun_readable)
        self._timer = self._loop.call_later(TICK_SECONDS, self._tick)
        log.info("%s: userspace ESP data path on %s (%s, mtu %d)", self.name, self.ifname, self.inside, self.mtu)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.remove_all()
        if self._raw is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._raw.fileno())
            self._raw.close()
            self._raw = None
        if self._tun is not None:
            if self._loop is not None and self._tun_fd is not None:
                self._loop.remove_reader(self._tun_fd)
            self._tun.close()  # non-persistent TUN: the interface goes with the fd
            self._tun = None
            self._tun_fd = None

    # ------------------------------------------------------------------ SAs
    def install(self, pair: IpsecSaPair) -> None:
        if pair.spi_in in self._entries:
            raise ValueError(f"SA with inbound SPI 0x{pair.spi_in:08x} already installed")
        if pair.udp_encap and self.send_udp is None:
            raise ValueError("UDP-encapsulated SA but no send_udp callable was given")
        entry = _Entry(SaPair(pair, replay_window=self.replay_window))
        if not pair.udp_encap:
            self._ensure_raw_socket(pair.local_address)
        self._entries[pair.spi_in] = entry
        self._out = entry
        log.info("%s: installed %s", self.name, pair.describe())

    def remove(self, spi_in: int) -> None:
        entry = self._entries.pop(spi_in, None)
        if entry is None:
            return
        if self._out is entry:
            # fall back to the newest remaining pair (installed last)
            self._out = next(reversed(self._entries.values()), None)
        log.info("%s: removed %s", self.name, entry.sa.pair.describe())

    def remove_all(self) -> None:
        self._entries.clear()
        self._out = None

    def sa_pair(self, spi_in: int) -> SaPair | None:
        e = self._entries.get(spi_in)
        return e.sa if e else None

    # ------------------------------------------------------------------ stats
    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def stats(self) -> dict:
        return {
            "kind": self.kind,
            "ifname": self.ifname,
            "inside": str(self.inside),
            "mtu": self.mtu,
            "mss": self.mss,
            "active_spi_out": f"0x{self._out.sa.spi_out:08x}" if self._out else None,
            "sas": [e.sa.stats() for e in self._entries.values()],
            "drops": dict(self._drops),
        }

    # ------------------------------------------------------------------ events / lifetimes
    def _emit(self, ev: object) -> None:
        try:
            self.on_event(ev)
        except Exception:  # the daemon's handler must not break the data path
            log.exception("%s: event handler failed for %r", self.name, ev)

    def check_lifetimes(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for spi_in, e in list(self._entries.items()):
            what = e.sa.check_lifetime(now)
            if what == "hard":
                self.remove(spi_in)
                self._emit(SaExpiring(spi_in, True))
            elif what == "soft":
                self._emit(SaExpiring(spi_in, False))

    def _tick(self) -> None:
        try:
            self.check_lifetimes()
        finally:
            if not self._closed and self._loop is not None:
                self._timer = self._loop.call_later(TICK_SECONDS, self._tick)

    # ------------------------------------------------------------------ raw ESP socket
    def _ensure_raw_socket(self, local_address: str) -> None:
        if self._raw is not None:
            return
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_ESP)
        try:
            s.setblocking(False)
            if local_address and local_address != "0.0.0.0":
                s.bind((local_address, 0))
        except BaseException:
            s.close()
            raise
        self._raw = s
        if self._loop is not None:
            self._loop.add_reader(s.fileno(), self._on_raw_readable)

    def _on_raw_readable(self) -> None:
        raw = self._raw
        for _ in range(BATCH):
            try:
                data, addr = raw.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop("raw_recv_error")
                return
            try:
                if len(data) < 20:
                    self._drop("truncated")
                    continue
                self._receive(data[(data[0] & 15) * 4 :])
            except Exception:
                log.exception("%s: unexpected error on received ESP", self.name)
                self._drop("internal_error")

    # ------------------------------------------------------------------ inbound
    def receive_esp(self, data: bytes, remote: tuple[str, int]) -> None:
        try:
            self._receive(data)
        except Exception:
            log.exception("%s: unexpected error on received ESP", self.name)
            self._drop("internal_error")

    def _receive(self, data: bytes) -> None:
        if len(data) < 8:
            self._drop("truncated")
            return
        e = self._entries.get(int.from_bytes(data[:4], "big"))
        if e is None:
            self._drop("unknown_spi")
            return
        try:
            nh, inner = e.dec.decrypt(data)
        except EspDrop:
            return  # counted on the SA
        if nh != NEXT_HEADER_IPV4:
            e.in_c.drop("dummy" if nh == NEXT_HEADER_NONE else "next_header")
            return
        try:
            inner = validate_ipv4(inner)
        except InnerDrop as d:
            e.in_c.drop(d.reason)
            return
        if not e.sel_in.match(inner):
            e.in_c.drop("ts_mismatch")
            return
        if self.mss:
            inner = clamp_mss(inner, self.mss)
        fd = self._tun_fd
        if fd is None:
            e.in_c.drop("tun_closed")
            return
        try:
            os.write(fd, inner)
        except BlockingIOError:
            e.in_c.drop("tun_full")
        except OSError:
            e.in_c.drop("tun_write_error")

    # ------------------------------------------------------------------ outbound
    def _on_tun_readable(self) -> None:
        fd = self._tun_fd
        for _ in range(BATCH):
            if fd is None:
                return
            try:
                pkt = os.read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop("tun_read_error")
                if exc.errno == errno.EBADFD:
                    return
                return
            try:
                self.send_inner(pkt)
            except Exception:
                log.exception("%s: unexpected error on outbound packet", self.name)
                self._drop("internal_error")
            fd = self._tun_fd

    def send_inner(self, pkt: bytes) -> None:
        """Encrypt and send one inner IPv4 packet (as read from the TUN)."""
        e = self._out
        if e is None:
            self._drop("no_sa")
            return
        if not pkt or pkt[0] >> 4 != 4:
            self._drop("not_ipv4")  # e.g. IPv6 router solicitations from the kernel
            return
        try:
            pkt = validate_ipv4(pkt)
        except InnerDrop as d:
            self._drop(d.reason)
            return
        if not e.sel_out.match(pkt):
            e.out_c.drop("ts_mismatch")
            return
        try:
            out = prepare_outbound(pkt, self.mtu, self.mss)
        except InnerDrop as d:
            e.out_c.drop(d.reason)
            return
        if out.__class__ is list:
            for frag in out:
                self._send_esp(e, frag)
        else:
            self._send_esp(e, out)

    def _send_esp(self, e: _Entry, pkt: bytes) -> None:
        try:
            esp = e.enc.encrypt(pkt, NEXT_HEADER_IPV4)
        except SequenceExhaustedError:
            e.out_c.drop("seq_exhausted")
            sa = e.sa
            if not sa.seq_exhausted_fired:
                sa.seq_exhausted_fired = True
                self._emit(SequenceExhausted(sa.spi_in))
            return
        lt = e.sa.lifetime
        if lt.soft_bytes:
            b = e.out_c.bytes
            if (b >= lt.soft_bytes and not e.sa.soft_fired) or b >= lt.hard_bytes:
                self.check_lifetimes()
        try:
            if e.udp:
                self.send_udp(esp, e.dest)
            else:
                self._raw.sendto(esp, e.dest)
        except BlockingIOError:
            e.out_c.drop("send_blocked")
        except Exception:
            e.out_c.drop("send_failed")


# Convenience for scripts/tests that want the concrete class by name.
__all__ = ["UserspaceDatapath"]
