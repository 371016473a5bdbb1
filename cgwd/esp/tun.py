"""TUN interface for the userspace data path (Linux /dev/net/tun, IFF_TUN|IFF_NO_PI).

The interface is not persistent: it disappears when the file descriptor is closed, so
a crashed daemon leaves nothing behind.  Address, MTU and link state are set over
rtnetlink with pyroute2 (``AsyncIPRoute``: the synchronous ``IPRoute`` of pyroute2
0.9 runs its own event loop and cannot be used inside a running one).
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

    async def configure(self, inside: ipaddress.IPv4Interface, mtu: int) -> None:
        """Inside address (e.g. 169.254.10.2/30), MTU, link up."""
        from pyroute2 import AsyncIPRoute

        ipr = AsyncIPRoute()
        try:
            idx = await ipr.link_lookup(ifname=self.ifname)
            if not idx:
                raise OSError(errno.ENODEV, f"{self.ifname} vanished")
            self.index = idx[0]
            await ipr.link("set", index=self.index, mtu=mtu)
            await ipr.addr(
                "add",
                index=self.index,
                address=str(inside.ip),
                prefixlen=inside.network.prefixlen,
            )
            _disable_ipv6(self.ifname)
            await ipr.link("set", index=self.index, state="up")
        finally:
            ipr.close()

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


def _disable_ipv6(ifname: str) -> None:
    """The tunnel carries IPv4 only: no link-local address, no router solicitations that
    the data path would have to drop and count (best effort: no IPv6 in the kernel is fine)."""
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError:
        pass


def interface_exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")
