"""BIRD 2 per network namespace: AWS's BGP side in the lab, and the reference customer side."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .netns import LabError, Netns, run, stop_process, wait_for


def bird_available() -> str | None:
    for exe in ("/usr/sbin/bird", "/usr/sbin/birdc"):
        if not os.path.exists(exe):
            return "BIRD 2 is not installed (apt-get install bird2)"
    return None


@dataclass
class BgpNeighbor:
    name: str
    local_address: str
    local_as: int
    neighbor_address: str
    neighbor_as: int
    export: str = "none"  # a BIRD filter expression: "none", "all", "where ..."
    import_: str = "all"
    hold_time: int = 30
    keepalive: int = 10
    next_hop_self: bool = False
    gateway_direct: bool = False  # iBGP over a shared link: resolve the next hop directly
    extra: str = ""
    family: str = "ipv4"  # the one channel: "ipv4", or "ipv6" (an IPv6-only session, as a TGW's)

    def render(self) -> str:
        nhs = "\n    next hop self;" if self.next_hop_self else ""
        extra = self.extra
        if self.gateway_direct:
            nhs += "\n    gateway direct;"
            extra = (extra + " direct;").strip()
        return f"""protocol bgp {self.name} {{
  local {self.local_address} as {self.local_as};
  neighbor {self.neighbor_address} as {self.neighbor_as};
  hold time {self.hold_time};
  keepalive time {self.keepalive};
  connect retry time 2;
  error wait time 1, 10;
  {extra}
  {self.family} {{
    import {self.import_};
    export {self.export};{nhs}
  }};
}}
"""


@dataclass
class BirdConfig:
    router_id: str
    static_routes: list[tuple[str, str]] = field(default_factory=list)  # (prefix, "via X" | "blackhole")
    neighbors: list[BgpNeighbor] = field(default_factory=list)
    kernel_export: bool = True
    static_routes6: list[tuple[str, str]] = field(default_factory=list)  # IPv6: protocol static_routes6
    merge_paths: bool = False  # the kernel gets one multipath route of equally good BGP paths (ECMP)
    extra: str = ""            # more protocols, verbatim (e.g. "protocol bfd { }")

    def render(self) -> str:
        statics = "".join(f"  route {p} {via};\n" for p, via in self.static_routes)
        static_block = f"protocol static static_routes {{\n  ipv4;\n{statics}}}\n" if statics else ""
        statics6 = "".join(f"  route {p} {via};\n" for p, via in self.static_routes6)
        if statics6:
            static_block += f"protocol static static_routes6 {{\n  ipv6;\n{statics6}}}\n"
        kernel6 = ""
        if self.static_routes6 or any(n.family == "ipv6" for n in self.neighbors):
            kernel6 = """
protocol kernel kernel6 {
  scan time 5;
  ipv6 { import none; export filter { if source = RTS_BGP then accept; reject; }; };
}
"""
        merge = "\n  merge paths yes;" if self.merge_paths else ""
        return (f"""router id {self.router_id};
log stderr all;
protocol device {{ scan time 1; }}

protocol kernel {{
  scan time 5;{merge}
  ipv4 {{ import none; export filter {{ if source = RTS_BGP then accept; reject; }}; }};
}}
{kernel6}""" if self.kernel_export else f"""router id {self.router_id};
log stderr all;
protocol device {{ scan time 1; }}
""") + static_block + self.extra + "".join(n.render() for n in self.neighbors)


class Bird:
    def __init__(self, ns: Netns, workdir: str, config: BirdConfig):
        self.ns = ns
        self.dir = workdir
        self.config = config
        os.makedirs(workdir, exist_ok=True)
        self.conf = os.path.join(workdir, "bird.conf")
        self.sock = os.path.join(workdir, "bird.ctl")
        self.pidfile = os.path.join(workdir, "bird.pid")
        self.log = os.path.join(workdir, "bird.log")
        self.proc = None

    def start(self) -> None:
        with open(self.conf, "w") as f:
            f.write(self.config.render())
        self.proc = self.ns.popen(["bird", "-f", "-c", self.conf, "-s", self.sock, "-P", self.pidfile],
                                  log_path=self.log)
        wait_for(lambda: os.path.exists(self.sock) or self.proc.poll() is not None, 15,
                 what=f"BIRD control socket in {self.ns.name}")
        if self.proc.poll() is not None:
            raise LabError(f"BIRD in {self.ns.name} exited: {open(self.log).read()[-2000:]}")

    def reconfigure(self) -> None:
        with open(self.conf, "w") as f:
            f.write(self.config.render())
        self.birdc("configure")

    def birdc(self, *args: str) -> str:
        return run(["birdc", "-s", self.sock, *args], check=False, timeout=15).stdout

    def protocol_state(self, name: str) -> str:
        """BGP state of one protocol as BIRD shows it ("Established", "Active", ...)."""
        out = self.birdc("show", "protocols", name)
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == name:
                return parts[-1] if parts[-1] not in ("up", "start", "down") else parts[3]
        return "unknown"

    def established(self, name: str) -> bool:
        return "Established" in self.birdc("show", "protocols", name)

    def routes(self, protocol: str | None = None) -> list[str]:
        args = ["show", "route"] + (["protocol", protocol] if protocol else [])
        out = self.birdc(*args)
        return re.findall(r"^(\d+\.\d+\.\d+\.\d+/\d+|[0-9a-f:]*:[0-9a-f:]*/\d+)", out, re.M)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
