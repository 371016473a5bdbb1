"""The gateway pair over LAN BGP (issue 17): :class:`cgwd.lab.pair.PairLab` with the on-prem
router in the ``lan`` namespace (BIRD, eBGP with both boxes) and the on-prem host on a subnet
of its own behind it, so that on-prem traffic follows the router's BGP choice and the VPC's
replies follow what the boxes learned from it::

    onprem 10.201.1.10 ── h0 10.201.1.1 ┐
                                        lan: BIRD AS 65010 at 10.200.0.254 (br0), kernel routes
       ├── cgw  lan0 10.200.0.2 ── [[lan_neighbor]] core ── 2 tunnels (VPN of box 1)
       └── cgw2 lan0 10.200.0.3 ── [[lan_neighbor]] core ── 2 tunnels (VPN of box 2)

The router announces the on-prem subnet to both boxes and learns the VPC prefix from both;
``merge_paths`` gives its kernel one multipath route when the two are equally good (the
active/active variant). :meth:`PairLanLab.write_config` writes a box's cgwd.toml: the
imported VPN connection with its ``prepend``/``med`` towards AWS and the ``[[lan_neighbor]]``
with its own towards the LAN. No keepalived: BGP decides.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from .bird import BgpNeighbor, Bird, BirdConfig
from .netns import veth
from .pair import Box, PairLab, PairSpec

__all__ = ["ACTIVE", "STANDBY", "BoxPolicy", "PairLanLab"]

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
    def __init__(self, pair: PairSpec | None = None, *, merge_paths: bool = True, router_hold: int = 9):
        super().__init__(pair)
        self.merge_paths = merge_paths
        self.router_hold = router_hold
        self.router: Bird | None = None

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
    def start_router(self, *, bfd: bool = False) -> Bird:
        """BIRD as the on-prem router; ``bfd``: BFD on both sessions (BIRD's side of it)."""
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
        if self.router is not None:
            self.router.stop()
        super().down()
