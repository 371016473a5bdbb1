"""TUN interface for the userspace data path (Linux /dev/net/tun, IFF_TUN|IFF_NO_PI).

The interface is not persistent: it disappears when the file descriptor is closed, so
a crashed daemon leaves nothing behind.  Address, MTU and link state are set over
rtnetlink with pyroute2 (``AsyncIPRoute``: the synchronous ``IPRoute`` of pyroute2
0.9 runs its own event loop and cannot be used inside a running one). With IFF_NO_PI the
kernel takes each written packet's family from its version nibble (IPv4 or IPv6).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16


class TunDevice:
    def __init__(self, ifname: str) -> None:
        if not ifname or len(ifname.encode()) >= IFNAMSIZ or "/" in ifname or " " in ifname:
            raise ValueError(f"invalid interface name {ifname!r}")
        self.ifname = ifname
        self.fd: int | None = None
        self.index: int | None = None

    def open(self) -> int:
        """Create the interface; returns the non-blocking fd."""
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH22x", self.ifname.encode(), IFF_TUN | IFF_NO_PI)
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
            name = struct.unpack("16sH22x", res)[0].rstrip(b"\0").decode()
            if name != self.ifname:
                raise OSError(errno.EINVAL, f"kernel named the TUN {name!r}, not {self.ifname!r}")
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return fd

    async def configure(self, inside: ipaddress.IPv4Interface | ipaddress.IPv6Interface, mtu: int) -> list:
        """Inside address (169.254.10.2/30 or fd00::2/126), MTU, the settings cgwd owns on
        its interfaces (:func:`cgwd.system_checks.configure_interface`), link up.
        Returns the findings of what could not be set."""
        from pyroute2 import AsyncIPRoute

        from cgwd.system_checks import configure_interface

        inside = ipaddress.ip_interface(inside)
        ipr = AsyncIPRoute()
        try:
            idx = await ipr.link_lookup(ifname=self.ifname)
            if not idx:
                raise OSError(errno.ENODEV, f"{self.ifname} vanished")
            self.index = idx[0]
            await ipr.link("set", index=self.index, mtu=mtu)
            # before the address and the link go up: IPv6 on or off, no autoconfiguration
            findings = configure_interface(self.ifname, inner_family=inside.version)
            await ipr.addr(
                "add",
                index=self.index,
                address=str(inside.ip),
                prefixlen=inside.network.prefixlen,
            )
            await ipr.link("set", index=self.index, state="up")
        finally:
            ipr.close()
        return findings

    def read(self, size: int = 65536) -> bytes | None:
        """One packet, or None when nothing is pending."""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return None

    def write(self, pkt: bytes) -> None:
        os.write(self.fd, pkt)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def interface_exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")
