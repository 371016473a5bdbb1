"""Userspace ESP tunnel-mode data path: a TUN interface per tunnel, ESP in Python.

Outbound: packets read from the TUN -> family and traffic-selector check -> IPv4: MSS
clamp, clear DF, fragment above the tunnel MTU; IPv6: MSS clamp, and above the tunnel MTU
an ICMPv6 Packet Too Big back into the TUN (IPv6 routers do not fragment) -> ESP (next
header 4 or 41) with the newest installed SA pair -> the daemon's ``send_udp``
(UDP-encapsulated, RFC 3948) or the raw IP protocol 50 socket of the local address
(:mod:`cgwd.esp.espsock`, shared with the other tunnels on that address), over IPv4 or
IPv6.

Inbound: ESP from ``receive_esp`` (UDP 4500, owned by the IKE endpoint) or from the raw
socket (demultiplexed by SPI) -> SA by SPI -> replay pre-check -> ICV -> decrypt ->
padding check -> window update -> inner checks (family of the SA pair, selectors) -> MSS
clamp -> TUN.

Every bad packet is a counted drop (per SA when the SA is known, else per data path);
no exception from packet handling reaches the event loop. IPv6 multicast the kernel sends
on the tunnel interface (e.g. MLD reports) is not tunnelled and is counted apart, under
``ignored``, not as drops.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct

from cgwd.esp.datapath import Datapath, SaInstallError
from cgwd.esp.espsock import ESP_SOCKETS, EspSocket, EspSockets
from cgwd.esp.events import SaExpiring, SequenceExhausted
from cgwd.esp.inner import InnerDrop, Selector, clamp_mss, prepare_outbound, validate_ipv4
from cgwd.esp.inner6 import TokenBucket, clamp_mss6, packet_too_big, validate_ipv6
from cgwd.esp.packet import (
    NEXT_HEADER_IPV4,
    NEXT_HEADER_IPV6,
    NEXT_HEADER_NONE,
    EspDecoder,
    EspDrop,
    EspEncoder,
    SequenceExhaustedError,
)
from cgwd.esp.sa import SaPair
from cgwd.esp.tun import TunDevice
from cgwd.ipsec_sa import ALL_CAPABILITIES, EspCapabilities, IpsecSaPair, SOL_UDP

log = logging.getLogger(__name__)

BATCH = 64  # packets handled per readiness callback before yielding to the loop
TICK_SECONDS = 1.0
# UDP GSO (Linux >= 4.18): one sendmsg carries up to 64 equal-size datagrams; the kernel
# splits them (late, at the receiving socket or the wire), which saves a system call and a
# trip through routing/netfilter per ESP packet.
UDP_SEGMENT = 103
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # UDP payload of one GSO send (IPv4 limit 65507)
_U16 = struct.Struct("=H")
# counters kept across rekeys in stats()["totals"] (current pairs + removed ones)
TOTAL_KEYS = ("packets_in", "packets_out", "bytes_in", "bytes_out", "replay_drops", "auth_failures")
# ICMPv6 Packet Too Big: at most this many per second (bursts of PTB_BURST), RFC 4443 2.4 f
PTB_RATE = 10.0
PTB_BURST = 10

# packets on an SPI IKE said is coming (expect_spi) that arrive before its pair: held, at most
# EARLY_PACKETS per SPI and EARLY_SPIS SPIs, each packet for EARLY_HOLD seconds, then counted
# as unknown_spi drops
EARLY_PACKETS = 32
EARLY_SPIS = 8
EARLY_HOLD = 2.0

CAPABILITIES = EspCapabilities(ALL_CAPABILITIES.encryption, ALL_CAPABILITIES.integrity,
                               why="userspace ESP: every transform through the cryptography package")


class _Entry:
    """Everything the hot path needs for one installed pair."""

    __slots__ = ("sa", "enc", "dec", "sel_out", "sel_in", "dest", "udp", "in_c", "out_c", "pending_out",
                 "inner", "nh")

    def __init__(self, sa: SaPair) -> None:
        p = sa.pair
        self.sa = sa
        self.enc = EspEncoder(sa.outbound)
        self.dec = EspDecoder(sa.inbound)
        self.sel_out = Selector(p.local_ts, p.remote_ts)
        self.sel_in = Selector(p.remote_ts, p.local_ts)
        self.inner = p.inner_family
        self.nh = NEXT_HEADER_IPV4 if self.inner == 4 else NEXT_HEADER_IPV6
        self.udp = p.udp_encap
        self.dest = (p.remote_address, p.remote_port if p.udp_encap else 0)
        self.in_c = sa.inbound.counters
        self.out_c = sa.outbound.counters
        self.pending_out = False  # installed inbound only; outbound waits (activate_outbound)


class _Early:
    """An inbound SPI IKE allocated whose pair is not installed yet, and what came on it."""

    __slots__ = ("until", "raw", "packets")

    def __init__(self, until: float, raw: bool) -> None:
        self.until = until
        self.raw = raw  # registered on the shared raw ESP socket for this SPI
        self.packets: list[tuple[float, bytes]] = []


class UserspaceDatapath(Datapath):
    kind = "userspace"
    pending_outbound = True

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._tun: TunDevice | None = None
        self._tun_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sockets: EspSockets = self.esp_sockets if self.esp_sockets is not None else ESP_SOCKETS
        self._esp_sock: EspSocket | None = None  # the shared raw ESP socket, once a pair needs it
        self._entries: dict[int, _Entry] = {}  # spi_in -> entry, in install order
        self._out: _Entry | None = None
        self._retired = dict.fromkeys(TOTAL_KEYS, 0)  # counts of pairs already removed
        self._early: dict[int, _Early] = {}  # SPIs IKE said are coming (expect_spi)
        self.early_delivered = 0  # held packets delivered once their pair was installed
        self._drops: dict[str, int] = {}
        self._ignored: dict[str, int] = {}
        self._ptb = TokenBucket(PTB_RATE, PTB_BURST)
        self.ptb_sent = 0
        self._src6 = self.inside.ip.packed if self.inner_family == 6 else b""
        self.findings: list = []  # what could not be set up on the interface (system_checks.Finding)
        self._closed = False
        self._gso = True  # try UDP GSO batches until the kernel says no
        self.gso_sends = 0

    def capabilities(self) -> EspCapabilities:
        return CAPABILITIES

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        tun = TunDevice(self.ifname)
        tun.open()
        try:
            self.findings = await tun.configure(self.inside, self.mtu)
        except BaseException:
            tun.close()
            raise
        for f in self.findings:
            log.warning("%s: %s (fix: %s)", self.name, f.what, f.fix)
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
        self._release_esp_socket()
        if self._tun is not None:
            if self._loop is not None and self._tun_fd is not None:
                self._loop.remove_reader(self._tun_fd)
            self._tun.close()  # non-persistent TUN: the interface goes with the fd
            self._tun = None
            self._tun_fd = None

    def _mtu_changed(self, mtu: int) -> None:
        if self._tun is not None:
            self._set_link_mtu(mtu)

    # ------------------------------------------------------------------ SAs
    def install(self, pair: IpsecSaPair, *, outbound: bool = True) -> None:
        """Install a pair. ``outbound=False``: receive on it at once but keep sending on the
        current pair until the peer's first authenticated packet on the new one arrives (it
        has the pair then) or ``activate_outbound`` is called: make-before-break for rekeys
        we start, whose responder installs the pair only after our last quick-mode message.

        Raises :class:`SaInstallError` (nothing installed) when the pair cannot be used."""
        if pair.spi_in in self._entries:
            raise SaInstallError("duplicate_spi", f"SA with inbound SPI 0x{pair.spi_in:08x} already installed",
                                 pair.spi_in)
        self.check_installable(pair)
        try:
            entry = _Entry(SaPair(pair, replay_window=self.replay_window, now=self.clock()))
        except ValueError as exc:
            raise SaInstallError("invalid_pair", str(exc), pair.spi_in) from None
        if not pair.udp_encap:
            self._register_raw(pair)
        self._entries[pair.spi_in] = entry
        if outbound or self._out is None:
            self._set_out(entry)
            log.info("%s: installed %s", self.name, pair.describe())
        else:
            entry.pending_out = True
            log.info("%s: installed %s (inbound; outbound when the peer uses it)", self.name, pair.describe())
        early = self._early.pop(pair.spi_in, None)
        if early is not None:
            if early.raw and pair.udp_encap and self._esp_sock is not None:
                self._esp_sock.unregister(pair.spi_in, self._on_raw_esp)
            self._deliver_early(pair.spi_in, early)

    # ------------------------------------------------------------------ SPIs before their pair
    def expect_spi(self, spi_in: int, seconds: float) -> None:
        """Hold packets on ``spi_in`` that come before its pair (see Datapath.expect_spi)."""
        if self._closed or spi_in in self._entries:
            return
        now = self.clock()
        self._expire_early(now)
        while len(self._early) >= EARLY_SPIS:
            self._forget_early(next(iter(self._early)))
        sock = self._esp_sock
        raw = self._out is not None and not self._out.udp and sock is not None
        if raw and not sock.register(spi_in, self._on_raw_esp):
            raw = False  # another tunnel on this address has it: nothing to hold
        self._early[spi_in] = _Early(now + seconds, raw)

    def _hold_early(self, spi: int, data: bytes) -> bool:
        early = self._early.get(spi)
        if early is None:
            return False
        now = self.clock()
        if now > early.until:
            self._forget_early(spi)
            return False
        if len(early.packets) >= EARLY_PACKETS:
            return False
        early.packets.append((now, data))
        return True

    def _deliver_early(self, spi: int, early: _Early) -> None:
        self._drop_stale(early, self.clock())
        if early.packets:
            log.info("%s: %d packet(s) on SPI 0x%08x came before its pair was installed (the peer sent on it "
                     "before its last quick-mode message reached us): delivered now", self.name,
                     len(early.packets), spi)
        for _at, d in early.packets:
            self.early_delivered += 1
            self._receive(d)

    def _drop_stale(self, early: _Early, now: float) -> None:
        """Held packets older than EARLY_HOLD (the oldest first: they are held in arrival order)
        leave as unknown_spi drops."""
        stale = 0
        while stale < len(early.packets) and now - early.packets[stale][0] > EARLY_HOLD:
            stale += 1
        if stale:
            del early.packets[:stale]
            for _ in range(stale):
                self._drop("unknown_spi")

    def _forget_early(self, spi: int) -> None:
        early = self._early.pop(spi, None)
        if early is None:
            return
        for _ in early.packets:
            self._drop("unknown_spi")
        if early.raw and self._esp_sock is not None:
            self._esp_sock.unregister(spi, self._on_raw_esp)

    def _expire_early(self, now: float) -> None:
        for spi, early in list(self._early.items()):
            if now > early.until:
                self._forget_early(spi)
            else:
                self._drop_stale(early, now)

    def _set_out(self, entry: _Entry | None) -> None:
        self._out = entry
        if entry is not None:
            entry.pending_out = False
            self._follow(entry.sa.pair)

    def activate_outbound(self, spi_in: int, why: str = "") -> bool:
        """Send on this pair from now on (no-op for an unknown SPI)."""
        e = self._entries.get(spi_in)
        if e is None:
            return False
        if e.pending_out or self._out is not e:
            self._set_out(e)
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
            self._set_out(next(reversed(self._entries.values()), None))
        log.info("%s: removed %s", self.name, entry.sa.pair.describe())

    def _retire(self, entry: _Entry) -> None:
        st = entry.sa.stats()
        for k in TOTAL_KEYS:
            self._retired[k] += int(st.get(k) or 0)
        if self._esp_sock is not None and not entry.udp:
            self._esp_sock.unregister(entry.sa.spi_in, self._on_raw_esp)

    def remove_all(self) -> None:
        for entry in self._entries.values():
            self._retire(entry)
        self._entries.clear()
        self._out = None
        for spi in list(self._early):
            self._forget_early(spi)

    def sa_pair(self, spi_in: int) -> SaPair | None:
        e = self._entries.get(spi_in)
        return e.sa if e else None

    # ------------------------------------------------------------------ raw ESP socket
    def _register_raw(self, pair: IpsecSaPair) -> None:
        """Plain ESP for ``pair``: the shared socket of its local address delivers its SPI here."""
        if self._esp_sock is None:
            try:
                self._esp_sock = self._sockets.acquire(pair.local_address, self)
            except OSError as exc:
                raise SaInstallError("raw_socket_failed", f"cannot open a raw ESP socket on "
                                     f"{pair.local_address}: {exc.strerror}", pair.spi_in) from None
        elif self._esp_sock.local_address != str(ipaddress.ip_address(pair.local_address)):
            raise SaInstallError("unsupported_family", f"plain ESP on {pair.local_address} while this tunnel "
                                 f"uses {self._esp_sock.local_address}", pair.spi_in)
        if not self._esp_sock.register(pair.spi_in, self._on_raw_esp):
            raise SaInstallError("spi_in_use", f"inbound SPI 0x{pair.spi_in:08x} is in use by another tunnel "
                                 f"on {pair.local_address}", pair.spi_in)

    def _release_esp_socket(self) -> None:
        if self._esp_sock is not None:
            for spi in self._esp_sock.spis():
                self._esp_sock.unregister(spi, self._on_raw_esp)
            self._sockets.release(self._esp_sock.local_address, self)
            self._esp_sock = None

    def _on_raw_esp(self, data: bytes, source: str) -> None:
        self._receive(data)

    # ------------------------------------------------------------------ stats
    def _drop(self, reason: str) -> None:
        self._drops[reason] = self._drops.get(reason, 0) + 1

    def _ignore(self, reason: str) -> None:
        self._ignored[reason] = self._ignored.get(reason, 0) + 1

    def inbound_packets(self) -> dict[int, int]:
        # every second per tunnel: the counters themselves (stats() was 4 % of an idle 50-tunnel daemon)
        return {spi: e.in_c.packets for spi, e in self._entries.items()}

    def stats(self) -> dict:
        sas = [e.sa.stats() for e in self._entries.values()]
        return {
            "kind": self.kind,
            "ifname": self.ifname,
            "inside": str(self.inside),
            "inner_family": self.inner_family,
            "mtu": self.mtu,
            "mss": self.mss,
            "mss6": self.mss6,
            "active_spi_out": self._out.sa.spi_out if self._out else None,
            "sas": sas,
            "totals": {k: self._retired[k] + sum(int(x.get(k) or 0) for x in sas) for k in TOTAL_KEYS},
            "drops": dict(self._drops),
            "ignored": dict(self._ignored),
            "icmp6_packet_too_big": self.ptb_sent,
            "esp_socket": self._esp_sock.local_address if self._esp_sock is not None else None,
            "system": [f.as_dict() for f in self.findings],
            "gso_sends": self.gso_sends,
            "early": {"pending_spis": len(self._early), "delivered": self.early_delivered},
        }

    # ------------------------------------------------------------------ events / lifetimes
    def _emit(self, ev: object) -> None:
        try:
            self.on_event(ev)
        except Exception:  # the daemon's handler must not break the data path
            log.exception("%s: event handler failed for %r", self.name, ev)

    def check_lifetimes(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        if self._early:
            self._expire_early(now)
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
        spi = int.from_bytes(data[:4], "big")
        e = self._entries.get(spi)
        if e is None:
            if not (self._early and self._hold_early(spi, data)):
                self._drop("unknown_spi")
            return
        try:
            nh, inner = e.dec.decrypt(data)
        except EspDrop:
            return  # counted on the SA
        if e.pending_out:  # the peer sends on the new pair (authenticated): it has it
            self.activate_outbound(e.sa.pair.spi_in, "peer uses it")
        if nh != e.nh:
            if nh == NEXT_HEADER_NONE:
                e.in_c.drop("dummy")
            else:
                e.in_c.drop("wrong_family" if nh in (NEXT_HEADER_IPV4, NEXT_HEADER_IPV6) else "next_header")
            return
        try:
            inner = validate_ipv4(inner) if nh == NEXT_HEADER_IPV4 else validate_ipv6(inner)
        except InnerDrop as d:
            e.in_c.drop(d.reason)
            return
        if not e.sel_in.match(inner):
            e.in_c.drop("ts_mismatch")
            return
        if nh == NEXT_HEADER_IPV4:
            if self.mss:
                inner = clamp_mss(inner, self.mss)
        elif self.mss6:
            inner = clamp_mss6(inner, self.mss6)
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

        Fast path (inlined): with any-to-any selectors and no byte lifetime, an IPv4
        packet without options that fits the MTU and is not a TCP SYN (nothing to clamp)
        has DF cleared and is encrypted; an IPv6 packet that fits, is not multicast and
        does not start with a TCP SYN is encrypted as it is.  Everything else takes
        ``_outbound``, which applies the same rules one function at a time."""
        fd = self._tun_fd
        if fd is None:
            return
        out: list[bytes] = []
        append = out.append
        read = os.read
        e = self._out
        fast = e is not None and e.sel_out.any and not e.sa.lifetime.soft_bytes
        fast4 = fast and e.inner == 4
        fast6 = fast and e.inner == 6
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
                if (fast4 and 34 <= n <= mtu and pkt[0] == 0x45 and ((pkt[2] << 8) | pkt[3]) == n
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
                elif (fast6 and 54 <= n <= mtu and pkt[0] >> 4 == 6 and ((pkt[4] << 8) | pkt[5]) + 40 == n
                        and pkt[24] != 0xFF and not (pkt[6] == 6 and pkt[53] & 0x02)):
                    append(encrypt(pkt, NEXT_HEADER_IPV6))
                else:
                    self._outbound(pkt, out)
            except SequenceExhaustedError:
                self._seq_exhausted(e)
                fast4 = fast6 = False  # the rest of the batch goes to whatever sends now
            except Exception:
                log.exception("%s: unexpected error on outbound packet", self.name)
                self._drop("internal_error")
        if out:
            self._transmit(out)

    def send_inner(self, pkt: bytes) -> None:
        """Encrypt and send one inner packet (as read from the TUN)."""
        out: list[bytes] = []
        self._outbound(pkt, out)
        if out:
            self._transmit(out)

    def _outbound(self, pkt: bytes, out: list) -> None:
        """Inner checks and processing, then ESP with the active pair; appends the ESP
        packet(s) to ``out`` (all for ``self._out``)."""
        version = pkt[0] >> 4 if pkt else 0
        if version == 6:
            try:
                pkt = validate_ipv6(pkt)
            except InnerDrop as d:
                self._drop(d.reason)
                return
            if pkt[24] == 0xFF:  # multicast (MLD reports and the like): not for the tunnel
                self._ignore("ipv6_multicast")
                return
        elif version == 4:
            try:
                pkt = validate_ipv4(pkt)
            except InnerDrop as d:
                self._drop(d.reason)
                return
        else:
            self._drop("not_ip")
            return
        e = self._out
        if e is None:
            self._drop("no_sa")
            return
        if version != e.inner:
            self._drop("wrong_family")  # e.g. IPv6 routed into an IPv4 tunnel
            return
        if not e.sel_out.match(pkt):
            e.out_c.drop("ts_mismatch")
            return
        if version == 6:
            if len(pkt) > self.mtu:
                self._too_big6(e, pkt)
                return
            if self.mss6:
                pkt = clamp_mss6(pkt, self.mss6)
            esp = self._encrypt(e, pkt)
            if esp is not None:
                out.append(esp)
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

    def _too_big6(self, e: _Entry, pkt: bytes) -> None:
        """An IPv6 packet above the tunnel MTU: dropped (counted) and answered with an
        ICMPv6 Packet Too Big carrying the MTU, written back into the TUN (rate limited)."""
        e.out_c.drop("too_big")
        ptb = packet_too_big(pkt, self.mtu, self._src6)
        if ptb is None:
            return
        if not self._ptb.take(self.clock()):
            self._drop("icmp6_rate_limited")
            return
        fd = self._tun_fd
        if fd is None:
            return
        try:
            os.write(fd, ptb)
            self.ptb_sent += 1
        except OSError:
            self._drop("tun_write_error")

    def _encrypt(self, e: _Entry, pkt: bytes) -> bytes | None:
        try:
            esp = e.enc.encrypt(pkt, e.nh)
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
        """The outbound sequence number of ``e`` is used up: never wrap. Drop (counted), tell
        the daemon once (IKE rekeys), and send on a newer pair already installed, if any."""
        e.out_c.drop("seq_exhausted")
        sa = e.sa
        if not sa.seq_exhausted_fired:
            sa.seq_exhausted_fired = True
            self._emit(SequenceExhausted(sa.spi_in))
        newer = next(reversed(self._entries.values()), None)
        if self._out is e and newer is not None and newer is not e and newer.sa.outbound.seq < sa.outbound.seq:
            self.activate_outbound(newer.sa.spi_in, "sequence numbers of the older pair used up")

    def _gso_socket(self) -> socket.socket | None:
        """The UDP 4500 socket behind ``send_udp`` (``udp_socket``: the IKE endpoint's), for
        UDP GSO batches; None without one."""
        if not self._gso or self.udp_socket is None:
            return None
        return self.udp_socket()

    def _transmit(self, pkts: list) -> None:
        """Send ESP packets of the active pair, in order."""
        e = self._out
        if e is None:  # the pair went away (hard lifetime) while encrypting
            self._drop("no_sa")
            return
        c = e.out_c
        if not e.udp:
            sock, dest = self._esp_sock, e.dest[0]
            if sock is None:
                c.drop("send_failed")
                return
            for p in pkts:
                try:
                    sock.sendto(p, dest)
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
__all__ = ["UserspaceDatapath", "CAPABILITIES"]
