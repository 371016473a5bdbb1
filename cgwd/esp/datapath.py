"""The data-path interface the daemon codes against, the factory, and the kernel
capability probe.

Usage by the daemon (one data path per AWS tunnel)::

    kind, why = choose_datapath(cfg.datapath)            # "auto" | "kernel" | "userspace"
    log.info("tunnel %s: %s data path (%s)", name, kind, why)
    dp = make_datapath(kind, name="tunnel1", ifname="cgw-tun1",
                       inside=ipaddress.ip_interface("169.254.10.2/30"),   # or fd00::2/126
                       mtu=None, mss=None,               # None: follow the negotiated SA pair
                       send_udp=ike_endpoint.send_esp,   # sendto on the UDP 4500 socket
                       udp_socket=lambda: ike_endpoint.natt_socket,  # the same socket, for UDP GSO
                       on_event=handle_esp_event, local_address="192.0.2.2")
    caps = dp.capabilities()         # EspCapabilities: what IKE may offer and accept
    await dp.open()
    try:
        dp.install(pair)             # every IpsecSaPair from quick mode (rekeys too)
    except SaInstallError as exc:    # refused: tell IKE (exc.reason), the pair is not in use
        ike.install_failed(pair.spi_in, exc.reason, now)
    dp.remove(old_spi_in)            # when the old pair is deleted (make-before-break)
    dp.receive_esp(data, addr)       # ESP that arrived on UDP 4500 (non-ESP marker absent)
    await dp.close()

MTU: with ``mtu=None`` the interface starts at an MTU that fits any transform (see
:func:`cgwd.esp.mtu.conservative_mtu`) and follows the SA pair that sends (its algorithms,
UDP encapsulation and outer family) so that no outer packet exceeds 1500 bytes; the TCP
MSS clamp follows the MTU (IPv4: MTU - 40, IPv6: MTU - 60). A configured ``mtu`` is kept
whatever is negotiated; a configured ``mss`` is an upper bound for the tunnel's inner family
(the other family's is 20 bytes away); ``mss=0`` turns clamping off.
"""

from __future__ import annotations

import abc
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from typing import Callable

from cgwd.esp.mtu import IPV6_MIN_MTU, LINK_MTU, conservative_mtu, mss_for, tunnel_mtu
from cgwd.ipsec_sa import SPI_MIN, EspCapabilities, IpsecSaPair, ip_family

log = logging.getLogger(__name__)

DATAPATH_KINDS = ("userspace", "kernel")
SIOCSIFMTU = 0x8922


class SaInstallError(ValueError):
    """A data path refused an SA pair; nothing of it is installed.

    ``reason`` is one short word for IKE (``install_failed(spi_in, reason, now)``), status
    and metrics: ``spi_reserved``, ``duplicate_spi``, ``spi_in_use``,
    ``unsupported_algorithm``, ``unsupported_family``, ``unsupported_encap``,
    ``wrong_inner_family``, ``no_udp_sender``, ``raw_socket_failed``, ``kernel_refused``,
    ``not_open``. ``str(exc)`` says it in plain words (secret-free)."""

    def __init__(self, reason: str, detail: str, spi_in: int | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.spi_in = spi_in


def set_link_mtu(ifname: str, mtu: int) -> None:
    """Set an interface's MTU now (SIOCSIFMTU; OSError when the kernel says no)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCSIFMTU, struct.pack("16si20x", ifname.encode(), mtu))


class Datapath(abc.ABC):
    kind: str = ""

    def __init__(
        self,
        *,
        name: str,
        ifname: str,
        inside: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
        mtu: int | None = None,
        mss: int | None = None,
        replay_window: int = 1024,
        send_udp: Callable[[bytes, tuple[str, int]], None] | None,
        on_event: Callable[[object], None],
        local_address: str,
        esp_sockets=None,
        clock: Callable[[], float] = time.monotonic,
        udp_socket: Callable[[], "socket.socket | None"] | None = None,
    ) -> None:
        from cgwd.esp.sa import REPLAY_WINDOW_MAX, REPLAY_WINDOW_MIN

        self.inside = ipaddress.ip_interface(inside)
        self.inner_family = self.inside.version
        if not REPLAY_WINDOW_MIN <= replay_window <= REPLAY_WINDOW_MAX:
            raise ValueError(f"replay window must be {REPLAY_WINDOW_MIN}..{REPLAY_WINDOW_MAX}")
        lo = IPV6_MIN_MTU if self.inner_family == 6 else 576
        if mtu is not None and not lo <= mtu <= 9000:
            raise ValueError(f"tunnel MTU {mtu} out of range {lo}..9000")
        hi = (mtu or LINK_MTU) - 40
        if mss and not 536 <= mss <= hi:
            raise ValueError(f"MSS {mss} out of range 536..{hi}")
        self.name = name
        self.ifname = ifname
        self.replay_window = replay_window
        self.send_udp = send_udp
        # the UDP 4500 socket behind send_udp (the IKE endpoint's), for UDP GSO batches
        self.udp_socket = udp_socket
        self.on_event = on_event
        self.local_address = local_address
        try:
            self.outer_family = ip_family(local_address)
        except ValueError:
            self.outer_family = 4
        self.esp_sockets = esp_sockets
        self.clock = clock
        self.mtu_configured = mtu
        self.mss_configured = mss
        self.mtu = mtu if mtu is not None else conservative_mtu(self.outer_family)
        self.mss, self.mss6 = self._mss_for(self.mtu)

    # ------------------------------------------------------------------ MTU / MSS
    def _mss_for(self, mtu: int) -> tuple[int, int]:
        """(IPv4 MSS, IPv6 MSS) to clamp to at ``mtu``; (0, 0): clamping off."""
        if self.mss_configured == 0:
            return 0, 0
        m4, m6 = mss_for(mtu, 4), mss_for(mtu, 6)
        cfg = self.mss_configured
        if cfg is None:
            return m4, m6
        if self.inner_family == 6:  # configured as the tunnel's (IPv6) MSS
            return min(cfg + 20, m4), min(cfg, m6)
        return min(cfg, m4), min(cfg - 20, m6)

    def mtu_for(self, pair: IpsecSaPair) -> int:
        """The tunnel MTU while ``pair`` sends: the configured one, else what fits."""
        if self.mtu_configured is not None:
            return self.mtu_configured
        return max(tunnel_mtu(pair), IPV6_MIN_MTU if self.inner_family == 6 else 576)

    def _follow(self, pair: IpsecSaPair) -> None:
        """``pair`` sends from now on: the MTU and MSS follow it."""
        new = self.mtu_for(pair)
        if new == self.mtu:
            return
        old, self.mtu = self.mtu, new
        self.mss, self.mss6 = self._mss_for(new)
        log.info("%s: tunnel MTU %d -> %d, MSS %d/%d (IPv4/IPv6) for %s", self.name, old, new,
                 self.mss, self.mss6, pair.describe())
        self._mtu_changed(new)

    def _mtu_changed(self, mtu: int) -> None:
        """Hook: the interface's MTU must become ``mtu``."""

    def _set_link_mtu(self, mtu: int) -> None:
        try:
            set_link_mtu(self.ifname, mtu)
        except OSError as exc:
            log.warning("%s: cannot set the MTU of %s to %d: %s", self.name, self.ifname, mtu, exc.strerror)

    # ------------------------------------------------------------------ installs
    @abc.abstractmethod
    def capabilities(self) -> EspCapabilities:
        """What this data path can install (IKE offers and accepts only that)."""

    def check_installable(self, pair: IpsecSaPair) -> None:
        """Raise :class:`SaInstallError` for a pair no data path of this kind could use."""
        for what, spi in (("our", pair.spi_in), ("the peer's", pair.spi_out)):
            if not SPI_MIN <= spi <= 0xFFFFFFFF:
                raise SaInstallError("spi_reserved", f"{what} SPI 0x{spi:08x} is reserved (0..255)", pair.spi_in)
        refused = self.capabilities().refusal(pair)
        if refused is not None:
            raise SaInstallError(refused[0], refused[1], pair.spi_in)
        if pair.inner_family != self.inner_family:
            raise SaInstallError(
                "wrong_inner_family", f"{self.ifname} carries IPv{self.inner_family} but the SA pair's "
                f"selectors ({pair.local_ts} <-> {pair.remote_ts}) are IPv{pair.inner_family}", pair.spi_in)
        if pair.udp_encap and self.send_udp is None and self.kind == "userspace":
            raise SaInstallError("no_udp_sender", "UDP-encapsulated SA but no send_udp callable was given",
                                 pair.spi_in)

    @abc.abstractmethod
    async def open(self) -> None:
        """Create the interface (``ifname``) with the inside address and MTU, up."""

    #: True when ``install(pair, outbound=False)`` and ``activate_outbound(spi_in)`` exist:
    #: the pair receives at once and outbound switches when the peer's first authenticated
    #: packet on it arrives (or when activated), for make-before-break on our own rekeys.
    pending_outbound = False

    @abc.abstractmethod
    def install(self, pair: IpsecSaPair, *, outbound: bool = True) -> None:
        """Add the pair: its inbound SA is valid at once and outbound traffic
        switches to it (unless ``outbound`` is false and ``pending_outbound`` is true).
        Older pairs keep receiving until removed.  Raises :class:`SaInstallError` (and
        installs nothing) when the pair cannot be used."""

    def activate_outbound(self, spi_in: int, why: str = "") -> bool:
        """Send on this pair from now on; False where the data path cannot choose."""
        return False

    def expect_spi(self, spi_in: int, seconds: float) -> None:
        """The peer may send on ``spi_in`` for up to ``seconds`` before its pair is installed
        (an IKEv1 responder's pair between quick-mode messages 2 and 3). The userspace data
        path holds those first packets; the kernel's XFRM drops them (XfrmInNoStates), as it
        does for strongSwan, so here this does nothing."""

    @abc.abstractmethod
    def remove(self, spi_in: int) -> None:
        """Remove the pair whose inbound SPI is ``spi_in`` (no error if unknown)."""

    @abc.abstractmethod
    def remove_all(self) -> None:
        ...

    @abc.abstractmethod
    def receive_esp(self, data: bytes, remote: tuple[str, int]) -> None:
        """UDP-encapsulated ESP from the 4500 socket (without non-ESP marker)."""

    @abc.abstractmethod
    def stats(self) -> dict:
        """Secret-free counters (see module docs)."""

    def inbound_packets(self) -> dict[int, int]:
        """Packets received per inbound SPI, for the daemon's look at ESP liveness every second
        (a data path may answer it more cheaply than by building its whole stats)."""
        return {int(sa["spi_in"]): int(sa.get("packets_in") or 0) for sa in self.stats().get("sas", [])
                if sa.get("spi_in")}

    @abc.abstractmethod
    async def close(self) -> None:
        """Remove everything this object installed."""


def capabilities_for(kind: str) -> EspCapabilities:
    """What a data path of this kind can install, before one is created (IKE offers only that)."""
    if kind == "userspace":
        from cgwd.esp.userspace import CAPABILITIES

        return CAPABILITIES
    if kind == "kernel":
        from cgwd.esp.kernel import kernel_capabilities

        return kernel_capabilities()
    raise ValueError(f"unknown data path kind {kind!r} (expected one of {DATAPATH_KINDS})")


def make_datapath(
    kind: str,
    *,
    name: str,
    ifname: str,
    inside: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    mtu: int | None = None,
    mss: int | None = None,
    replay_window: int = 1024,
    send_udp: Callable[[bytes, tuple[str, int]], None] | None,
    on_event: Callable[[object], None],
    local_address: str,
    esp_sockets=None,
    clock: Callable[[], float] = time.monotonic,
    udp_socket: Callable[[], "socket.socket | None"] | None = None,
) -> Datapath:
    kw = dict(
        name=name,
        ifname=ifname,
        inside=inside,
        mtu=mtu,
        mss=mss,
        replay_window=replay_window,
        send_udp=send_udp,
        on_event=on_event,
        local_address=local_address,
        esp_sockets=esp_sockets,
        clock=clock,
        udp_socket=udp_socket,
    )
    if kind == "userspace":
        from cgwd.esp.userspace import UserspaceDatapath

        return UserspaceDatapath(**kw)
    if kind == "kernel":
        from cgwd.esp.kernel import KernelDatapath

        return KernelDatapath(**kw)
    raise ValueError(f"unknown data path kind {kind!r} (expected one of {DATAPATH_KINDS})")


def detect_kernel_support() -> tuple[bool, str]:
    """Probe (for real, over netlink) whether the kernel XFRM data path is usable:
    adds and deletes a throwaway ESP state, creates and deletes an xfrm interface
    (or a VTI).  Returns (usable, reason in plain words)."""
    from cgwd.esp.kernel import probe_kernel

    return probe_kernel()


def choose_datapath(requested: str) -> tuple[str, str]:
    """(kind, reason) for ``requested`` in "auto" | "kernel" | "userspace".

    "kernel" is honoured even when the probe fails (the reason then says why it
    will not work, and ``open()`` will fail); "auto" picks the kernel only when usable.
    """
    if requested == "userspace":
        return "userspace", "userspace data path requested in the configuration"
    if requested not in ("auto", "kernel"):
        raise ValueError(f"unknown data path {requested!r} (auto, kernel or userspace)")
    ok, why = detect_kernel_support()
    if requested == "kernel":
        if ok:
            return "kernel", f"kernel data path requested; {why}"
        return "kernel", f"kernel data path requested but probably unusable: {why}"
    if ok:
        return "kernel", f"auto: {why}"
    return "userspace", f"auto: kernel data path unusable ({why}); using the userspace ESP data path"
