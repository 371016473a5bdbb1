"""The gateway pair over LAN BGP (issue 17): :class:`cgwd.lab.pair.PairLab` with the on-prem
router in the ``lan`` namespace (BIRD, eBGP with both boxes) and the on-prem host on a subnet
of its own behind it, so that on-prem traffic follows the router's BGP choice and the VPC's
replies follow what the boxes learned from it::

    onprem 10.201.1.10 ── h0 10.201.1.1 ┐
                                        lan: BIRD or FRR AS 65010 at 10.200.0.254 (br0), kernel routes
       ├── cgw  lan0 10.200.0.2 ── [[lan_neighbor]] core ── 2 tunnels (VPN of box 1)
       └── cgw2 lan0 10.200.0.3 ── [[lan_neighbor]] core ── 2 tunnels (VPN of box 2)

The router is BIRD or FRR (``PairLanLab(router="frr")``: zebra + bgpd + bfdd, ``neighbor X
bfd`` with bfdd's defaults). It announces the on-prem subnet to both boxes and learns the VPC
prefix from both; ``merge_paths`` (BIRD's ``merge paths``, FRR's ``maximum-paths 2``) gives its
kernel one multipath route when the two are equally good (the active/active variant). What the
tests read of the router goes through :meth:`PairLanLab.router_as_paths`,
:meth:`PairLanLab.router_last_error` and :meth:`PairLanLab.router_session`, whichever it is. :meth:`PairLanLab.write_config` writes a box's cgwd.toml: the
imported VPN connection with its ``prepend``/``med`` towards AWS and the ``[[lan_neighbor]]``
with its own towards the LAN. No keepalived: BGP decides.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass

from .bird import BgpNeighbor, Bird, BirdConfig
from .frr import Frr, FrrConfig, FrrNeighbor
from .netns import stop_process, veth, wait_for
from .pair import Box, PairLab, PairSpec

__all__ = ["ACTIVE", "ROUTERS", "STANDBY", "BoxPolicy", "PairLanLab"]

ROUTERS = ("bird", "frr")

ROUTER_AS = 65010
ONPREM_NET = "10.201.1.0/24"
ONPREM_HOST = "10.201.1.10"
IMPORT = "10.201.0.0/16 le 24"


@dataclass(frozen=True)
class BoxPolicy:
    """What one box's announcements carry: towards AWS (its [[vpn]]) and the LAN (its
    [[lan_neighbor]])."""

    vpn_prepend: int = 0
    vpn_med: int | None = None
    lan_prepend: int = 0
    lan_med: int | None = None
    lan_hold: int = 9
    extra: str = ""      # more [[lan_neighbor]] lines (e.g. "bfd = true" once that key exists)


ACTIVE = BoxPolicy()
STANDBY = BoxPolicy(vpn_prepend=2, lan_prepend=2)


class PairLanLab(PairLab):
    def __init__(self, pair: PairSpec | None = None, *, merge_paths: bool = True, router_hold: int = 9,
                 router: str = "bird"):
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, not {router!r}")
        super().__init__(pair)
        self.merge_paths = merge_paths
        self.router_hold = router_hold
        self.router_kind = router
        self.router: Bird | Frr | None = None
        self._route_watch = None
        self._route_log = ""

    @property
    def router_address(self) -> str:
        return self.pair.api_address

    @property
    def onprem_host(self) -> str:
        return ONPREM_HOST

    def _attach_onprem(self, net: ipaddress.IPv4Network) -> None:
        """The on-prem host behind the router, not on the boxes' LAN."""
        gw = str(ipaddress.IPv4Network(ONPREM_NET)[1])
        plen = ipaddress.IPv4Network(ONPREM_NET).prefixlen
        veth(self.onprem, "eth0", f"{ONPREM_HOST}/{plen}", self.lan, "h0", f"{gw}/{plen}")
        self.onprem.ip(f"route add default via {gw}")
        for k, v in (("net.ipv4.ip_forward", "1"), ("net.ipv4.conf.all.rp_filter", "0"),
                     ("net.ipv4.conf.default.rp_filter", "0")):
            self.lan.sysctl(k, v)

    # ----------------------------------------------------------------- the on-prem router
    def start_router(self, *, bfd: bool = False) -> Bird | Frr:
        """The on-prem router (BIRD or FRR); ``bfd``: BFD on both sessions (the router's side of it)."""
        if self.router_kind == "frr":
            return self._start_frr(bfd)
        s = self.spec
        neighbors = [BgpNeighbor(f"box{b.index}", self.router_address, ROUTER_AS, b.lan, s.cgw_asn,
                                 export="where source = RTS_STATIC", import_="all", hold_time=self.router_hold,
                                 keepalive=max(1, self.router_hold // 3), extra="bfd on;" if bfd else "")
                     for b in self.boxes]
        self.router = Bird(self.lan, os.path.join(self.workdir, "router"), BirdConfig(
            router_id=self.router_address, static_routes=[(ONPREM_NET, 'via "h0"')], neighbors=neighbors,
            merge_paths=self.merge_paths, extra="protocol bfd {\n}\n" if bfd else ""))
        self.router.start()
        self.procs.append(self.router.proc)
        return self.router

    def _start_frr(self, bfd: bool) -> Frr:
        neighbors = [FrrNeighbor(b.lan, self.spec.cgw_asn, hold_time=self.router_hold,
                                 keepalive=max(1, self.router_hold // 3), bfd=bfd) for b in self.boxes]
        self.router = Frr(self.lan, os.path.join(self.workdir, "router"), FrrConfig(
            router_id=self.router_address, asn=ROUTER_AS, networks=[ONPREM_NET], neighbors=neighbors,
            maximum_paths=2 if self.merge_paths else 1), bfd=bfd)
        self.router.start()
        self.procs.extend(self.router.procs.values())
        return self.router

    def _box(self, index: int) -> Box:
        return self.boxes[index - 1]

    def router_as_paths(self, prefix: str | None = None) -> list[str]:
        """The AS paths of the router's paths to ``prefix`` (the VPC), its best first: ["65000", ...]."""
        prefix = prefix or self.spec.vpc_cidr
        if isinstance(self.router, Frr):
            paths = sorted(self.router.paths(prefix), key=lambda p: not (p.get("bestpath") or {}).get("overall"))
            return [(p.get("aspath") or {}).get("string", "") for p in paths]
        detail = self.router.birdc("show", "route", prefix, "all")
        return re.findall(r"BGP\.as_path:\s*(.*?)\s*$", detail, re.M)

    def router_last_error(self, index: int) -> str:
        """Why the router last dropped box ``index`` (BIRD's "Last error", FRR's last reset)."""
        if isinstance(self.router, Frr):
            n = self.router.neighbor(self._box(index).lan)
            why = n.get("lastNotificationReason") or n.get("lastResetDueTo") or "?"
            bfd = (n.get("peerBfdInfo") or {}).get("status")
            return f"{why} (reset: {n.get('lastResetDueTo', '?')}{', BFD ' + bfd if bfd else ''})"
        m = re.search(r"Last error:\s*(.*)", self.router.birdc("show", "protocols", "all", f"box{index}"))
        return m.group(1).strip() if m else "?"

    def router_session(self, index: int) -> str:
        """What changes whenever the router's session with box ``index`` goes down or comes up."""
        if isinstance(self.router, Frr):
            n = self.router.neighbor(self._box(index).lan)
            return (f"{n.get('bgpState')} established {n.get('connectionsEstablished')} "
                    f"dropped {n.get('connectionsDropped')}")
        return " ".join(self.router.birdc("show", "protocols", f"box{index}").split())

    def watch_router_routes(self) -> None:
        """Record the router's kernel route changes with their times (``ip -ts monitor route``)."""
        self._route_log = os.path.join(self.workdir, f"router-routes-{len(self.procs)}.log")
        p = self.lan.popen(["ip", "-ts", "monitor", "route"], log_path=self._route_log)
        self.procs.append(p)
        self._route_watch = p
        wait_for(lambda: os.path.exists(self._route_log), 5, what="ip monitor's log")

    def router_route_changes(self, prefix: str | None = None) -> list[float]:
        """Wall times (time.time()) of the recorded changes of the router's route to ``prefix``."""
        prefix = prefix or self.spec.vpc_cidr
        out = []
        with open(self._route_log, errors="replace") as f:
            for line in f:
                m = re.match(r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)\]\s*(.*)", line)
                if m and prefix in m.group(2).split("nhid")[0]:
                    out.append(datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp())
        return out

    def router_route(self, prefix: str | None = None) -> str:
        """The router's kernel route to the VPC (its BGP choice: via 10.200.0.2 and/or .3)."""
        return self.lan.ip(f"route show {prefix or self.spec.vpc_cidr}", check=False).stdout

    def router_next_hops(self, prefix: str | None = None) -> set[str]:
        """The LAN addresses of the boxes the router sends VPC traffic to now."""
        out = self.router_route(prefix)
        return {b.lan for b in self.boxes if f"via {b.lan} " in out}

    # ----------------------------------------------------------------- the boxes' config
    def write_config(self, b: Box, policy: BoxPolicy) -> str:
        """The box's cgwd.toml: the imported VPN connection, its prepend/MED towards AWS, and
        the router as its [[lan_neighbor]] with its prepend/MED towards the LAN."""
        path = os.path.join(b.workdir, "cgwd.toml")
        if not os.path.exists(path + ".imported"):
            self.import_config(b)
            os.replace(path, path + ".imported")
        with open(path + ".imported") as f:
            text = f.read()
        vpn = "".join(f"{k} = {v}\n" for k, v in (("prepend", policy.vpn_prepend), ("med", policy.vpn_med))
                      if v is not None)
        head, sep, rest = text.partition("[[vpn]]\n")
        assert sep, "the imported config has no [[vpn]] table"
        lan = [f"address = \"{self.router_address}\"", f"local_address = \"{b.lan}\"",
               f"remote_asn = {ROUTER_AS}", f"hold_time = {policy.lan_hold}", f"import = [\"{IMPORT}\"]",
               f"prepend = {policy.lan_prepend}"]
        if policy.lan_med is not None:
            lan.append(f"med = {policy.lan_med}")
        if policy.extra:
            lan.append(policy.extra)
        body = head + sep + vpn + rest + "\n[[lan_neighbor]]\nname = \"core\"\n" + "\n".join(lan) + "\n"
        tmp = path + ".tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(body)       # it holds the pre-shared keys
        os.replace(tmp, path)
        return path

    def down(self) -> None:
        stop_process(self._route_watch)
        if self.router is not None:
            self.router.stop()
        super().down()
