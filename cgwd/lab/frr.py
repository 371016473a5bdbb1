"""FRR per network namespace: zebra + bgpd (+ bfdd), the on-prem router of the lab.

Every daemon runs in the namespace as Debian's ``frr`` user (root is not in ``frrvty``, which
FRR requires of the user it runs as) with its own directory: the vty sockets (``--vty_socket``),
the zebra API socket (``-z``), bfdd's control socket (``--bfdctl``), pid files and logs; no TCP
vty (``-P 0``). One integrated configuration per daemon, rendered from :class:`FrrConfig`.
:meth:`Frr.vtysh` runs vtysh against that directory; :meth:`Frr.json` parses a ``... json``
command. zebra installs bgpd's routes in the namespace's kernel (protocol ``bgp``), with
``maximum-paths`` as one multipath route (ECMP). A neighbor's address family picks its
``address-family`` block (``ipv4`` or ``ipv6 unicast``), and ``networks`` go to theirs.

bfdd: ``neighbor X bfd`` on a BGP neighbor makes bgpd ask bfdd (through zebra) for a single-hop
session with bfdd's defaults (300 ms, multiplier 3, echo off); ``FrrNeighbor.bfd_profile``
names a profile of :attr:`FrrConfig.bfd_profiles` instead. When the session goes Down from Up
bgpd closes the BGP session (NOTIFICATION Cease / BFD Down, RFC 9384); an AdminDown session
(``shutdown`` in the ``bfd`` peer) leaves BGP alone.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field

from .netns import LabError, Netns, stop_process, wait_for

__all__ = ["Frr", "FrrConfig", "FrrNeighbor", "frr_available"]

FRR_LIB = "/usr/lib/frr"


def frr_available(*, bfd: bool = False) -> str | None:
    daemons = ("zebra", "bgpd") + (("bfdd",) if bfd else ())
    for d in daemons:
        if not os.path.exists(os.path.join(FRR_LIB, d)):
            return f"FRR's {d} is not installed (apt-get install frr)"
    if shutil.which("vtysh") is None:
        return "vtysh is not installed (apt-get install frr)"
    return None


@dataclass
class FrrNeighbor:
    address: str
    remote_as: int
    hold_time: int = 30
    keepalive: int = 10
    bfd: bool = False
    bfd_profile: str | None = None
    password: str | None = None


@dataclass
class FrrConfig:
    router_id: str
    asn: int
    networks: list[str] = field(default_factory=list)      # announced (no import check), the only exports
    neighbors: list[FrrNeighbor] = field(default_factory=list)
    maximum_paths: int = 1                                  # > 1: ECMP of equal eBGP paths
    bfd_profiles: dict[str, tuple[int, int, int]] = field(default_factory=dict)   # name: (mult, rx ms, tx ms)

    def bgpd(self, log: str) -> str:
        nb = []
        for n in self.neighbors:
            nb += [f" neighbor {n.address} remote-as {n.remote_as}",
                   f" neighbor {n.address} timers {n.keepalive} {n.hold_time}",
                   f" neighbor {n.address} timers connect 2",
                   f" neighbor {n.address} advertisement-interval 0"]
            if n.password:
                nb.append(f" neighbor {n.address} password {n.password}")
            if n.bfd:
                nb.append(f" neighbor {n.address} bfd" + (f" profile {n.bfd_profile}" if n.bfd_profile else ""))
        own, maps, afs = [], [], []
        for fam, v6 in (("ipv4", False), ("ipv6", True)):
            nets = [p for p in self.networks if (":" in p) == v6]
            nbs = [n for n in self.neighbors if (":" in n.address) == v6]
            if v6 and not nets and not nbs:
                continue
            name, kw = ("OWN6", "ipv6") if v6 else ("OWN", "ip")
            own += [f"{kw} prefix-list {name} seq {5 * (i + 1)} permit {p}" for i, p in enumerate(nets)]
            maps += [f"route-map {name} permit 10", f" match {kw} address prefix-list {name}", "!"]
            af = [f"  network {p}" for p in nets]
            if self.maximum_paths > 1:
                af.append(f"  maximum-paths {self.maximum_paths}")
            for n in nbs:
                af += [f"  neighbor {n.address} activate", f"  neighbor {n.address} route-map ALL in",
                       f"  neighbor {n.address} route-map {name} out"]
            afs += [f" address-family {fam} unicast", *af, " exit-address-family"]
        return "\n".join([
            "frr defaults traditional", "hostname router", f"log file {log} informational", *own,
            "route-map ALL permit 10", "!", *maps,
            f"router bgp {self.asn}", f" bgp router-id {self.router_id}",
            " no bgp default ipv4-unicast", " no bgp network import-check", *nb, *afs, "!", ""])

    def bfdd(self, log: str) -> str:
        lines = ["frr defaults traditional", "hostname router", f"log file {log} informational", "bfd"]
        for name, (mult, rx, tx) in self.bfd_profiles.items():
            lines += [f" profile {name}", f"  detect-multiplier {mult}", f"  receive-interval {rx}",
                      f"  transmit-interval {tx}", " !"]
        return "\n".join(lines + ["!", ""])


class Frr:
    """zebra, bgpd and (with ``bfd``) bfdd in ``ns``, everything under ``workdir``."""

    def __init__(self, ns: Netns, workdir: str, config: FrrConfig, *, bfd: bool = False):
        self.ns = ns
        self.dir = workdir
        self.config = config
        self.bfd = bfd
        self.procs: dict[str, object] = {}
        os.makedirs(workdir, exist_ok=True)
        os.chmod(workdir, 0o777)
        parent = os.path.dirname(os.path.abspath(workdir))
        if os.stat(parent).st_mode & 0o001 == 0:
            os.chmod(parent, os.stat(parent).st_mode | 0o711)     # FRR's user passes through (no listing)
        self.zsock = os.path.join(workdir, "zserv.api")

    @property
    def proc(self):
        """bgpd's process (what a lab's process list tracks first)."""
        return self.procs.get("bgpd")

    def _start(self, daemon: str, conf: str, extra: list[str]) -> None:
        cf = os.path.join(self.dir, f"{daemon}.conf")
        with open(cf, "w") as f:
            f.write(conf)
        args = [os.path.join(FRR_LIB, daemon), "-f", cf, "--vty_socket", self.dir, "-P", "0",
                "-i", os.path.join(self.dir, f"{daemon}.pid"), "-u", "frr", "-g", "frr", *extra]
        p = self.ns.popen(args, log_path=os.path.join(self.dir, f"{daemon}.out"))
        self.procs[daemon] = p
        wait_for(lambda: os.path.exists(os.path.join(self.dir, f"{daemon}.vty")) or p.poll() is not None, 15,
                 what=f"FRR {daemon}'s vty socket in {self.ns.name}")
        if p.poll() is not None:
            raise LabError(f"FRR {daemon} in {self.ns.name} exited: "
                           + open(os.path.join(self.dir, f"{daemon}.out")).read()[-2000:])

    def start(self) -> None:
        zlog = os.path.join(self.dir, "zebra.log")
        self._start("zebra", f"hostname router\nlog file {zlog} informational\n!\n", ["-z", self.zsock])
        wait_for(lambda: os.path.exists(self.zsock), 15, what="zebra's API socket")
        if self.bfd:
            self._start("bfdd", self.config.bfdd(os.path.join(self.dir, "bfdd.log")),
                        ["-z", self.zsock, "--bfdctl", os.path.join(self.dir, "bfdd.sock")])
        self._start("bgpd", self.config.bgpd(os.path.join(self.dir, "bgpd.log")), ["-z", self.zsock])

    def vtysh(self, *commands: str, daemon: str | None = None) -> str:
        args = ["vtysh", "--vty_socket", self.dir] + (["-d", daemon] if daemon else [])
        for c in commands:
            args += ["-c", c]
        return self.ns.run(args, check=False, timeout=15).stdout

    def configure(self, *lines: str, daemon: str | None = None) -> str:
        """``configure terminal`` then ``lines`` (one vtysh call)."""
        return self.vtysh("configure terminal", *lines, daemon=daemon)

    def json(self, command: str, daemon: str | None = None):
        out = self.vtysh(command, daemon=daemon)
        try:
            return json.loads(out or "null")
        except ValueError:
            return None

    # ------------------------------------------------------------------ what tests read
    def neighbor(self, address: str) -> dict:
        """``show bgp neighbors X json``'s entry for X ({} when unknown)."""
        return (self.json(f"show bgp neighbors {address} json", "bgpd") or {}).get(address) or {}

    def established(self, address: str) -> bool:
        return self.neighbor(address).get("bgpState") == "Established"

    def paths(self, prefix: str) -> list[dict]:
        fam = "ipv6" if ":" in prefix else "ipv4"
        return (self.json(f"show bgp {fam} unicast {prefix} json", "bgpd") or {}).get("paths") or []

    def best_path(self, prefix: str) -> dict | None:
        for p in self.paths(prefix):
            if (p.get("bestpath") or {}).get("overall"):
                return p
        return None

    def bfd_peers(self) -> list[dict]:
        return self.json("show bfd peers json", "bfdd") or []

    def bfd_peer(self, address: str) -> dict:
        return next((p for p in self.bfd_peers() if p.get("peer") == address), {})

    def stop(self) -> None:
        for name in ("bgpd", "bfdd", "zebra"):
            stop_process(self.procs.pop(name, None))
