"""The lab: network namespaces where strongSwan + BIRD play two AWS endpoints.

::

    onprem host ── cgw ── [nat] ── wan ──┬── aws1 (charon + BIRD) ──┐
    10.200.0.10    (cgwd or the          ├── aws2 (charon + BIRD) ──┴── vpc (BIRD, host 10.100.0.10)
                    reference stack)     └── ...

Every AWS endpoint runs in its own namespace with its own charon (libipsec, ``encap = yes``)
and BIRD (AS 64512) announcing the VPC CIDR over the tunnel's inside /30 and passing the
on-prem prefixes it learns to a BIRD in the ``vpc`` namespace, which routes return traffic
through whichever tunnel BGP prefers (as a VGW does). The customer namespace ``cgw`` runs
cgwd, or the reference stack (strongSwan + BIRD), or nothing (a test drives it).

``LabSpec(static=True)``: a static-routing VPN connection: the AWS endpoints run strongSwan
only (no BIRD, no BGP over the tunnels); each routes the on-prem prefix into its tunnel and
the VPC sends to on-prem through one endpoint whose tunnel is up (AWS's choice:
``aws_return_tunnel``, else the other), as AWS routes the prefixes configured on its side.
``LabSpec(static_vpn=N)``: two VPN connections on one box, the last N endpoints a static one
(strongSwan only) to a second VPC prefix (``static_vpc_cidr``, host ``static_vpc_host``; the
VPC answers from it through the static endpoints: policy routing, table 101), the others
BGP as usual (``bgp_tunnels``/``static_tunnels``, ``aws_xml(static=...)`` renders each).
``gateway="tgw"`` writes a Transit Gateway VPN connection; ``vpc_extra_prefixes=N`` makes
every AWS endpoint's BIRD announce N more prefixes (10.128.0.0/24 onwards) besides the VPC.

IPv6 (a Transit Gateway's, so ``gateway`` becomes "tgw"): ``ipv6=True`` makes an IPv6 VPN
connection (inside /126s from fd00::/8, ``::/0`` selectors, BGP over the IPv6 inside
addresses with one ``ipv6`` channel, the VPC's 2001:db8:100::/56 and the on-prem
2001:db8:200::/64), over IPv4 outside addresses as most deployments run it;
``outer_ipv6=True`` gives every endpoint and the customer gateway IPv6 outside addresses
(2001:db8:51:N::2, 2001:db8:203::2) for IKE and ESP, with either inner family;
``dual_stack=True`` (four tunnels) makes two VPN connections, an IPv4 one (tunnels 1-2) and
an IPv6 one (tunnels 3-4), as a dual-stack site runs them (one inner family per
connection). The hosts keep their IPv4 addresses and get the IPv6 ones besides.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import re
import secrets
import shutil
import string
import tempfile
import threading
import time
from dataclasses import dataclass, field

from . import awsxml
from .bird import BgpNeighbor, Bird, BirdConfig, bird_available
from .netns import LabError, Netns, list_netns, run, stop_process, veth, wait_for
from .strongswan import Charon, Child, Connection, charon_available

WORKDIR_MARK = "cgwd-lab-"
STATIC_VPC_TABLE = 101  # static_vpn: the VPC's table for traffic from the second VPC prefix


def random_psk(n: int = 32) -> str:
    """A PSK as AWS makes them: letters, digits, '.', '_', not starting with 0."""
    alphabet = string.ascii_letters + string.digits + "._"
    first = secrets.choice(string.ascii_letters)
    return first + "".join(secrets.choice(alphabet) for _ in range(n - 1))


@dataclass
class AwsTunnelSpec:
    """How one AWS endpoint is configured (strongSwan + BIRD)."""

    ike_proposals: str = "aes128-sha1-modp1024"
    esp_proposals: str = "aes128-sha1-modp1024"
    ike_lifetime: int = 28800
    esp_rekey_time: str = "3600s"
    esp_life_time: str | None = None
    dpd_delay: str = "10s"
    dpd_timeout: str = "30s"
    dpd_action: str = "clear"
    start_action: str = "none"  # AWS never starts IKEv1; "start"/"trap" for responder tests
    as_path_prepend: int = 0  # applied by this endpoint's BIRD to what it announces
    med: int | None = None
    hold_time: int = 30
    keepalive: int = 10
    psk: str | None = None
    inside_cidr: str | None = None
    ike_version: int | None = None  # None: the LabSpec's
    cgw_public: str | None = None  # the customer gateway this endpoint expects (None: the LabSpec's)


@dataclass
class LabSpec:
    prefix: str = "cgwlab"
    tunnels: int = 2
    nat: bool = False
    aws: list[AwsTunnelSpec] = field(default_factory=list)
    bgp_daemon: str = "bird"  # which BGP daemon plays AWS (bird only for now)
    vpc_cidr: str = "10.100.0.0/16"
    vpc_host: str = "10.100.0.10"
    onprem_cidr: str = "10.200.0.0/24"
    onprem_host: str = "10.200.0.10"
    cgw_asn: int = 65000
    aws_asn: int = 64512
    cgw_public: str = "203.0.113.2"
    cgw_private: str = "192.168.1.10"  # the customer's outside address behind the NAT router
    inside_cidrs: tuple[str, ...] = ("169.254.10.0/30", "169.254.20.0/30", "169.254.30.0/30",
                                     "169.254.40.0/30")
    vpn_id: str = "vpn-0a1b2c3d4e5f60718"
    charon_log_level: int = 1
    workdir: str | None = None
    # Where the kernel has ESP (the QEMU guest): the AWS charons use the kernel's XFRM
    # (kernel-netlink) with an xfrm interface ``ipsec0`` (if_id 100 + n) instead of libipsec,
    # and ``aws_encap = False`` lets them speak plain ESP when there is no NAT.
    aws_kernel_ipsec: bool = False
    aws_encap: bool = True
    ike_version: int = 1  # the AWS endpoints' IKE version (1, or 2: strongSwan IKEv2)
    static: bool = False  # static routing: no BIRD on the AWS side, no BGP over the tunnels
    aws_return_tunnel: int = 2  # static: the tunnel AWS sends to on-prem on while it is up
    gateway: str = "vgw"  # "vgw" or "tgw" (the XML names a Transit Gateway)
    # one static and one BGP VPN connection: the last static_vpn endpoints form the static one
    static_vpn: int = 0
    static_vpc_cidr: str = "10.101.0.0/16"
    static_vpc_host: str = "10.101.0.10"
    static_vpn_id: str = "vpn-0b1c2d3e4f5a60719"
    vpc_extra_prefixes: int = 0  # more prefixes every AWS endpoint's BIRD announces
    # IPv6 (see the module doc): AWS offers it on Transit Gateways only
    ipv6: bool = False  # the VPN connection's tunnels carry IPv6 (TunnelInsideIpVersion ipv6)
    outer_ipv6: bool = False  # IPv6 outside addresses (OutsideIpAddressType Ipv6)
    dual_stack: bool = False  # an IPv4 (tunnels 1-2) and an IPv6 (tunnels 3-4) VPN connection
    vpc_cidr6: str = "2001:db8:100::/56"
    vpc_host6: str = "2001:db8:100::10"
    onprem_cidr6: str = "2001:db8:200::/64"
    onprem_host6: str = "2001:db8:200::10"
    cgw_public6: str = "2001:db8:203::2"
    inside_cidrs6: tuple[str, ...] = ("fd00:0:0:10::/126", "fd00:0:0:20::/126", "fd00:0:0:30::/126",
                                      "fd00:0:0:40::/126")
    vpn_id6: str = "vpn-0f1e2d3c4b5a69788"  # the IPv6 VPN connection of a dual-stack lab

    def __post_init__(self) -> None:
        if not 1 <= self.tunnels <= 4:
            raise ValueError("the lab supports 1 to 4 tunnels")
        if len(self.prefix) > 10 or not re.fullmatch(r"[a-z][a-z0-9]*", self.prefix):
            raise ValueError("lab prefix: 1-10 lowercase letters/digits, starting with a letter")
        if self.gateway not in ("vgw", "tgw"):
            raise ValueError("gateway: vgw or tgw")
        if not 0 <= self.vpc_extra_prefixes <= 60000:
            raise ValueError("vpc_extra_prefixes: 0..60000")
        if self.static_vpn and (self.static or self.dual_stack or not 0 < self.static_vpn < self.tunnels):
            raise ValueError("static_vpn: 1 .. tunnels - 1 endpoints (without static or dual_stack: the others run BGP)")
        if self.dual_stack and self.tunnels != 4:
            raise ValueError("dual_stack (--dual-stack): four tunnels (two VPN connections of two tunnels each)")
        if self.dual_stack and self.ipv6:
            raise ValueError("dual_stack (--dual-stack) already has an IPv6 VPN connection (tunnels 3-4): drop ipv6 (--ipv6)")
        if self.outer_ipv6 and self.nat:
            raise ValueError("outer_ipv6 (--outer-ipv6) with nat (--nat): AWS's IPv6 outside addresses are not NATed (no NAT66)")
        if self.ipv6 or self.outer_ipv6 or self.dual_stack:
            self.gateway = "tgw"  # AWS has IPv6 VPN connections on Transit Gateways only
        while len(self.aws) < self.tunnels:
            self.aws.append(AwsTunnelSpec())
        if self.ike_version not in (1, 2) or any(a.ike_version not in (None, 1, 2) for a in self.aws):
            raise ValueError("ike_version must be 1 or 2")
        for a in self.aws:
            if a.ike_version is None:
                a.ike_version = self.ike_version


@dataclass
class LabTunnel:
    index: int  # 1-based
    ns: Netns
    aws_outside: str
    wan_side: str
    inside: ipaddress.IPv4Network | ipaddress.IPv6Network
    psk: str
    spec: AwsTunnelSpec
    charon: Charon | None = None
    bird: Bird | None = None
    outer_ipv6: bool = False

    @property
    def ipv6(self) -> bool:
        """This tunnel carries IPv6 (an IPv6 VPN connection's)."""
        return self.inside.version == 6

    @property
    def aws_outside6(self) -> str:
        return f"2001:db8:51:{self.index}::2"

    @property
    def wan_side6(self) -> str:
        return f"2001:db8:51:{self.index}::1"

    @property
    def aws_outer(self) -> str:
        """The outside address IKE and ESP use at this endpoint."""
        return self.aws_outside6 if self.outer_ipv6 else self.aws_outside

    @property
    def transit_aws6(self) -> str:
        return f"2001:db8:64:{self.index}::1"

    @property
    def transit_vpc6(self) -> str:
        return f"2001:db8:64:{self.index}::2"

    @property
    def aws_inside(self) -> str:
        return str(self.inside[1])

    @property
    def cgw_inside(self) -> str:
        return str(self.inside[2])

    @property
    def transit_aws(self) -> str:
        return f"100.64.{self.index}.1"

    @property
    def transit_vpc(self) -> str:
        return f"100.64.{self.index}.2"


class Lab:
    def __init__(self, spec: LabSpec | None = None):
        self.spec = spec or LabSpec()
        s = self.spec
        self.workdir = s.workdir or tempfile.mkdtemp(prefix=f"{WORKDIR_MARK}{s.prefix}-")
        os.makedirs(self.workdir, exist_ok=True)
        self.onprem = Netns(f"{s.prefix}-onprem")
        self.cgw = Netns(f"{s.prefix}-cgw")
        self.nat = Netns(f"{s.prefix}-nat") if s.nat else None
        self.wan = Netns(f"{s.prefix}-wan")
        self.vpc = Netns(f"{s.prefix}-vpc")
        self.tunnels: list[LabTunnel] = []
        for i in range(1, s.tunnels + 1):
            a = s.aws[i - 1]
            v6 = s.ipv6 or (s.dual_stack and i > 2)
            self.tunnels.append(LabTunnel(
                index=i, ns=Netns(f"{s.prefix}-aws{i}"),
                aws_outside=f"198.51.100.{4 * (i - 1) + 2}", wan_side=f"198.51.100.{4 * (i - 1) + 1}",
                inside=ipaddress.ip_network(a.inside_cidr or (s.inside_cidrs6 if v6 else s.inside_cidrs)[i - 1]),
                psk=a.psk or random_psk(), spec=a, outer_ipv6=s.outer_ipv6))
        self.vpc_bird: Bird | None = None
        self.ref_charon: Charon | None = None
        self.ref_bird: Bird | None = None
        self._ref_kernel = False
        self.procs: list = []
        self._follow_stop = threading.Event()
        self._follower: threading.Thread | None = None
        self.aws_return_via: str | None = None  # static: the endpoint the VPC sends on-prem traffic to

    # ----------------------------------------------------------------- addresses
    @property
    def namespaces(self) -> list[Netns]:
        ns = [self.onprem, self.cgw, self.wan, self.vpc] + [t.ns for t in self.tunnels]
        return ns + ([self.nat] if self.nat else [])

    @property
    def cgw_outside(self) -> str:
        """The address cgwd binds to: private when behind the NAT router."""
        if self.spec.outer_ipv6:
            return self.spec.cgw_public6
        return self.spec.cgw_private if self.spec.nat else self.spec.cgw_public

    @property
    def cgw_public_outer(self) -> str:
        """The customer gateway's outside address as AWS knows it (its IKE identity)."""
        return self.spec.cgw_public6 if self.spec.outer_ipv6 else self.spec.cgw_public

    @property
    def has_ipv6(self) -> bool:
        """Some tunnel carries IPv6: the hosts get their IPv6 addresses."""
        return any(t.ipv6 for t in self.tunnels)

    def vpn_groups(self) -> list[list[LabTunnel]]:
        """The VPN connections' tunnels: one group, or (dual_stack) the IPv4 and the IPv6 one."""
        if self.spec.dual_stack:
            return [self.tunnels[:2], self.tunnels[2:]]
        if self.spec.static_vpn:
            return [self.bgp_tunnels, self.static_tunnels]
        return [self.tunnels]

    def vpc_prefix(self, tunnel: LabTunnel | None = None) -> str:
        """The VPC prefix a tunnel (default: the first VPN connection's) carries."""
        t = tunnel or self.tunnels[0]
        return self.spec.vpc_cidr6 if t.ipv6 else self.spec.vpc_cidr

    # ----------------------------------------------------------------- build
    def up(self) -> "Lab":
        missing = charon_available() or (None if self.spec.static else bird_available())
        if missing:
            raise LabError(missing)
        try:
            self._build_network()
            self._start_aws()
        except BaseException:
            self.down()
            raise
        self._save_state()
        return self

    def _build_network(self) -> None:
        s = self.spec
        stale = [n for n in list_netns() if n.startswith(s.prefix + "-")]
        if stale:
            raise LabError(f"namespaces from an earlier lab exist: {' '.join(stale)} "
                           f"(remove them with: cgwctl lab down --prefix {s.prefix})")
        for ns in self.namespaces:
            ns.create()
        for ns in (self.cgw, self.wan, self.vpc, *(t.ns for t in self.tunnels)) + ((self.nat,) if self.nat else ()):
            ns.sysctl("net.ipv4.ip_forward", "1")
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")
            if self.has_ipv6 or s.outer_ipv6:
                ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        onprem_net = ipaddress.IPv4Network(s.onprem_cidr)
        gw = str(onprem_net[1])
        veth(self.onprem, "eth0", f"{s.onprem_host}/{onprem_net.prefixlen}", self.cgw, "lan0",
             f"{gw}/{onprem_net.prefixlen}")
        self.onprem.ip(f"route add default via {gw}")
        if self.nat:
            veth(self.cgw, "wan0", f"{s.cgw_private}/24", self.nat, "lan0", "192.168.1.1/24")
            self.cgw.ip("route add default via 192.168.1.1")
            veth(self.nat, "wan0", f"{s.cgw_public}/30", self.wan, "cgw0", "203.0.113.1/30")
            self.nat.ip("route add default via 203.0.113.1")
            self.nat.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE"])
        else:
            veth(self.cgw, "wan0", f"{s.cgw_public}/30", self.wan, "cgw0", "203.0.113.1/30")
            self.cgw.ip("route add default via 203.0.113.1")
        self.vpc.ip(f"addr add {s.vpc_host}/32 dev lo")
        if s.static_vpn:  # the second VPC prefix answers through the static VPN's endpoints
            self.vpc.ip(f"addr add {s.static_vpc_host}/32 dev lo")
            self.vpc.ip(f"rule add from {s.static_vpc_cidr} lookup {STATIC_VPC_TABLE} pref 100")
            self.vpc.ip(f"route add unreachable default table {STATIC_VPC_TABLE}")  # not via the BGP VPN
        for t in self.tunnels:
            veth(self.wan, f"aws{t.index}", f"{t.wan_side}/30", t.ns, "wan0", f"{t.aws_outside}/30")
            t.ns.ip(f"route add default via {t.wan_side}")
            veth(t.ns, "vpc0", f"{t.transit_aws}/30", self.vpc, f"aws{t.index}", f"{t.transit_vpc}/30")
            t.ns.ip(f"route add {s.vpc_cidr} via {t.transit_vpc}")
            if s.static_vpn and self.is_static(t):
                t.ns.ip(f"route add {s.static_vpc_cidr} via {t.transit_vpc}")
        self._build_ipv6()

    def _build_ipv6(self) -> None:
        """The IPv6 addresses and routes (no DAD: the lab's addresses are unique)."""
        s = self.spec
        if s.outer_ipv6:
            self.cgw.ip(f"-6 addr add {s.cgw_public6}/64 dev wan0 nodad")
            self.wan.ip("-6 addr add 2001:db8:203::1/64 dev cgw0 nodad")
            self.cgw.ip("-6 route add default via 2001:db8:203::1")
            for t in self.tunnels:
                self.wan.ip(f"-6 addr add {t.wan_side6}/64 dev aws{t.index} nodad")
                t.ns.ip(f"-6 addr add {t.aws_outside6}/64 dev wan0 nodad")
                t.ns.ip(f"-6 route add default via {t.wan_side6}")
        if not self.has_ipv6:
            return
        gw6 = str(ipaddress.IPv6Network(s.onprem_cidr6)[1])
        plen = ipaddress.IPv6Network(s.onprem_cidr6).prefixlen
        self.onprem.ip(f"-6 addr add {s.onprem_host6}/{plen} dev eth0 nodad")
        self.cgw.ip(f"-6 addr add {gw6}/{plen} dev lan0 nodad")
        self.onprem.ip(f"-6 route add default via {gw6}")
        self.vpc.ip(f"-6 addr add {s.vpc_host6}/128 dev lo")
        for t in self.tunnels:
            if not t.ipv6:
                continue
            t.ns.ip(f"-6 addr add {t.transit_aws6}/64 dev vpc0 nodad")
            self.vpc.ip(f"-6 addr add {t.transit_vpc6}/64 dev aws{t.index} nodad")
            t.ns.ip(f"-6 route add {s.vpc_cidr6} via {t.transit_vpc6}")

    def _start_aws(self) -> None:
        s = self.spec
        vpc_neighbors = []
        for t in self.tunnels:
            a = t.spec
            d = os.path.join(self.workdir, f"aws{t.index}")
            if_id = None
            if s.aws_kernel_ipsec:
                if_id = 100 + t.index
                t.ns.ip(f"link add ipsec0 type xfrm if_id {if_id}")
            t.charon = Charon(t.ns, d, log_level=s.charon_log_level, kernel_ipsec=s.aws_kernel_ipsec)
            any_ts = "::/0" if t.ipv6 else "0.0.0.0/0"
            t.charon.connections = [Connection(
                name="aws", local_addr=t.aws_outer, remote_addr="%any",
                local_id=t.aws_outer, remote_id=a.cgw_public or self.cgw_public_outer, psk=t.psk,
                proposals=a.ike_proposals, dpd_delay=a.dpd_delay, dpd_timeout=a.dpd_timeout,
                reauth_time=f"{a.ike_lifetime}s", encap=s.aws_encap or not s.aws_kernel_ipsec, version=a.ike_version,
                children=[Child(name="vti", esp_proposals=a.esp_proposals, rekey_time=a.esp_rekey_time,
                                life_time=a.esp_life_time, dpd_action=a.dpd_action,
                                start_action=a.start_action, if_id=if_id, local_ts=any_ts, remote_ts=any_ts)])]
            if a.start_action != "none":
                t.charon.connections[0].remote_addr = self.cgw_public_outer
            t.charon.start()
            t.charon.load()
            # The VGW inside address lives on libipsec's TUN, as AWS's endpoint has it.
            v6 = "-6 " if t.ipv6 else ""
            t.ns.ip(f"{v6}addr add {t.aws_inside}/{t.inside.prefixlen} dev ipsec0" + (" nodad" if t.ipv6 else ""))
            t.ns.ip("link set ipsec0 up")
            if self.is_static(t):
                # AWS routes the on-prem prefixes configured on its side into the tunnel
                t.ns.ip(f"{v6}route add {s.onprem_cidr6 if t.ipv6 else s.onprem_cidr} dev ipsec0")
                continue
            statics = "static_routes6" if t.ipv6 else "static_routes"
            export = f"where proto = \"{statics}\""
            if a.as_path_prepend or a.med is not None:
                steps = "".join(f" bgp_path.prepend({s.aws_asn});" for _ in range(a.as_path_prepend))
                med = f" bgp_med = {a.med};" if a.med is not None else ""
                export = f"filter {{ if proto = \"{statics}\" then {{{steps}{med} accept; }} reject; }}"
            fam = "ipv6" if t.ipv6 else "ipv4"
            transit_aws, transit_vpc = (t.transit_aws6, t.transit_vpc6) if t.ipv6 else (t.transit_aws, t.transit_vpc)
            t.bird = Bird(t.ns, d, BirdConfig(
                router_id=t.aws_outside,
                static_routes=[] if t.ipv6 else [(s.vpc_cidr, f"via {t.transit_vpc}")] + extra_prefixes(s.vpc_extra_prefixes),
                static_routes6=[(s.vpc_cidr6, f"via {t.transit_vpc6}")] if t.ipv6 else [],
                neighbors=[
                    BgpNeighbor("cgw", t.aws_inside, s.aws_asn, t.cgw_inside, s.cgw_asn, export=export,
                                hold_time=a.hold_time, keepalive=a.keepalive, family=fam),
                    BgpNeighbor("vpc", transit_aws, s.aws_asn, transit_vpc, s.aws_asn,
                                export="where source = RTS_BGP", import_="none", next_hop_self=True, family=fam),
                ]))
            t.bird.start()
            vpc_neighbors.append(BgpNeighbor(f"aws{t.index}", transit_vpc, s.aws_asn, transit_aws,
                                             s.aws_asn, export="none", gateway_direct=True, family=fam))
        if s.static or s.static_vpn:
            self._follower = threading.Thread(target=self._follow_static, name=f"{s.prefix}-aws-routing",
                                              daemon=True)
            self._follower.start()
        if s.static:
            return
        self.vpc_bird = Bird(self.vpc, os.path.join(self.workdir, "vpc"),
                             BirdConfig(router_id="100.64.0.1", neighbors=vpc_neighbors))
        self.vpc_bird.start()

    def _follow_static(self) -> None:
        """AWS's side of a static VPN: the VPC sends to on-prem through an endpoint whose
        tunnel is up (the preferred one while it is), none while no tunnel is."""
        s = self.spec
        order = sorted(self.static_tunnels, key=lambda t: t.index != s.aws_return_tunnel)
        onprem = s.onprem_cidr6 if order[0].ipv6 else s.onprem_cidr
        table = f" table {STATIC_VPC_TABLE}" if s.static_vpn else ""
        while not self._follow_stop.wait(0.5):
            try:
                up = next((t for t in order if t.charon and t.charon.child_installed("vti")), None)
                via = f"aws{up.index}" if up else None
                if via != self.aws_return_via:
                    if up:
                        gw = up.transit_aws6 if up.ipv6 else up.transit_aws
                        self.vpc.ip(f"route replace {onprem} via {gw}{table}", check=False)
                    else:
                        self.vpc.ip(f"route del {onprem}{table}", check=False)
                    self.aws_return_via = via
            except Exception:  # noqa: BLE001 - the lab goes down under it
                if self._follow_stop.is_set():
                    return

    # ----------------------------------------------------------------- AWS side views
    def is_static(self, t: LabTunnel) -> bool:
        """Whether this endpoint runs static routing (no BIRD)."""
        return self.spec.static or t.index > self.spec.tunnels - self.spec.static_vpn

    @property
    def static_tunnels(self) -> list[LabTunnel]:
        return [t for t in self.tunnels if self.is_static(t)]

    @property
    def bgp_tunnels(self) -> list[LabTunnel]:
        return [t for t in self.tunnels if not self.is_static(t)]

    def aws_xml(self, *, cgw_address: str | None = None, group: int = 0, static: bool | None = None) -> str:
        """The VPN connection's XML; ``group`` 1: a dual-stack lab's IPv6 connection, or a
        ``static_vpn`` lab's static one (``static=True`` says the same)."""
        s = self.spec
        tunnels = []
        if static is not None and s.static_vpn:
            group = 1 if static else 0
        static = s.static or bool(s.static_vpn and group)
        for t in self.vpn_groups()[group]:
            a = t.spec
            tunnels.append(awsxml.XmlTunnel(
                cgw_outside=cgw_address or self.cgw_public_outer, vgw_outside=t.aws_outer,
                inside_cidr=str(t.inside), cgw_asn=s.cgw_asn, vgw_asn=s.aws_asn, psk=t.psk,
                ike_proposal=a.ike_proposals.split(",")[0], esp_proposal=a.esp_proposals.split(",")[0],
                ike_lifetime=a.ike_lifetime, hold_time=a.hold_time,
                dpd_delay=int(a.dpd_delay.rstrip("s"))))
        gw = "tgw-0123456789abcdef0" if s.gateway == "tgw" else "vgw-0123456789abcdef0"
        vpn_id = (s.static_vpn_id if s.static_vpn else s.vpn_id6) if group else s.vpn_id
        return awsxml.render(vpn_id, "cgw-0123456789abcdef0", gw, tunnels, static=static)

    def write_aws_xml(self, path: str | None = None, *, group: int = 0) -> str:
        path = path or os.path.join(self.workdir, f"aws-vpn-config{'-ipv6' if group else ''}.xml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.aws_xml(group=group))
        return path

    def aws_bgp_established(self, index: int) -> bool:
        t = self.tunnels[index - 1]
        return t.bird is not None and t.bird.established("cgw")

    def aws_child_installed(self, index: int) -> bool:
        return self.tunnels[index - 1].charon.child_installed("vti")

    def vpc_route_to_onprem(self, prefix: str | None = None) -> str | None:
        """Which endpoint the VPC sends on-prem traffic (or ``prefix``) through ("aws1", ...), or None."""
        out = self.vpc.ip(route_show(prefix or self.spec.onprem_cidr), check=False).stdout
        m = re.search(r"dev (aws\d)", out)
        return m.group(1) if m else None

    # ----------------------------------------------------------------- customer side views
    def cgw_routes(self, prefix: str | None = None) -> str:
        """The customer gateway's routes to the VPC (or ``prefix``) through a tunnel: without
        cgwd's fail-closed ``unreachable`` routes (:meth:`cgw_unreachable`)."""
        out = self.cgw.ip(route_show(prefix or self.spec.vpc_cidr), check=False).stdout
        return "".join(line + "\n" for line in out.splitlines() if line and not line.startswith("unreachable"))

    def cgw_unreachable(self, prefix: str | None = None) -> str:
        """cgwd's fail-closed routes to the VPC (or ``prefix``): ``unreachable ... proto 157``."""
        out = self.cgw.ip(route_show(prefix or self.spec.vpc_cidr), check=False).stdout
        return "".join(line + "\n" for line in out.splitlines() if line.startswith("unreachable"))

    def ping(self, count: int = 3, *, src_ns: Netns | None = None, dst: str | None = None,
             timeout: float = 2.0) -> bool:
        """Ping the VPC host from the on-prem host (by default); True when all replies came."""
        src_ns = src_ns or self.onprem
        dst = dst or self.spec.vpc_host
        proc = src_ns.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(int(timeout)), dst],
                          check=False, timeout=count * (timeout + 1) + 5)
        m = re.search(r"(\d+) received", proc.stdout)
        return bool(m) and int(m.group(1)) == count

    def wait_ping(self, timeout: float = 60) -> None:
        wait_for(lambda: self.ping(1, timeout=1), timeout, interval=0.5,
                 what=f"a ping from {self.spec.onprem_host} to {self.spec.vpc_host}")

    # ----------------------------------------------------------------- reference stack
    def start_reference(self, *, kernel_ipsec: bool = False) -> None:
        """strongSwan + BIRD on the customer side, as people glue them by hand.

        libipsec has one TUN for every SA and chooses the outbound SA by selector alone, so
        one charon cannot carry two 0.0.0.0/0 tunnels: tunnel 1 carries 0.0.0.0/0, the other
        tunnels only their inside /30 (enough for their BGP sessions). This is the
        reference cgwd is measured against, not a redundant gateway.
        """
        s = self.spec
        if self.has_ipv6 or s.outer_ipv6:
            raise LabError("the reference stack is IPv4 only (its one libipsec TUN cannot tell two ::/0 tunnels apart)")
        d = os.path.join(self.workdir, "reference")
        self._ref_kernel = kernel_ipsec  # the kernel's XFRM (QEMU guest) instead of libipsec
        if kernel_ipsec:
            self.cgw.ip("link add ipsec0 type xfrm if_id 100")
        self.ref_charon = Charon(self.cgw, d, log_level=s.charon_log_level, kernel_ipsec=kernel_ipsec)
        for t in self.tunnels:
            a = t.spec
            child = Child(name=f"tun{t.index}", esp_proposals=a.esp_proposals, rekey_time=a.esp_rekey_time,
                          dpd_action="restart", start_action="start", if_id=100 if kernel_ipsec else None)
            if t.index > 1:
                child.local_ts = f"{t.cgw_inside}/32"
                child.remote_ts = f"{t.aws_inside}/32"
            self.ref_charon.connections.append(Connection(
                name=f"tun{t.index}", local_addr=self.cgw_outside, remote_addr=t.aws_outside,
                local_id=s.cgw_public, remote_id=t.aws_outside, psk=t.psk, proposals=a.ike_proposals,
                dpd_delay=a.dpd_delay, dpd_timeout=a.dpd_timeout, children=[child],
                encap=s.aws_encap or not kernel_ipsec, version=a.ike_version))
        self.ref_charon.start()
        for t in self.tunnels:
            self.cgw.ip(f"addr add {t.cgw_inside}/{t.inside.prefixlen} dev ipsec0")
        self.cgw.ip("link set ipsec0 up")
        self.ref_charon.load()
        self.ref_bird = Bird(self.cgw, d, BirdConfig(
            router_id=s.cgw_public,
            static_routes=[(s.onprem_cidr, "via \"lan0\"")],
            neighbors=[BgpNeighbor(f"tun{t.index}", t.cgw_inside, s.cgw_asn, t.aws_inside, s.aws_asn,
                                   export="where proto = \"static_routes\"",
                                   import_=f"where net != 0.0.0.0/0") for t in self.tunnels]))
        self.ref_bird.start()

    def stop_reference(self) -> None:
        for p in (self.ref_bird, self.ref_charon):
            if p:
                p.stop()
        self.ref_bird = self.ref_charon = None
        if self._ref_kernel:
            self.cgw.ip("link del ipsec0", check=False)  # libipsec's TUN goes with charon, this does not
            self._ref_kernel = False

    # ----------------------------------------------------------------- teardown
    def down(self) -> None:
        self._follow_stop.set()
        if self._follower is not None:
            self._follower.join(10)
            self._follower = None
        self.stop_reference()
        for p in self.procs:
            stop_process(p)
        self.procs.clear()
        for t in self.tunnels:
            for p in (t.bird, t.charon):
                if p:
                    p.stop()
        if self.vpc_bird:
            self.vpc_bird.stop()
        for ns in self.namespaces:
            ns.delete()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # ----------------------------------------------------------------- state for `cgwctl lab`
    def _save_state(self) -> None:
        state = {"prefix": self.spec.prefix, "workdir": self.workdir, "nat": self.spec.nat,
                 "tunnels": self.spec.tunnels, "static": self.spec.static, "created": time.time(),
                 "ipv6": self.spec.ipv6, "outer_ipv6": self.spec.outer_ipv6, "dual_stack": self.spec.dual_stack,
                 "static_vpn": self.spec.static_vpn}
        with open(os.path.join(self.workdir, "lab.json"), "w") as f:
            json.dump(state, f)


def route_show(prefix: str) -> str:
    """`ip route show PREFIX` for either family (iproute2 needs -6 for an IPv6 prefix)."""
    return f"{'-6 ' if ':' in prefix else ''}route show {prefix}"


def extra_prefixes(n: int) -> list[tuple[str, str]]:
    """n /24s from 10.128.0.0 on, as BIRD static routes (blackhole: announced, never used)."""
    base = int(ipaddress.IPv4Address("10.128.0.0"))
    return [(str(ipaddress.IPv4Network((base + 256 * i, 24))), "blackhole") for i in range(n)]


def leftovers(prefix: str) -> list[str]:
    """What a lab with this prefix left behind: namespaces, processes, work directories."""
    found = [f"namespace {n}" for n in list_netns() if n.startswith(prefix + "-")]
    for d in glob.glob(os.path.join(tempfile.gettempdir(), f"{WORKDIR_MARK}{prefix}-*")):
        found.append(f"directory {d}")
    for pid_dir in glob.glob("/proc/[0-9]*"):
        try:
            with open(os.path.join(pid_dir, "cmdline"), "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{WORKDIR_MARK}{prefix}-" in cmd or f"netns exec {prefix}-" in cmd:
            found.append(f"process {os.path.basename(pid_dir)}: {cmd.strip()[:120]}")
    return found


def destroy(prefix: str) -> list[str]:
    """Remove whatever a lab with this prefix left (after a crash); returns what was removed."""
    removed = []
    for n in list_netns():
        if n.startswith(prefix + "-"):
            Netns(n).delete()
            removed.append(f"namespace {n}")
    for d in glob.glob(os.path.join(tempfile.gettempdir(), f"{WORKDIR_MARK}{prefix}-*")):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(f"directory {d}")
    return removed
