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
import struct
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
# UDP GSO (Linux >= 4.18): one sendmsg carries up to 64 equal-size datagrams; the kernel
# splits them (late, at the receiving socket or the wire), which saves a system call and a
# trip through routing/netfilter per ESP packet.
SOL_UDP = 17
UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # UDP payload of one GSO send (IPv4 limit 65507)
_U16 = struct.Struct("=H")
# counters kept across rekeys in stats()["totals"] (current pairs + removed ones)
TOTAL_KEYS = ("packets_in", "packets_out", "bytes_in", "bytes_out", "replay_drops", "auth_failures")


class _Entry:
    """Everything the hot path needs for one installed pair."""

    __slots__ = ("sa", "enc", "dec", "sel_out", "sel_in", "dest", "udp", "in_c", "out_c", "pending_out")

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
        self.pending_out = False  # installed inbound only; outbound waits (activate_outbound)


class UserspaceDatapath(Datapath):
    kind = "userspace"
    pending_outbound = True

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._tun: TunDevice | None = None
        self._tun_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._raw: socket.socket | None = None
        self._entries: dict[int, _Entry] = {}  # spi_in -> entry, in install order
        self._out: _Entry | None = None
        self._retired = dict.fromkeys(TOTAL_KEYS, 0)  # counts of pairs already removed
        self._drops: dict[str, int] = {}
        self._closed = False
        self._gso = True  # try UDP GSO batches until the kernel says no
        self.gso_sends = 0

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
    def install(self, pair: IpsecSaPair, *, outbound: bool = True) -> None:
        """Install a pair. ``outbound=False``: receive on it at once but keep sending on the
        current pair until the peer's first authenticated packet on the new one arrives (it
        has the pair then) or ``activate_outbound`` is called: make-before-break for rekeys
        we start, whose responder installs the pair only after our last quick-mode message."""
        if pair.spi_in in self._entries:
            raise ValueError(f"SA with inbound SPI 0x{pair.spi_in:08x} already installed")
        if pair.udp_encap and self.send_udp is None:
            raise ValueError("UDP-encapsulated SA but no send_udp callable was given")
        entry = _Entry(SaPair(pair, replay_window=self.replay_window))
        if not pair.udp_encap:
            self._ensure_raw_socket(pair.local_address)
        self._entries[pair.spi_in] = entry
        if outbound or self._out is None:
            self._out = entry
            log.info("%s: installed %s", self.name, pair.describe())
        else:
            entry.pending_out = True
            log.info("%s: installed %s (inbound; outbound when the peer uses it)", self.name, pair.describe())

    def activate_outbound(self, spi_in: int, why: str = "") -> bool:
        """Send on this pair from now on (no-op for an unknown SPI)."""
        e = self._entries.get(spi_in)
        if e is None:
            return False
        if e.pending_out or self._out is not e:
            e.pending_out = False
            self._out = e
            log.info("%s: outbound now on SPI 0x%08x%s", self.name, e.sa.spi_out, f" ({why})" if why else "")
        return True

    def remove(self, spi_in: int) -> None:
        entry = self._entries.pop(spi_in, None)
        if entry is None:
            return
        self._retire(entry)
        if self._out is entry:
            # fall back to the newest remaining pair (installed last), pending or not:
            # there is nothing else to send on
            self._out = next(reversed(self._entries.values()), None)
            if self._out is not None:
                self._out.pending_out = False
        log.info("%s: removed %s", self.name, entry.sa.pair.describe())

    def _retire(self, entry: _Entry) -> None:
        st = entry.sa.stats()
        for k in TOTAL_KEYS:
            self._retired[k] += int(st.get(k) or 0)

    def remove_all(self) -> None:
        for entry in self._entries.values():
            self._retire(entry)
        self._entries.clear()
        self._out = None

    def sa_pair(self, spi_in: int) -> SaPair | None:
        e = self._entries.get(spi_in)
        return e.sa if e else None

    # ------------------------------------------------------------------ stats
    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def stats(self) -> dict:
        sas = [e.sa.stats() for e in self._entries.values()]
        return {
            "kind": self.kind,
            "ifname": self.ifname,
            "inside": str(self.inside),
            "mtu": self.mtu,
            "mss": self.mss,
            "active_spi_out": f"0x{self._out.sa.spi_out:08x}" if self._out else None,
            "sas": sas,
            "totals": {k: self._retired[k] + sum(int(x.get(k) or 0) for x in sas) for k in TOTAL_KEYS},
            "drops": dict(self._drops),
            "gso_sends": self.gso_sends,
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
        if e.pending_out:  # the peer sends on the new pair (authenticated): it has it
            self.activate_outbound(e.sa.pair.spi_in, "peer uses it")
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
        """Read up to BATCH packets from the TUN, encrypt them all, then send the batch
        (runs of equal-size ESP packets go out with one UDP GSO ``sendmsg``).

        Fast path (inlined): an IPv4 packet without options that fits the MTU, is not a
        TCP SYN (nothing to clamp), with any-to-any selectors and no byte lifetime: DF is
        cleared and the packet encrypted.  Everything else takes ``_outbound``, which
        applies the same rules one function at a time."""
        fd = self._tun_fd
        if fd is None:
            return
        out: list[bytes] = []
        append = out.append
        read = os.read
        e = self._out
        fast = e is not None and e.sel_out.any and not e.sa.lifetime.soft_bytes
        if fast:
            encrypt = e.enc.encrypt
            mtu = self.mtu
        for _ in range(BATCH):
            try:
                pkt = read(fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop("tun_read_error")
                break
            try:
                n = len(pkt)
                if (fast and 34 <= n <= mtu and pkt[0] == 0x45 and ((pkt[2] << 8) | pkt[3]) == n
                        and not (pkt[9] == 6 and pkt[33] & 0x02)):
                    if pkt[6] & 0x40:  # clear DF; header checksum + 0x4000 (RFC 1624)
                        b = bytearray(pkt)
                        b[6] &= 0xBF
                        ck = (~((b[10] << 8) | b[11]) & 0xFFFF) + 0xBFFF
                        ck = ~((ck & 0xFFFF) + (ck >> 16)) & 0xFFFF
                        b[10] = ck >> 8
                        b[11] = ck & 0xFF
                        pkt = b
                    append(encrypt(pkt, NEXT_HEADER_IPV4))
                else:
                    self._outbound(pkt, out)
            except SequenceExhaustedError:
                self._seq_exhausted(e)
            except Exception:
                log.exception("%s: unexpected error on outbound packet", self.name)
                self._drop("internal_error")
        if out:
            self._transmit(out)

    def send_inner(self, pkt: bytes) -> None:
        """Encrypt and send one inner IPv4 packet (as read from the TUN)."""
        out: list[bytes] = []
        self._outbound(pkt, out)
        if out:
            self._transmit(out)

    def _outbound(self, pkt: bytes, out: list) -> None:
        """Inner checks and processing, then ESP with the active pair; appends the ESP
        packet(s) to ``out`` (all for ``self._out``)."""
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
            res = prepare_outbound(pkt, self.mtu, self.mss)
        except InnerDrop as d:
            e.out_c.drop(d.reason)
            return
        if res.__class__ is list:
            for frag in res:
                esp = self._encrypt(e, frag)
                if esp is not None:
                    out.append(esp)
        else:
            esp = self._encrypt(e, res)
            if esp is not None:
                out.append(esp)

    def _encrypt(self, e: _Entry, pkt: bytes) -> bytes | None:
        try:
            esp = e.enc.encrypt(pkt, NEXT_HEADER_IPV4)
        except SequenceExhaustedError:
            self._seq_exhausted(e)
            return None
        lt = e.sa.lifetime
        if lt.soft_bytes:
            b = e.out_c.bytes
            if (b >= lt.soft_bytes and not e.sa.soft_fired) or b >= lt.hard_bytes:
                self.check_lifetimes()
        return esp

    def _seq_exhausted(self, e: _Entry) -> None:
        e.out_c.drop("seq_exhausted")
        sa = e.sa
        if not sa.seq_exhausted_fired:
            sa.seq_exhausted_fired = True
            self._emit(SequenceExhausted(sa.spi_in))

    def _gso_socket(self) -> socket.socket | None:
        """The UDP 4500 socket behind ``send_udp`` when it is a bound method of an owner
        exposing ``natt_socket`` (the IKE endpoint), for UDP GSO batches; else None."""
        if not self._gso:
            return None
        return getattr(getattr(self.send_udp, "__self__", None), "natt_socket", None)

    def _transmit(self, pkts: list) -> None:
        """Send ESP packets of the active pair, in order."""
        e = self._out
        if e is None:  # the pair went away (hard lifetime) while encrypting
            self._drop("no_sa")
            return
        c = e.out_c
        if not e.udp:
            raw, dest = self._raw, e.dest
            for p in pkts:
                try:
                    raw.sendto(p, dest)
                except BlockingIOError:
                    c.drop("send_blocked")
                except Exception:
                    c.drop("send_failed")
            return
        sock = self._gso_socket() if len(pkts) > 1 else None
        if sock is None:
            self._send_each(c, pkts, e.dest)
            return
        dest = e.dest
        n = len(pkts)
        i = 0
        while i < n:
            size = len(pkts[i])
            limit = min(n, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // size)
            j = i + 1
            while j < limit and len(pkts[j]) == size:
                j += 1
            if j < limit and len(pkts[j]) < size:  # a shorter last segment may ride along
                j += 1
            if j - i == 1:
                self._send_each(c, pkts[i:j], dest)
                i = j
                continue
            try:
                sock.sendmsg([b"".join(pkts[i:j])], [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))], 0, dest)
                self.gso_sends += 1
            except BlockingIOError:
                for _ in range(j - i):
                    c.drop("send_blocked")
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    # no UDP GSO here (old kernel, odd route): fall back for good
                    log.info("%s: UDP GSO unavailable (%s); sending ESP packets one by one",
                             self.name, exc.strerror)
                    self._gso = False
                    self._send_each(c, pkts[i:], dest)
                    return
                for _ in range(j - i):
                    c.drop("send_failed")
            i = j

    def _send_each(self, c, pkts: list, dest: tuple) -> None:
        send = self.send_udp
        for p in pkts:
            try:
                send(p, dest)
            except BlockingIOError:
                c.drop("send_blocked")
            except Exception:
                c.drop("send_failed")


# Convenience for scripts/tests that want the concrete class by name.
__all__ = ["UserspaceDatapath"]
