"""What a fresh box needs for cgwd, and nobody checks: findings, and the settings cgwd owns.

Two kinds of settings:

* **What cgwd owns**, set on its own tunnel interfaces when it creates them
  (:func:`configure_interface`): reverse-path filtering loose (``rp_filter = 2``; the
  kernel uses the larger of ``conf.all`` and the interface's value, so 2 wins over a
  strict ``all = 1``, the default on RHEL and Amazon Linux, which drops AWS's return
  traffic arriving on the tunnel the route does not point to), and IPv6 as the tunnel's
  inner family needs it (off on an IPv4 tunnel; on an IPv6 tunnel on, without router
  advertisements, router solicitations or duplicate address detection).
* **What the box lacks**, which cgwd does not change behind the operator's back
  (:func:`check_system`): forwarding of the inner families, IPv6 switched off altogether,
  a strict reverse-path filter still in force on a tunnel interface, no ``/dev/net/tun``
  for the userspace data path. Each is a :class:`Finding` (name, what, fix) that the
  daemon puts into status, the log and metrics.

Sysctls are per network namespace: both functions act on the namespace of the process
(``root`` points elsewhere in tests).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

PROC_SYS = "/proc/sys"
RP_FILTER_LOOSE = 2


@dataclass(frozen=True)
class Finding:
    """Something the box lacks: ``name`` (a stable word for metrics), ``what`` it breaks,
    the ``fix`` (a command) in plain words."""

    name: str
    what: str
    fix: str

    def as_dict(self) -> dict:
        return asdict(self)


def _path(key: str, root: str) -> str:
    return os.path.join(root, *key.split("."))


def read_sysctl(key: str, root: str = PROC_SYS) -> str | None:
    """The value of ``key`` (dotted, e.g. ``net.ipv4.ip_forward``), None when absent."""
    try:
        with open(_path(key, root)) as f:
            return f.read().strip()
    except OSError:
        return None


def write_sysctl(key: str, value: str | int, root: str = PROC_SYS) -> None:
    """Set ``key`` (OSError when the kernel refuses or it does not exist)."""
    with open(_path(key, root), "w") as f:
        f.write(str(value))


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def effective_rp_filter(ifname: str, root: str = PROC_SYS) -> int | None:
    """The reverse-path filter mode the kernel applies on ``ifname``: the larger of the
    interface's and ``conf.all``'s (0 off, 1 strict, 2 loose)."""
    a = _int(read_sysctl("net.ipv4.conf.all.rp_filter", root))
    i = _int(read_sysctl(f"net.ipv4.conf.{ifname}.rp_filter", root))
    if a is None and i is None:
        return None
    return max(a or 0, i or 0)


# what cgwd sets on its own interfaces: (sysctl under net.ipv6.conf.<if>., value)
IPV6_TUNNEL_SETTINGS = (
    ("disable_ipv6", 0),
    ("accept_ra", 0),
    ("autoconf", 0),
    ("router_solicitations", 0),
    ("accept_dad", 0),
    ("dad_transmits", 0),
)


def configure_interface(ifname: str, *, inner_family: int = 4, root: str = PROC_SYS) -> list[Finding]:
    """Set what cgwd owns on its tunnel interface ``ifname`` (at creation, before it is up):
    loose reverse-path filtering, and IPv6 off (IPv4 tunnel) or on without autoconfiguration
    (IPv6 tunnel). Returns findings for what could not be set (nothing raises)."""
    out: list[Finding] = []
    try:
        write_sysctl(f"net.ipv4.conf.{ifname}.rp_filter", RP_FILTER_LOOSE, root)
    except OSError as exc:
        if effective_rp_filter(ifname, root) == 1:
            out.append(Finding(
                "rp_filter_strict",
                f"strict reverse-path filtering on {ifname} (could not set it loose: {exc.strerror}): "
                "AWS's return traffic on the tunnel the route does not use is dropped",
                f"sysctl -w net.ipv4.conf.{ifname}.rp_filter=2"))
    if inner_family == 6:
        if read_sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", root) is None:
            out.append(Finding("ipv6_unavailable", f"no IPv6 on {ifname}: the kernel has IPv6 switched off "
                               "(ipv6.disable=1) or not built in; an IPv6 VPN cannot carry traffic",
                               "boot without ipv6.disable=1"))
            return out
        for key, value in IPV6_TUNNEL_SETTINGS:
            try:
                write_sysctl(f"net.ipv6.conf.{ifname}.{key}", value, root)
            except OSError as exc:
                if key == "disable_ipv6":
                    out.append(Finding("ipv6_disabled", f"cannot enable IPv6 on {ifname}: {exc.strerror}",
                                       f"sysctl -w net.ipv6.conf.{ifname}.disable_ipv6=0"))
    else:
        try:
            write_sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", 1, root)
        except OSError:
            pass  # no IPv6 in this kernel: nothing to switch off
    return out


def check_system(*, inner_families=(4,), interfaces=(), datapath: str | None = None,
                 root: str = PROC_SYS, dev: str = "/dev") -> list[Finding]:
    """What the box lacks for tunnels carrying ``inner_families`` (4 and/or 6) over the
    tunnel interfaces ``interfaces`` with the ``datapath`` ("userspace" or "kernel")."""
    out: list[Finding] = []
    fams = set(inner_families)
    if 4 in fams and _int(read_sysctl("net.ipv4.ip_forward", root)) == 0:
        out.append(Finding(
            "ip_forward_off",
            "IPv4 forwarding is off: traffic between the LAN and the VPC is dropped by this box "
            "(only the gateway itself can reach the VPC)",
            "sysctl -w net.ipv4.ip_forward=1 (and put net.ipv4.ip_forward = 1 in /etc/sysctl.d/)"))
    if 6 in fams:
        if read_sysctl("net.ipv6.conf.all.forwarding", root) is None:
            out.append(Finding("ipv6_unavailable", "the kernel has no IPv6 (or ipv6.disable=1): an IPv6 VPN "
                               "cannot carry traffic", "boot without ipv6.disable=1"))
        else:
            if _int(read_sysctl("net.ipv6.conf.all.forwarding", root)) == 0:
                out.append(Finding(
                    "ipv6_forwarding_off",
                    "IPv6 forwarding is off: IPv6 traffic between the LAN and the VPC is dropped by this box",
                    "sysctl -w net.ipv6.conf.all.forwarding=1 (and in /etc/sysctl.d/)"))
            if _int(read_sysctl("net.ipv6.conf.all.disable_ipv6", root)) == 1:
                out.append(Finding("ipv6_disabled", "IPv6 is switched off on all interfaces "
                                   "(net.ipv6.conf.all.disable_ipv6 = 1)",
                                   "sysctl -w net.ipv6.conf.all.disable_ipv6=0"))
    for ifname in interfaces:
        if effective_rp_filter(ifname, root) == 1:
            out.append(Finding(
                "rp_filter_strict",
                f"strict reverse-path filtering on {ifname}: AWS's return traffic on the tunnel the "
                "route does not use is dropped (asymmetric routing over the two tunnels)",
                f"sysctl -w net.ipv4.conf.{ifname}.rp_filter=2 (cgwd sets it when it creates the "
                "interface: something set it back)"))
    if datapath == "userspace" and not os.path.exists(os.path.join(dev, "net", "tun")):
        out.append(Finding("tun_missing", "/dev/net/tun is missing: the userspace data path cannot create "
                           "its tunnel interfaces", "modprobe tun (or give the container /dev/net/tun)"))
    return out
