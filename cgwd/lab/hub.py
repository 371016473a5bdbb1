"""A hub lab: one customer gateway terminating many VPN connections (issue 19's scale bench).

A box in front of a hub VPC with many attachments, or a Transit Gateway with many VPN
attachments, holds 2 tunnels per VPN connection. This lab builds V VPN connections (2V AWS
endpoints), each endpoint as the small lab has it -- its own namespace with a strongSwan
charon (libipsec) and a BIRD speaking BGP over the tunnel's inside addresses -- announcing a
few VPC prefixes per VPN connection. There is no VPC host behind the endpoints: the figures
this lab is for (bring-up, memory, idle CPU, status) need the tunnels, the BGP sessions and
the routes, not the data path.

Namespaces (P = the prefix): ``P-cgw`` (the customer gateway under test: cgwd, or charon +
BIRD as the reference), ``P-wan`` (the router between), ``P-aws1`` .. ``P-aws{2V}``.

Addresses: the customer's outside address 203.0.113.2/30 (its router .1); endpoint i at
198.18.i.2/30 (the router's side .1); tunnel i's inside /30 169.254.(10 + i).0 (AWS .1, the
customer .2); VPN connection v announces 10.(100 + v).k.0/24 for k < prefixes; the customer
announces 10.200.0.0/24.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import awsvendor
from .awsxml import XmlTunnel
from .bird import BgpNeighbor, Bird, BirdConfig, bird_available
from .netns import LabError, Netns, list_netns, stop_process, veth
from .strongswan import Charon, Child, Connection, charon_available
from .topology import WORKDIR_MARK, random_psk

CGW_OUTSIDE = "203.0.113.2"
CGW_ASN, AWS_ASN = 65000, 64512
ONPREM_CIDR = "10.200.0.0/24"
MAX_VPNS = 100
# BIRD stamps protocol state changes to the millisecond, so bring-up is read from AWS's side
BIRD_TIMEFORMAT = "timeformat protocol iso long ms;\n"


@dataclass
class HubEndpoint:
    index: int  # 1-based, over all tunnels
    vpn: int    # 1-based VPN connection
    ns: Netns
    psk: str
    charon: Charon | None = None
    bird: Bird | None = None

    @property
    def outside(self) -> str:
        return f"198.18.{self.index}.2"

    @property
    def router_side(self) -> str:
        return f"198.18.{self.index}.1"

    @property
    def inside(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"169.254.{10 + self.index}.0/30")

    @property
    def aws_inside(self) -> str:
        return str(self.inside[1])

    @property
    def cgw_inside(self) -> str:
        return str(self.inside[2])


@dataclass
class HubSpec:
    prefix: str = "hub"
    vpns: int = 1
    prefixes: int = 4  # VPC prefixes each VPN connection announces (on both its tunnels)
    ike_version: int = 2
    ike_proposal: str = "aes128-sha1-modp1024"
    esp_proposal: str = "aes128-sha1-modp1024"
    workdir: str | None = None
    parallel: int = 8  # endpoints started at once

    def __post_init__(self) -> None:
        if not 1 <= self.vpns <= MAX_VPNS:
            raise ValueError(f"vpns: 1..{MAX_VPNS}")
        if not 1 <= self.prefixes <= 256:
            raise ValueError("prefixes: 1..256 per VPN connection")
        if self.ike_version not in (1, 2):
            raise ValueError("ike_version must be 1 or 2")
        if len(self.prefix) > 6 or not self.prefix.isalnum() or not self.prefix[0].isalpha():
            raise ValueError("hub lab prefix: 1-6 letters/digits, starting with a letter")


@dataclass
class HubLab:
    spec: HubSpec
    endpoints: list[HubEndpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        s = self.spec
        self.workdir = s.workdir or tempfile.mkdtemp(prefix=f"{WORKDIR_MARK}{s.prefix}-")
        self.cgw = Netns(f"{s.prefix}-cgw")
        self.wan = Netns(f"{s.prefix}-wan")
        self.endpoints = [HubEndpoint(index=i, vpn=(i + 1) // 2, ns=Netns(f"{s.prefix}-aws{i}"), psk=random_psk())
                          for i in range(1, 2 * s.vpns + 1)]
        self.procs: list = []

    @property
    def tunnels(self) -> int:
        return len(self.endpoints)

    def vpc_prefixes(self, vpn: int) -> list[str]:
        return [f"10.{100 + vpn}.{k}.0/24" for k in range(self.spec.prefixes)]

    def all_vpc_prefixes(self) -> set[str]:
        return {p for v in range(1, self.spec.vpns + 1) for p in self.vpc_prefixes(v)}

    # ------------------------------------------------------------------ build
    def up(self) -> "HubLab":
        missing = charon_available() or bird_available()
        if missing:
            raise LabError(missing)
        stale = [n for n in list_netns() if n.startswith(self.spec.prefix + "-")]
        if stale:
            raise LabError(f"namespaces from an earlier hub lab exist: {' '.join(stale[:5])} ...")
        try:
            self._build()
            with ThreadPoolExecutor(self.spec.parallel) as pool:
                list(pool.map(self._start_endpoint, self.endpoints))
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        for ns in (self.cgw, self.wan):
            ns.create()
            ns.sysctl("net.ipv4.ip_forward", "1")
        veth(self.cgw, "wan0", f"{CGW_OUTSIDE}/30", self.wan, "cgw0", "203.0.113.1/30")
        self.cgw.ip("route add default via 203.0.113.1")
        for e in self.endpoints:
            e.ns.create()
            veth(self.wan, f"aws{e.index}", f"{e.router_side}/30", e.ns, "wan0", f"{e.outside}/30")
            e.ns.ip(f"route add default via {e.router_side}")

    def _start_endpoint(self, e: HubEndpoint) -> None:
        s = self.spec
        d = os.path.join(self.workdir, f"aws{e.index}")
        e.charon = Charon(e.ns, d)
        e.charon.connections = [Connection(
            name="aws", local_addr=e.outside, remote_addr="%any", local_id=e.outside, remote_id=CGW_OUTSIDE,
            psk=e.psk, proposals=s.ike_proposal, version=s.ike_version,
            children=[Child(name="vti", esp_proposals=s.esp_proposal)])]
        e.charon.start()
        e.charon.load()
        e.ns.ip(f"addr add {e.aws_inside}/30 dev ipsec0")
        e.ns.ip("link set ipsec0 up")
        e.bird = Bird(e.ns, d, BirdConfig(
            router_id=e.outside, extra=BIRD_TIMEFORMAT,
            static_routes=[(p, "blackhole") for p in self.vpc_prefixes(e.vpn)],
            neighbors=[BgpNeighbor("cgw", e.aws_inside, AWS_ASN, e.cgw_inside, CGW_ASN,
                                   export='where proto = "static_routes"')]))
        e.bird.start()

    def down(self) -> None:
        for p in self.procs:
            stop_process(p)
        self.procs.clear()
        with ThreadPoolExecutor(self.spec.parallel) as pool:
            list(pool.map(self._stop_endpoint, self.endpoints))
        for ns in [self.cgw, self.wan] + [e.ns for e in self.endpoints]:
            ns.delete()
        if not self.spec.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _stop_endpoint(e: HubEndpoint) -> None:
        for p in (e.bird, e.charon):
            if p:
                p.stop()

    # ------------------------------------------------------------------ the customer side
    def aws_json(self) -> str:
        """Every VPN connection as ``aws ec2 describe-vpn-connections`` prints them (one file)."""
        conns = []
        for v in range(1, self.spec.vpns + 1):
            tunnels = [XmlTunnel(cgw_outside=CGW_OUTSIDE, vgw_outside=e.outside, inside_cidr=str(e.inside),
                                 cgw_asn=CGW_ASN, vgw_asn=AWS_ASN, psk=e.psk, ike_proposal=self.spec.ike_proposal,
                                 esp_proposal=self.spec.esp_proposal, ike_versions=(self.spec.ike_version,),
                                 startup_action="add")
                       for e in self.endpoints if e.vpn == v]
            doc = json.loads(awsvendor.render_json(f"vpn-{v:017x}", "cgw-0123456789abcdef0", "tgw-0fedcba9876543210",
                                                   tunnels))
            conns += doc["VpnConnections"]
        path = os.path.join(self.workdir, "aws-vpns.json")
        with open(path, "w") as f:
            json.dump({"VpnConnections": conns}, f, indent=2)
        return path

    def reference_charon(self, workdir: str) -> Charon:
        """strongSwan as the customer side, one connection per tunnel. libipsec picks the
        outbound SA by selector alone, so each child carries only its inside /30 (the BGP
        session; the data path is not measured here)."""
        s = self.spec
        charon = Charon(self.cgw, workdir)
        for e in self.endpoints:
            charon.connections.append(Connection(
                name=f"tun{e.index}", local_addr=CGW_OUTSIDE, remote_addr=e.outside, local_id=CGW_OUTSIDE,
                remote_id=e.outside, psk=e.psk, proposals=s.ike_proposal, version=s.ike_version,
                children=[Child(name=f"tun{e.index}", local_ts=f"{e.cgw_inside}/32", remote_ts=f"{e.aws_inside}/32",
                                esp_proposals=s.esp_proposal, dpd_action="restart", start_action="start")]))
        return charon

    def reference_bird(self, workdir: str) -> Bird:
        return Bird(self.cgw, workdir, BirdConfig(
            router_id=CGW_OUTSIDE, static_routes=[(ONPREM_CIDR, "blackhole")],
            neighbors=[BgpNeighbor(f"tun{e.index}", e.cgw_inside, CGW_ASN, e.aws_inside, AWS_ASN,
                                   export='where proto = "static_routes"') for e in self.endpoints]))
