"""The lab for a pair of gateways: two cgwd boxes on one LAN, each with its own VPN
connection (four AWS endpoints: strongSwan + BIRD each, as :mod:`cgwd.lab.topology` builds
them), keepalived on both, and optionally the EC2 pieces: an EC2 API emulator (moto's
server mode) on the LAN and an IMDSv2 responder at 169.254.169.254 in each box.

::

    onprem (10.200.0.10, gw = VIP 10.200.0.1)
       │
      lan (bridge; moto at 10.200.0.254:5000)
       ├── cgw  lan0 10.200.0.2  wan0 203.0.113.2 ──┐      ┌── aws1, aws2 (VPN of box 1) ──┐
       └── cgw2 lan0 10.200.0.3  wan0 203.0.113.6 ──┴─ wan ┴── aws3, aws4 (VPN of box 2) ──┴── vpc

:class:`PairLab` is a :class:`cgwd.lab.topology.Lab` with four tunnels whose endpoints
expect box 1 (tunnels 1-2) or box 2 (3-4); only the customer side differs.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import sys
from dataclasses import dataclass, field

from . import awsxml
from .cli import cgwctl_command, cgwd_command
from .netns import LabError, Netns, list_netns, run, stop_process, veth
from .topology import AwsTunnelSpec, Lab, LabSpec

__all__ = ["Box", "PairLab", "PairSpec", "in_netns"]


@dataclass
class PairSpec:
    prefix: str = "ha"
    vip: str = "10.200.0.1"
    lan_addresses: tuple[str, str] = ("10.200.0.2", "10.200.0.3")
    publics: tuple[str, str] = ("203.0.113.2", "203.0.113.6")
    api_address: str = "10.200.0.254"  # the EC2 API emulator on the LAN
    api_port: int = 5000
    failback: str = "none"
    priorities: tuple[int, int] = (150, 100)
    preempt_delay: int = 5
    # AWS side: short DPD and hold time so that a dead box is noticed in seconds
    aws: dict = field(default_factory=lambda: {"dpd_delay": "2s", "dpd_timeout": "6s", "hold_time": 10,
                                               "keepalive": 3})


@dataclass
class Box:
    index: int  # 1 or 2
    ns: Netns
    lan: str
    public: str
    vpn_id: str
    workdir: str
    priority: int
    cgwd: object = None
    keepalived: object = None
    imds: object = None

    @property
    def socket(self) -> str:
        return os.path.join(self.workdir, "cgwd.sock")

    @property
    def ha_config(self) -> str:
        return os.path.join(self.workdir, "ha.toml")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.workdir, "ha")


class PairLab(Lab):
    def __init__(self, pair: PairSpec | None = None):
        self.pair = pair or PairSpec()
        p = self.pair
        aws = [AwsTunnelSpec(cgw_public=p.publics[i // 2], **p.aws) for i in range(4)]
        super().__init__(LabSpec(prefix=p.prefix, tunnels=4, aws=aws, cgw_public=p.publics[0]))
        self.cgw2 = Netns(f"{p.prefix}-cgw2")
        self.lan = Netns(f"{p.prefix}-lan")
        self.boxes = [
            Box(i + 1, ns, p.lan_addresses[i], p.publics[i], f"vpn-0a1b2c3d4e5f6071{8 + i}",
                os.path.join(self.workdir, f"gw{i + 1}"), p.priorities[i])
            for i, ns in enumerate((self.cgw, self.cgw2))]
        for b in self.boxes:
            os.makedirs(b.state_dir, exist_ok=True)
        self.moto = None

    @property
    def namespaces(self) -> list[Netns]:
        return super().namespaces + [self.cgw2, self.lan]

    # ----------------------------------------------------------------- network
    def _build_network(self) -> None:
        s, p = self.spec, self.pair
        stale = [n for n in list_netns() if n.startswith(s.prefix + "-")]
        if stale:
            raise LabError(f"namespaces from an earlier lab exist: {' '.join(stale)}")
        for ns in self.namespaces:
            ns.create()
        for ns in (self.cgw, self.cgw2, self.wan, self.vpc, *(t.ns for t in self.tunnels)):
            ns.sysctl("net.ipv4.ip_forward", "1")
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")
        net = ipaddress.IPv4Network(s.onprem_cidr)
        self.lan.ip("link add br0 type bridge")
        self.lan.ip("link set br0 up")
        self.lan.ip(f"addr add {p.api_address}/{net.prefixlen} dev br0")
        self._attach_onprem(net)
        for b in self.boxes:
            veth(b.ns, "lan0", f"{b.lan}/{net.prefixlen}", self.lan, f"p{b.index}", None)
            self.lan.ip(f"link set p{b.index} master br0")
            wan_side = str(ipaddress.IPv4Address(b.public) - 1)
            veth(b.ns, "wan0", f"{b.public}/30", self.wan, f"cgw{b.index}", f"{wan_side}/30")
            b.ns.ip(f"route add default via {wan_side}")
        self.vpc.ip(f"addr add {s.vpc_host}/32 dev lo")
        for t in self.tunnels:
            veth(self.wan, f"aws{t.index}", f"{t.wan_side}/30", t.ns, "wan0", f"{t.aws_outside}/30")
            t.ns.ip(f"route add default via {t.wan_side}")
            veth(t.ns, "vpc0", f"{t.transit_aws}/30", self.vpc, f"aws{t.index}", f"{t.transit_vpc}/30")
            t.ns.ip(f"route add {s.vpc_cidr} via {t.transit_vpc}")

    def _attach_onprem(self, net: ipaddress.IPv4Network) -> None:
        """The on-prem host on the LAN bridge, routing via the virtual address (keepalived)."""
        veth(self.onprem, "eth0", f"{self.spec.onprem_host}/{net.prefixlen}", self.lan, "p0", None)
        self.lan.ip("link set p0 master br0")
        self.onprem.ip(f"route add default via {self.pair.vip}")

    # ----------------------------------------------------------------- each box's VPN
    def box_xml(self, b: Box) -> str:
        s = self.spec
        tunnels = []
        for t in self.tunnels[2 * (b.index - 1): 2 * b.index]:
            a = t.spec
            tunnels.append(awsxml.XmlTunnel(
                cgw_outside=b.public, vgw_outside=t.aws_outside, inside_cidr=str(t.inside), cgw_asn=s.cgw_asn,
                vgw_asn=s.aws_asn, psk=t.psk, ike_proposal=a.ike_proposals.split(",")[0],
                esp_proposal=a.esp_proposals.split(",")[0], ike_lifetime=a.ike_lifetime, hold_time=a.hold_time,
                dpd_delay=int(a.dpd_delay.rstrip("s"))))
        return awsxml.render(b.vpn_id, f"cgw-0123456789abcdef{b.index}", "vgw-0123456789abcdef0", tunnels)

    def import_config(self, b: Box) -> str:
        xml = os.path.join(b.workdir, "aws-vpn-config.xml")
        fd = os.open(xml, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.box_xml(b))
        out = os.path.join(b.workdir, "cgwd.toml")
        proc = run(cgwctl_command("import", "aws", xml, "--advertise", self.spec.onprem_cidr, "-o", out), check=False)
        if proc.returncode != 0:
            raise LabError(f"cgwctl import aws failed: {proc.stderr.strip()}")
        return out

    def start_cgwd(self, b: Box) -> None:
        config = os.path.join(b.workdir, "cgwd.toml")
        if not os.path.exists(config):
            self.import_config(b)
        b.cgwd = b.ns.popen(cgwd_command(config, b.socket), log_path=os.path.join(b.workdir, "cgwd.log"))
        self.procs.append(b.cgwd)

    def kill_cgwd(self, b: Box) -> None:
        """SIGKILL, as a crash: nothing cleaned up."""
        if b.cgwd is not None and b.cgwd.poll() is None:
            os.killpg(b.cgwd.pid, 9)
            b.cgwd.wait(10)

    def cut_links(self, b: Box, up: bool = False) -> None:
        for ifname in ("lan0", "wan0"):
            b.ns.ip(f"link set {ifname} {'up' if up else 'down'}")
        if up:  # the default route went with the link
            b.ns.ip(f"route replace default via {ipaddress.IPv4Address(b.public) - 1}", check=False)

    def cut_wan(self, b: Box, up: bool = False) -> None:
        b.ns.ip(f"link set wan0 {'up' if up else 'down'}")
        if up:
            b.ns.ip(f"route replace default via {ipaddress.IPv4Address(b.public) - 1}", check=False)

    def health(self, b: Box) -> tuple[int, str]:
        proc = run(cgwctl_command("--socket", b.socket, "health", "--timeout", "3"), check=False, timeout=15)
        return proc.returncode, proc.stdout.strip()

    # ----------------------------------------------------------------- keepalived
    def write_ha_config(self, b: Box, ec2: dict | None = None) -> str:
        p = self.pair
        peer = next(o for o in self.boxes if o is not b)
        lines = [
            "[ha]", f"state_dir = {json.dumps(b.state_dir)}", f"failback = {json.dumps(p.failback)}",
            "[ha.vrrp]", 'interface = "lan0"', "virtual_router_id = 51",
            f"virtual_ipaddress = [\"{p.vip}/{ipaddress.IPv4Network(self.spec.onprem_cidr).prefixlen}\"]",
            f"unicast_src_ip = \"{b.lan}\"", f"unicast_peer = [\"{peer.lan}\"]", f"priority = {b.priority}",
            "advert_int = 1", f"preempt_delay = {p.preempt_delay}", "health_interval = 2", "health_timeout = 5",
            "health_fall = 2", "health_rise = 2",
        ]
        if ec2:
            lines.append("[ha.ec2]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in ec2.items()]
        with open(b.ha_config, "w") as f:
            f.write("\n".join(lines) + "\n")
        return b.ha_config

    def start_keepalived(self, b: Box) -> None:
        from ..ha.config import load_ha_config
        from ..ha.keepalived import render

        if not os.path.exists(b.ha_config):
            self.write_ha_config(b)
        cgwctl = f"{sys.executable} -m cgwd.cli"
        conf = os.path.join(b.workdir, "keepalived.conf")
        with open(conf, "w") as f:
            f.write(render(load_ha_config(b.ha_config), cgwctl=cgwctl, socket=b.socket, ha_config=b.ha_config,
                           router_id=f"{self.spec.prefix}-gw{b.index}"))
        # the hooks it runs see no AWS credentials of the caller's: only the box's own (IMDS)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
        b.keepalived = b.ns.popen(
            ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--vrrp", "-f", conf,
             "-p", os.path.join(b.workdir, "keepalived.pid"), "-r", os.path.join(b.workdir, "vrrp.pid")],
            log_path=os.path.join(b.workdir, "keepalived.log"), env=env)
        self.procs.append(b.keepalived)

    def vip_on(self) -> list[int]:
        """Which boxes hold the virtual address now (1, 2; both in a split brain)."""
        out = []
        for b in self.boxes:
            got = b.ns.ip("-o addr show dev lan0", check=False).stdout
            if re.search(rf"inet {re.escape(self.pair.vip)}/", got):
                out.append(b.index)
        return out

    def ha_state(self, b: Box) -> dict:
        try:
            with open(os.path.join(b.state_dir, "ha.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    # ----------------------------------------------------------------- EC2 pieces
    @property
    def api_url(self) -> str:
        return f"http://{self.pair.api_address}:{self.pair.api_port}"

    def start_moto(self) -> None:
        """moto's server mode on the LAN (the test's EC2 API; nothing else is reachable)."""
        self.moto = self.lan.popen([sys.executable, "-m", "moto.server", "-H", self.pair.api_address,
                                    "-p", str(self.pair.api_port)], log_path=os.path.join(self.workdir, "moto.log"))
        self.procs.append(self.moto)

    def start_imds(self, b: Box, doc: dict) -> None:
        """An IMDSv2 responder at 169.254.169.254 inside the box, telling it who it is."""
        path = os.path.join(b.workdir, "imds.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        b.ns.ip("addr add 169.254.169.254/32 dev lo")
        b.imds = b.ns.popen([sys.executable, "-m", "cgwd.lab.imds", "--listen", "169.254.169.254:80",
                             "--document", path], log_path=os.path.join(b.workdir, "imds.log"))
        self.procs.append(b.imds)

    def down(self) -> None:
        for b in getattr(self, "boxes", []):
            for proc in (b.keepalived, b.imds, b.cgwd):
                stop_process(proc)
        stop_process(self.moto)
        super().down()


@contextlib.contextmanager
def in_netns(ns: Netns):
    """Run the calling thread's new sockets in ``ns`` (a client to the lab's emulator)."""
    from pyroute2.netns import popns, pushns

    pushns(ns.name)
    try:
        yield
    finally:
        popns()
