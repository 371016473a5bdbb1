"""IKEv2 interop support (no tests here): the two-namespace lab of ``ike_fixtures`` with
strongSwan configured as an AWS IKEv2 endpoint, and the runner that drives one
:class:`Ikev2Peer` through :class:`IkeEndpoint` inside our namespace (without the daemon).

Run as a script it is the runner: ``python test_ikev2_support.py CONFIG.json`` prints one JSON
object per line: events ({"event": ...}) and, every half second and at exit,
{"status": peer.status()}. A line on stdin "rekey_ipsec" / "rekey_ike" / "stop" / "start"
calls the operator API.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from ike_fixtures import PYTHON, REPO, SW_ADDR, US_ADDR, IkeLab  # noqa: E402

RUNNER = Path(__file__).resolve()
PSK = "interop-ikev2-psk-0123456789"

# strongSwan's names of the algorithms of our proposal strings
SWAN_IKE = {
    "aes128-sha1-modp1024": "AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024",
    "aes256-sha256-modp2048": "AES_CBC-256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
    "aes256-sha384-ecp384": "AES_CBC-256/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/ECP_384",
    "aes256-sha512-ecp521": "AES_CBC-256/HMAC_SHA2_512_256/PRF_HMAC_SHA2_512/ECP_521",
    "aes128-sha256-modp2048s256": "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048_256",
    "aes128-sha1-modp1536": "AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1536",
    "aes128gcm16-prfsha256-ecp256": "AES_GCM_16-128/PRF_HMAC_SHA2_256/ECP_256",
    "aes256gcm16-prfsha384-ecp384": "AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_384",
    "aes256gcm16-prfsha512-modp4096": "AES_GCM_16-256/PRF_HMAC_SHA2_512/MODP_4096",
    "aes128-sha1-modp2048": "AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_2048",
}
SWAN_ESP = {
    "aes128-sha1-modp1024": "AES_CBC-128/HMAC_SHA1_96",
    "aes128-sha1": "AES_CBC-128/HMAC_SHA1_96",
    "aes256-sha256-modp2048": "AES_CBC-256/HMAC_SHA2_256_128",
    "aes256-sha384-ecp384": "AES_CBC-256/HMAC_SHA2_384_192",
    "aes256-sha512-modp1536": "AES_CBC-256/HMAC_SHA2_512_256",
    "aes128gcm16-modp2048": "AES_GCM_16-128",
    "aes256gcm16-ecp256": "AES_GCM_16-256",
    "aes256gcm16": "AES_GCM_16-256",
}


@dataclass
class SwanV2:
    """An AWS-like strongSwan IKEv2 connection."""

    proposals: str = "aes128-sha1-modp1024"
    esp_proposals: str = "aes128-sha1-modp1024"
    psk: str = PSK
    encap: bool = True
    dpd_delay: str = "10s"
    ike_rekey_time: str = "28800s"
    rekey_time: str = "3600s"
    life_time: str = ""
    rand_time: str = ""
    start_action: str = "none"
    dpd_action: str = "clear"
    mobike: bool = False
    local_id: str = SW_ADDR
    remote_id: str = US_ADDR
    remote_addrs: str = US_ADDR
    extra_conn: str = ""


US_PRIVATE = "192.168.1.10"  # our outside address behind the NAT router (seed 003's layout)
NAT_INSIDE = "192.168.1.1"


class Ikev2Lab(IkeLab):
    """``ike_fixtures.IkeLab`` (namespaces, veth, charon, teardown) with IKEv2 configurations and
    our IKEv2 runner; namespaces ``ik2-*``. ``nat=True`` puts us behind a NAT router: our
    namespace has 192.168.1.10, the router masquerades it as 192.0.2.1 towards strongSwan."""

    def __init__(self, nat: bool = False) -> None:
        super().__init__()
        tag = self.tag
        self.nat = nat
        self.ns_sw = f"ik2-sw-{tag}"
        self.ns_us = f"ik2-us-{tag}"
        self.ns_nat = f"ik2-nat-{tag}"
        self.veth_sw = f"ik2{tag}a"
        self.veth_us = f"ik2{tag}b"
        self.veth_in = f"ik2{tag}c"
        self.veth_in_peer = f"ik2{tag}d"
        self.pcap: subprocess.Popen | None = None

    @property
    def our_address(self) -> str:
        return US_PRIVATE if self.nat else US_ADDR

    def setup(self) -> None:
        if not self.nat:
            super().setup()
            return
        from ike_fixtures import sh

        for ns in (self.ns_sw, self.ns_nat, self.ns_us):
            sh("ip", "netns", "add", ns)
            self._created_ns.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # strongSwan <-> NAT router (public side, 192.0.2.1)
        sh("ip", "link", "add", self.veth_sw, "type", "veth", "peer", "name", self.veth_us)
        sh("ip", "link", "set", self.veth_sw, "netns", self.ns_sw)
        sh("ip", "link", "set", self.veth_us, "netns", self.ns_nat)
        sh("ip", "-n", self.ns_sw, "addr", "add", f"{SW_ADDR}/24", "dev", self.veth_sw)
        sh("ip", "-n", self.ns_nat, "addr", "add", f"{US_ADDR}/24", "dev", self.veth_us)
        # NAT router <-> us (private side)
        sh("ip", "link", "add", self.veth_in, "type", "veth", "peer", "name", self.veth_in_peer)
        sh("ip", "link", "set", self.veth_in, "netns", self.ns_nat)
        sh("ip", "link", "set", self.veth_in_peer, "netns", self.ns_us)
        sh("ip", "-n", self.ns_nat, "addr", "add", f"{NAT_INSIDE}/24", "dev", self.veth_in)
        sh("ip", "-n", self.ns_us, "addr", "add", f"{US_PRIVATE}/24", "dev", self.veth_in_peer)
        for ns, dev in ((self.ns_sw, self.veth_sw), (self.ns_nat, self.veth_us), (self.ns_nat, self.veth_in),
                        (self.ns_us, self.veth_in_peer)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", self.ns_us, "route", "add", "default", "via", NAT_INSIDE)
        sh("ip", "netns", "exec", self.ns_nat, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", self.ns_nat, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", self.veth_us,
           "-j", "MASQUERADE")


    def write_swanctl(self, conn: SwanV2) -> None:
        child_extra = "\n".join(x for x in (
            f"life_time = {conn.life_time}" if conn.life_time else "",
            f"rand_time = {conn.rand_time}" if conn.rand_time else "",
        ) if x)
        (self.dir / "swanctl.conf").write_text(f"""connections {{
    aws {{
        version = 2
        local_addrs = {SW_ADDR}
        remote_addrs = {conn.remote_addrs}
        proposals = {conn.proposals}
        encap = {"yes" if conn.encap else "no"}
        mobike = {"yes" if conn.mobike else "no"}
        dpd_delay = {conn.dpd_delay}
        rekey_time = {conn.ike_rekey_time}
        reauth_time = 0
        {conn.extra_conn}
        local {{
            auth = psk
            id = {conn.local_id}
        }}
        remote {{
            auth = psk
            id = {conn.remote_id}
        }}
        children {{
            vpn {{
                local_ts = 0.0.0.0/0
                remote_ts = 0.0.0.0/0
                esp_proposals = {conn.esp_proposals}
                rekey_time = {conn.rekey_time}
                {child_extra}
                dpd_action = {conn.dpd_action}
                start_action = {conn.start_action}
            }}
        }}
    }}
}}
secrets {{
    ike-aws {{
        id-1 = {conn.local_id}
        id-2 = {conn.remote_id}
        secret = "{conn.psk}"
    }}
}}
""")

    def start_runner(self, config: dict, *, start: bool = True) -> None:
        cfg = self.dir / "runner.json"
        cfg.write_text(json.dumps({"peer": config, "start": start}))
        self.runner = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_us, PYTHON, str(RUNNER), str(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.dir / "runner.stderr", "w"),
            text=True,
            start_new_session=True,
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        os.set_blocking(self.runner.stdout.fileno(), False)

    def command(self, line: str) -> None:
        assert self.runner is not None and self.runner.stdin is not None
        self.runner.stdin.write(line + "\n")
        self.runner.stdin.flush()

    def status(self) -> dict:
        lines = [e for e in self.runner_events() if "status" in e]
        return lines[-1]["status"] if lines else {}

    def events(self, name: str) -> list[dict]:
        return [e for e in self.runner_events() if e.get("event") == name]

    def capture(self, path: Path, filt: str = "udp port 500 or udp port 4500") -> None:
        self.pcap = subprocess.Popen(["ip", "netns", "exec", self.ns_sw, "tcpdump", "-U", "-n", "-i", self.veth_sw,
                                      "-w", str(path), filt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)

    def stop_capture(self) -> None:
        if self.pcap is not None:
            time.sleep(0.5)
            self.pcap.terminate()
            self.pcap.wait(5)
            self.pcap = None

    def close(self) -> None:
        self.stop_capture()
        super().close()
        from ike_fixtures import sh

        for ns in (self.ns_nat,):
            sh("ip", "netns", "del", ns, check=False)
        for v in (self.veth_in, self.veth_in_peer):
            sh("ip", "link", "del", v, check=False)

    def kill_runner(self) -> None:
        """SIGKILL our engine (an endpoint restart loses all state)."""
        import signal

        if self.runner is not None and self.runner.poll() is None:
            os.killpg(self.runner.pid, signal.SIGKILL)
            self.runner.wait(5)
        self.runner_lines = []  # the next runner's lines only (status() must not see the old one)

    def kill_charon(self) -> None:
        import signal

        if self.charon is not None and self.charon.poll() is None:
            os.killpg(self.charon.pid, signal.SIGKILL)
            self.charon.wait(5)


def our_peer(ike: str = "aes128-sha1-modp1024", esp: str = "aes128-sha1-modp1024", **kw) -> dict:
    cfg = {"local_address": US_ADDR, "remote_address": SW_ADDR, "psk": PSK,
           "ike_proposals": [ike], "esp_proposals": [esp], "local_id": US_ADDR}
    cfg.update(kw)
    return cfg


def parse_v2(text: str) -> dict:
    """`swanctl --list-sas` for one IKEv2 SA and its CHILD_SAs: SPIs with their ``_i``/``_r``
    and ``*`` (local) marks, algorithms, child SPIs and states."""
    out: dict = {"ike": [], "children": []}
    cur_child = None
    for line in text.splitlines():
        m = re.match(r"^(\S+): #(\d+), (\w+), IKEv(\d), ([0-9a-f]{16})_i(\*?) ([0-9a-f]{16})_r(\*?)", line)
        if m:
            out["ike"].append({"name": m.group(1), "state": m.group(3), "version": int(m.group(4)),
                               "spi_i": m.group(5), "spi_r": m.group(7),
                               "local": "i" if m.group(6) else ("r" if m.group(8) else None)})
            cur_child = None
            continue
        m = re.match(r"^\s+(AES_\S+)\s*$", line)
        if m and out["ike"] and "algorithms" not in out["ike"][-1]:
            out["ike"][-1]["algorithms"] = m.group(1)
            continue
        m = re.match(r"^\s+(\S+): #(\d+), reqid \d+, (\w+), (\S+), ESP:(\S+)", line)
        if m:
            cur_child = {"name": m.group(1), "state": m.group(3), "mode": m.group(4), "algorithms": m.group(5)}
            out["children"].append(cur_child)
            continue
        m = re.match(r"^\s+(in|out)\s+([0-9a-f]{8})", line)
        if m and cur_child is not None:
            cur_child[f"spi_{m.group(1)}"] = m.group(2)
    return out


def established(lab: Ikev2Lab) -> dict | None:
    s = parse_v2(lab.list_sas())
    if any(i["state"] == "ESTABLISHED" for i in s["ike"]) and any(c["state"] == "INSTALLED" for c in s["children"]):
        return s
    return None


def wait_up(lab: Ikev2Lab, timeout: float = 30) -> dict:
    lab.wait_for(lambda: established(lab) is not None and lab.status().get("state") == "established"
                 and any(x["state"] == "installed" for x in lab.status().get("ipsec_sas", [])),
                 timeout, "IKEv2 SA + CHILD SA at both ends")
    return parse_v2(lab.list_sas())


# --------------------------------------------------------------------------- the runner


def _describe(ev) -> dict:
    from cgwd.ike.events import IpsecSaDown, IpsecSaUp, NatDetected, PeerDead, Phase1Down, Phase1Up

    if isinstance(ev, IpsecSaUp):
        p = ev.pair
        return {"event": "IpsecSaUp", "spi_in": f"{p.spi_in:08x}", "spi_out": f"{p.spi_out:08x}",
                "encryption": p.encryption, "integrity": p.integrity, "udp_encap": p.udp_encap,
                "pfs_group": p.pfs_group, "initiator": ev.initiator,
                "replaces": None if p.replaces_spi_in is None else f"{p.replaces_spi_in:08x}",
                "remote_port": p.remote_port}
    if isinstance(ev, IpsecSaDown):
        return {"event": "IpsecSaDown", "spi_in": f"{ev.spi_in:08x}", "spi_out": f"{ev.spi_out:08x}",
                "reason": ev.reason}
    if isinstance(ev, Phase1Up):
        return {"event": "Phase1Up", "algorithms": ev.algorithms}
    if isinstance(ev, Phase1Down):
        return {"event": "Phase1Down", "reason": ev.reason}
    if isinstance(ev, NatDetected):
        return {"event": "NatDetected", "local": ev.local_behind_nat, "peer": ev.peer_behind_nat}
    if isinstance(ev, PeerDead):
        return {"event": "PeerDead"}
    return {"event": repr(ev)}


async def _run(path: str) -> None:
    import logging
    import signal

    from cgwd.ike.endpoint import IkeEndpoint
    from cgwd.ike.v2.peer import Ikev2Peer, Ikev2PeerConfig

    def out(obj: dict) -> None:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    cfg = json.load(open(path))
    pc = dict(cfg["peer"])
    pc["psk"] = pc["psk"].encode()
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    peer = Ikev2Peer(Ikev2PeerConfig(**pc), name="interop")
    ep = IkeEndpoint(pc["local_address"])
    ep.event_handler = lambda p, ev: out(_describe(ev))
    esp_seen = {"n": 0}

    def on_esp(data: bytes, remote) -> None:
        # ESP from the peer: liveness, as the daemon feeds it from the data path
        esp_seen["n"] += 1
        peer.peer_alive(ep.now())

    ep.esp_handler = on_esp
    ep.open()
    ep.add_peer(peer)
    if cfg.get("start", True):
        ep.start_peer(peer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def on_stdin() -> None:
        line = sys.stdin.readline().strip()
        now = ep.now()
        if line == "rekey_ipsec":
            peer.rekey_ipsec(now)
        elif line == "rekey_ike":
            peer.rekey_ike(now)
        elif line == "stop":
            peer.stop(now)
        elif line == "start":
            peer.start(now)
        elif not line:
            loop.remove_reader(sys.stdin.fileno())
            return
        ep.service(peer)

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    while not stop.is_set():
        out({"status": peer.status(), "endpoint": ep.counters, "esp": esp_seen["n"]})
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    ep.stop_peer(peer)
    await asyncio.sleep(0.2)
    out({"status": peer.status(), "endpoint": ep.counters, "final": True})
    ep.close()


if __name__ == "__main__":
    asyncio.run(_run(sys.argv[1]))
