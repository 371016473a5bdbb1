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
import time
from dataclasses import dataclass, field

from . import awsxml
from .bird import BgpNeighbor, Bird, BirdConfig, bird_available
from .netns import LabError, Netns, list_netns, run, stop_process, veth, wait_for
from .strongswan import Charon, Child, Connection, charon_available

WORKDIR_MARK = "cgwd-lab-"


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

    def __post_init__(self) -> None:
        if not 1 <= self.tunnels <= 4:
            raise ValueError("the lab supports 1 to 4 tunnels")
        if len(self.prefix) > 10 or not re.fullmatch(r"[a-z][a-z0-9]*", self.prefix):
            raise ValueError("lab prefix: 1-10 lowercase letters/digits, starting with a letter")
        while len(self.aws) < self.tunnels:
            self.aws.append(AwsTunnelSpec())


@dataclass
class LabTunnel:
    index: int  # 1-based
    ns: Netns
    aws_outside: str
    wan_side: str
    inside: ipaddress.IPv4Network
    psk: str
    spec: AwsTunnelSpec
    charon: Charon | None = None
    bird: Bird | None = None

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
            self.tunnels.append(LabTunnel(
                index=i, ns=Netns(f"{s.prefix}-aws{i}"),
                aws_outside=f"198.51.100.{4 * (i - 1) + 2}", wan_side=f"198.51.100.{4 * (i - 1) + 1}",
                inside=ipaddress.IPv4Network(a.inside_cidr or s.inside_cidrs[i - 1]),
                psk=a.psk or random_psk(), spec=a))
        self.vpc_bird: Bird | None = None
        self.ref_charon: Charon | None = None
        self.ref_bird: Bird | None = None
        self._ref_kernel = False
        self.procs: list = []

    # ----------------------------------------------------------------- addresses
    @property
    def namespaces(self) -> list[Netns]:
        ns = [self.onprem, self.cgw, self.wan, self.vpc] + [t.ns for t in self.tunnels]
        return ns + ([self.nat] if self.nat else [])

    @property
    def cgw_outside(self) -> str:
        """The address cgwd binds to: private when behind the NAT router."""
        return self.spec.cgw_private if self.spec.nat else self.spec.cgw_public

    # ----------------------------------------------------------------- build
    def up(self) -> "Lab":
        missing = charon_available() or bird_available()
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
        for t in self.tunnels:
            veth(self.wan, f"aws{t.index}", f"{t.wan_side}/30", t.ns, "wan0", f"{t.aws_outside}/30")
            t.ns.ip(f"route add default via {t.wan_side}")
            veth(t.ns, "vpc0", f"{t.transit_aws}/30", self.vpc, f"aws{t.index}", f"{t.transit_vpc}/30")
            t.ns.ip(f"route add {s.vpc_cidr} via {t.transit_vpc}")

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
            t.charon.connections = [Connection(
                name="aws", local_addr=t.aws_outside, remote_addr="%any",
                local_id=t.aws_outside, remote_id=s.cgw_public, psk=t.psk,
                proposals=a.ike_proposals, dpd_delay=a.dpd_delay, dpd_timeout=a.dpd_timeout,
                reauth_time=f"{a.ike_lifetime}s", encap=s.aws_encap or not s.aws_kernel_ipsec,
                children=[Child(name="vti", esp_proposals=a.esp_proposals, rekey_time=a.esp_rekey_time,
                                life_time=a.esp_life_time, dpd_action=a.dpd_action,
                                start_action=a.start_action, if_id=if_id)])]
            if a.start_action != "none":
                t.charon.connections[0].remote_addr = s.cgw_public
            t.charon.start()
            t.charon.load()
            # The VGW inside address lives on libipsec's TUN, as AWS's endpoint has it.
            t.ns.ip(f"addr add {t.aws_inside}/{t.inside.prefixlen} dev ipsec0")
            t.ns.ip("link set ipsec0 up")
            export = "where proto = \"static_routes\""
            if a.as_path_prepend or a.med is not None:
                steps = "".join(f" bgp_path.prepend({s.aws_asn});" for _ in range(a.as_path_prepend))
                med = f" bgp_med = {a.med};" if a.med is not None else ""
                export = f"filter {{ if proto = \"static_routes\" then {{{steps}{med} accept; }} reject; }}"
            t.bird = Bird(t.ns, d, BirdConfig(
                router_id=t.aws_outside,
                static_routes=[(s.vpc_cidr, f"via {t.transit_vpc}")],
                neighbors=[
                    BgpNeighbor("cgw", t.aws_inside, s.aws_asn, t.cgw_inside, s.cgw_asn, export=export,
                                hold_time=a.hold_time, keepalive=a.keepalive),
                    BgpNeighbor("vpc", t.transit_aws, s.aws_asn, t.transit_vpc, s.aws_asn,
                                export="where source = RTS_BGP", import_="none", next_hop_self=True),
                ]))
            t.bird.start()
            vpc_neighbors.append(BgpNeighbor(f"aws{t.index}", t.transit_vpc, s.aws_asn, t.transit_aws,
                                             s.aws_asn, export="none", gateway_direct=True))
        self.vpc_bird = Bird(self.vpc, os.path.join(self.workdir, "vpc"),
                             BirdConfig(router_id="100.64.0.1", neighbors=vpc_neighbors))
        self.vpc_bird.start()

    # ----------------------------------------------------------------- AWS side views
    def aws_xml(self, *, cgw_address: str | None = None) -> str:
        s = self.spec
        tunnels = []
        for t in self.tunnels:
            a = t.spec
            tunnels.append(awsxml.XmlTunnel(
                cgw_outside=cgw_address or s.cgw_public, vgw_outside=t.aws_outside,
                inside_cidr=str(t.inside), cgw_asn=s.cgw_asn, vgw_asn=s.aws_asn, psk=t.psk,
                ike_proposal=a.ike_proposals.split(",")[0], esp_proposal=a.esp_proposals.split(",")[0],
                ike_lifetime=a.ike_lifetime, hold_time=a.hold_time,
                dpd_delay=int(a.dpd_delay.rstrip("s"))))
        return awsxml.render(s.vpn_id, "cgw-0123456789abcdef0", "vgw-0123456789abcdef0", tunnels)

    def write_aws_xml(self, path: str | None = None) -> str:
        path = path or os.path.join(self.workdir, "aws-vpn-config.xml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.aws_xml())
        return path

    def aws_bgp_established(self, index: int) -> bool:
        return self.tunnels[index - 1].bird.established("cgw")

    def aws_child_installed(self, index: int) -> bool:
        return self.tunnels[index - 1].charon.child_installed("vti")

    def vpc_route_to_onprem(self) -> str | None:
        """Which endpoint the VPC sends on-prem traffic through ("aws1", ...), or None."""
        out = self.vpc.ip(f"route show {self.spec.onprem_cidr}", check=False).stdout
        m = re.search(r"dev (aws\d)", out)
        return m.group(1) if m else None

    # ----------------------------------------------------------------- customer side views
    def cgw_routes(self, prefix: str | None = None) -> str:
        return self.cgw.ip(f"route show {prefix or self.spec.vpc_cidr}", check=False).stdout

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
                encap=s.aws_encap or not kernel_ipsec))
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
                 "tunnels": self.spec.tunnels, "created": time.time()}
        with open(os.path.join(self.workdir, "lab.json"), "w") as f:
            json.dump(state, f)


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
