"""The data-path interface the daemon codes against, the factory, and the kernel
capability probe.

Usage by the daemon (one data path per AWS tunnel)::

    kind, why = choose_datapath(cfg.datapath)            # "auto" | "kernel" | "userspace"
    log.info("tunnel %s: %s data path (%s)", name, kind, why)
    dp = make_datapath(kind, name="tunnel1", ifname="cgw-tun1",
                       inside=ipaddress.IPv4Interface("169.254.10.2/30"),
                       send_udp=ike_endpoint.send_esp,   # sendto on the UDP 4500 socket
                       on_event=handle_esp_event, local_address="192.0.2.2")
    await dp.open()
    dp.install(pair)                 # every IpsecSaPair from quick mode (rekeys too)
    dp.remove(old_spi_in)            # when the old pair is deleted (make-before-break)
    dp.receive_esp(data, addr)       # ESP that arrived on UDP 4500 (non-ESP marker absent)
    await dp.close()
"""

from __future__ import annotations

import abc
import ipaddress
from typing import Callable

from cgwd.ipsec_sa import IpsecSaPair

DATAPATH_KINDS = ("userspace", "kernel")


class Datapath(abc.ABC):
    kind: str = ""

    def __init__(
        self,
        *,
        name: str,
        ifname: str,
        inside: ipaddress.IPv4Interface,
        mtu: int = 1436,
        mss: int = 1379,
        replay_window: int = 1024,
        send_udp: Callable[[bytes, tuple[str, int]], None] | None,
        on_event: Callable[[object], None],
        local_address: str,
    ) -> None:
        from cgwd.esp.sa import REPLAY_WINDOW_MAX, REPLAY_WINDOW_MIN

        if not REPLAY_WINDOW_MIN <= replay_window <= REPLAY_WINDOW_MAX:
            raise ValueError(f"replay window must be {REPLAY_WINDOW_MIN}..{REPLAY_WINDOW_MAX}")
        if not 576 <= mtu <= 9000:
            raise ValueError(f"tunnel MTU {mtu} out of range 576..9000")
        if mss and not 536 <= mss <= mtu - 40:
            raise ValueError(f"MSS {mss} out of range 536..{mtu - 40}")
        self.name = name
        self.ifname = ifname
        self.inside = ipaddress.IPv4Interface(inside)
        self.mtu = mtu
        self.mss = mss
        self.replay_window = replay_window
        self.send_udp = send_udp
        self.on_event = on_event
        self.local_address = local_address

    @abc.abstractmethod
    async def open(self) -> None:
        """Create the interface (``ifname``) with the inside address and MTU, up."""

    #: True when ``install(pair, outbound=False)`` and ``activate_outbound(spi_in)`` exist:
    #: the pair receives at once and outbound switches when the peer's first authenticated
    #: packet on it arrives (or when activated), for make-before-break on our own rekeys.
    pending_outbound = False

    @abc.abstractmethod
    def install(self, pair: IpsecSaPair) -> None:
        """Add the pair: its inbound SA is valid at once and outbound traffic
        switches to it.  Older pairs keep receiving until removed."""

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

    @abc.abstractmethod
    async def close(self) -> None:
        """Remove everything this object installed."""


def make_datapath(
    kind: str,
    *,
    name: str,
    ifname: str,
    inside: ipaddress.IPv4Interface,
    mtu: int = 1436,
    mss: int = 1379,
    replay_window: int = 1024,
    send_udp: Callable[[bytes, tuple[str, int]], None] | None,
    on_event: Callable[[object], None],
    local_address: str,
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
