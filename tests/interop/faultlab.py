"""Helpers for the fault and hostile-input lab tests (test_faults.py, test_hostile.py).

Everything here acts from outside cgwd, the way an operator or an attacker could: raw packets
injected from the WAN namespace, tcpdump captures, iptables in the WAN or NAT router, the
control socket, the metrics endpoint, /proc of the cgwd process.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time

from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import Netns, run, wait_for

METRICS = "127.0.0.1:9474"


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return str(v)


def set_tunnel_keys(text: str, per_tunnel: list[dict]) -> str:
    """Set keys in the config's [[vpn.tunnel]] tables (the i-th dict for the i-th tunnel):
    an existing key's line is replaced, a missing one added after the tunnel's name."""
    head, *blocks = text.split("\n  [[vpn.tunnel]]\n")
    out = []
    for i, block in enumerate(blocks):
        for key, value in (per_tunnel[i] if i < len(per_tunnel) else {}).items():
            line = f"  {key} = {_toml(value)}"
            if re.search(rf"^  {key} = .*$", block, flags=re.M):
                block = re.sub(rf"^  {key} = .*$", line, block, count=1, flags=re.M)
            else:
                block = re.sub(r"^(  name = .*)$", lambda m: m.group(1) + "\n" + line, block, count=1, flags=re.M)
        out.append(block)
    return "\n  [[vpn.tunnel]]\n".join([head, *out])


def config(lab, *, dpd_interval: int | None = None, debug: bool = False, metrics: bool = False,
           tunnels: list[dict] | None = None) -> str:
    """The lab's AWS XML (IKEv2: JSON) imported by `cgwctl import aws`, with test settings
    edited in; ``tunnels``: keys to set per tunnel (see set_tunnel_keys)."""
    path = import_config(lab)
    text = open(path).read()
    if dpd_interval is not None:
        text = re.sub(r"dpd_interval = \d+", f"dpd_interval = {dpd_interval}", text)
    if tunnels:
        text = set_tunnel_keys(text, tunnels)
    daemon = []
    if debug:
        text = re.sub(r'log_level = "\w+"', 'log_level = "debug"', text)
    if metrics:
        daemon.append(f'metrics_listen = "{METRICS}"')
    if daemon:
        text = text.replace("[daemon]\n", "[daemon]\n" + "\n".join(daemon) + "\n", 1)
    with open(path, "w") as f:
        f.write(text)
    return path


def bring_up(lab, cfg: str, timeout: float = 90, env: dict | None = None):
    proc = start_cgwd(lab, cfg, extra_env=env)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), timeout, interval=0.5,
             what="cgwd tunnels + BGP + VPC route")
    assert proc.poll() is None, log_text(lab)[-3000:]
    return proc


def log_text(lab) -> str:
    with open(os.path.join(lab.workdir, "cgwd.log"), errors="replace") as f:
        return f.read()


def status(lab) -> dict:
    return cgwctl_status(lab, as_json=True)


def ctl(lab, *args) -> subprocess.CompletedProcess:
    return run(cgwctl_command(*args, "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)


def metrics(lab) -> str:
    code = ("import urllib.request,sys;"
            f"sys.stdout.write(urllib.request.urlopen('http://{METRICS}/metrics',timeout=10).read().decode())")
    return lab.cgw.run([sys.executable, "-c", code], timeout=30).stdout


def all_drops(st: dict) -> dict[str, int]:
    """Every drop counter cgwd reports, flattened: top level, per tunnel IKE, data path, SA."""
    out: dict[str, int] = {}

    def add(k, v):
        if isinstance(v, int) and v:
            out[k] = out.get(k, 0) + v

    for k, v in (st.get("drops") or {}).items():
        add(k, v)
    for t in st.get("tunnels") or []:
        for k, v in ((t.get("ike") or {}).get("counters") or {}).items():
            if k.startswith("drop_") or k in ("auth_failures",):
                add(f"ike_peer_{k.removeprefix('drop_')}", v)
        ip = t.get("ipsec") or {}
        for k, v in (ip.get("drops") or {}).items():
            add(f"esp_{k}", v)
        for sa in ip.get("sas") or []:
            add("esp_replay", sa.get("replay_drops", 0))
            add("esp_auth_failed", sa.get("auth_failures", 0))
            for k, v in (sa.get("drops") or {}).items():
                add(f"esp_{k}", v)
    return out


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def sa_identity(st: dict) -> dict:
    """What changes when a tunnel renegotiates or flaps: SPIs, IKE and BGP up-since times
    (whole seconds: the status converts monotonic times to wall clock on every call)."""
    def sec(x):
        return None if x is None else round(x)
    return {t["name"]: (sorted(sa["spi_in"] for sa in t["ipsec"]["sas"]), sec(t["ike"].get("established_at")),
                        sec(t["bgp"].get("uptime_since"))) for t in st["tunnels"]}


def proc_stats(pid: int) -> dict:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return {"fds": fds, "rss": rss}


# ----------------------------------------------------------------------------- raw packets

def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    from scapy.all import IP, UDP, Raw
    return bytes(IP(src=src, dst=dst, id=0) / UDP(sport=sport, dport=dport) / Raw(payload))


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, flags: str, payload: bytes, seq: int = 0) -> bytes:
    from scapy.all import IP, TCP, Raw
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq) / Raw(payload))


_SENDER = r"""
import socket, struct, sys, time
data = open(sys.argv[1], 'rb').read()
pps = float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
off = n = errors = 0
t0 = time.monotonic()
while off < len(data):
    (ln,) = struct.unpack_from('!H', data, off)
    pkt = data[off + 2: off + 2 + ln]
    off += 2 + ln
    dst = socket.inet_ntoa(pkt[16:20])
    try:
        s.sendto(pkt, (dst, 0))
    except OSError:
        errors += 1
    n += 1
    if pps:
        delay = t0 + n / pps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
print(n, errors, round(time.monotonic() - t0, 2))
"""


def inject(ns: Netns, packets: list[bytes], workdir: str, pps: float = 0) -> tuple[int, int, float]:
    """Send raw IPv4 packets (any source address) from namespace ``ns``; returns (sent, errors, seconds)."""
    path = os.path.join(workdir, f"inject-{time.monotonic_ns()}.bin")
    with open(path, "wb") as f:
        for p in packets:
            f.write(struct.pack("!H", len(p)) + p)
    out = ns.run([sys.executable, "-c", _SENDER, path, str(pps)], timeout=600).stdout.split()
    os.unlink(path)
    return int(out[0]), int(out[1]), float(out[2])


class Capture:
    """tcpdump in a namespace, written to a pcap in the lab's workdir."""

    def __init__(self, lab, ns: Netns, iface: str, bpf: str, name: str):
        self.path = os.path.join(lab.workdir, name)
        self.proc = ns.popen(["tcpdump", "-U", "-n", "-s", "0", "-i", iface, "-w", self.path, bpf],
                             log_path=self.path + ".log")
        lab.procs.append(self.proc)
        wait_for(lambda: "listening" in open(self.path + ".log", errors="replace").read(), 10,
                 what="tcpdump to start")

    def stop(self) -> list:
        from scapy.all import rdpcap
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            self.proc.wait(10)
        return list(rdpcap(self.path)) if os.path.getsize(self.path) > 24 else []


def ping_stats(lab, count: int, interval: float = 0.2) -> tuple[int, int]:
    """(sent, received) of a ping from on-prem to the VPC host."""
    p = lab.onprem.run(["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1", lab.spec.vpc_host],
                       check=False, timeout=count * interval + 30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", p.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (count, 0)


def ping_async(lab, count: int, interval: float = 0.2) -> subprocess.Popen:
    return subprocess.Popen(lab.onprem.cmd(["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1",
                                            lab.spec.vpc_host]), stdout=subprocess.PIPE, text=True)


def ping_result(p: subprocess.Popen) -> tuple[int, int]:
    out, _ = p.communicate(timeout=300)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# ----------------------------------------------------------------------------- secrets

def assert_no_secret(lab, extra_texts: list[str] = ()) -> int:
    """Search everything cgwd produced in this run for the PSKs; returns how many bytes were searched."""
    texts = [log_text(lab), json.dumps(status(lab)), cgwctl_status(lab), *extra_texts]
    searched = 0
    for text in texts:
        searched += len(text)
        for t in lab.tunnels:
            assert t.psk not in text, "a PSK leaked into cgwd's output"
            assert t.psk.encode().hex() not in text, "a PSK leaked (hex) into cgwd's output"
    return searched


# ----------------------------------------------------------------------------- precise pings

_PINGER = r"""
import json, os, select, signal, socket, struct, sys, time
dst, interval, src = sys.argv[1], float(sys.argv[2]), sys.argv[3]
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(time.monotonic()))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
if src:
    s.bind((src, 0))
ident = os.getpid() & 0xFFFF

def csum(b):
    if len(b) % 2:
        b += b"\0"
    n = sum(struct.unpack(f"!{len(b) // 2}H", b))
    n = (n >> 16) + (n & 0xFFFF)
    return ~(n + (n >> 16)) & 0xFFFF

sent, got = {}, {}
seq, nxt, end = 0, time.monotonic(), None
print("ready", flush=True)
while True:
    now = time.monotonic()
    if stop and end is None:
        end = now + 2.0  # the replies still on their way
    if end is not None and now >= end:
        break
    if end is None and now >= nxt:
        body = struct.pack("!Qd", seq, now) + b"cgwd-lab" * 4
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
        pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, seq & 0xFFFF) + body
        try:
            s.sendto(pkt, (dst, 0))
        except OSError:
            pass  # no route (fail closed): counted as lost
        sent[seq] = now
        seq += 1
        nxt += interval
        if nxt < now - 1:  # we were not scheduled for a while: do not burst
            nxt = now + interval
    wake = end if end is not None else nxt
    r, _, _ = select.select([s], [], [], max(0.0, wake - time.monotonic()))
    while r:
        try:
            data = s.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        ihl = (data[0] & 0x0F) * 4
        icmp = data[ihl:]
        if len(icmp) >= 24 and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident:
            (n,) = struct.unpack("!Q", icmp[8:16])
            got.setdefault(n, time.monotonic())
lost = [n for n in sent if n not in got]
print(json.dumps({"sent": len(sent), "received": len([n for n in got if n in sent]),
                  "lost_at": [sent[n] for n in lost][:5000],
                  "rtt_max": max((got[n] - sent[n] for n in got if n in sent), default=0.0)}), flush=True)
"""


class Pinger:
    """ICMP echo from a namespace every ``interval`` seconds until stop(); each request's
    send time is kept (CLOCK_MONOTONIC, the test's clock too), so losses can be placed next
    to the faults. Unlike ping(8) stopped by a signal, a request in flight at the end is
    waited for, not counted lost."""

    def __init__(self, lab, ns: Netns, dst: str, *, interval: float = 0.2, src: str = "", name: str = "ping"):
        self.name = name
        self.path = os.path.join(lab.workdir, f"pinger-{name}-{time.monotonic_ns()}.out")
        self.proc = ns.popen([sys.executable, "-c", _PINGER, dst, str(interval), src], log_path=self.path)
        lab.procs.append(self.proc)
        wait_for(lambda: "ready" in open(self.path).read() or self.proc.poll() is not None, 10,
                 what=f"pinger {name} to start")
        self.result: dict | None = None

    def stop(self) -> dict:
        """{'sent', 'received', 'lost', 'lost_at': [monotonic send times], 'rtt_max'}"""
        if self.result is None:
            if self.proc.poll() is None:
                self.proc.terminate()
            self.proc.wait(30)
            lines = [ln for ln in open(self.path).read().splitlines() if ln.startswith("{")]
            assert lines, f"pinger {self.name} printed no result: {open(self.path).read()[-2000:]}"
            self.result = json.loads(lines[-1])
            self.result["lost"] = self.result["sent"] - self.result["received"]
        return self.result


def gaps(lost_at: list[float], interval: float) -> list[tuple[float, float]]:
    """Runs of consecutive lost requests as (first send time, seconds without replies)."""
    out: list[tuple[float, float]] = []
    for t in sorted(lost_at):
        if out and t - (out[-1][0] + out[-1][1]) <= interval * 1.5:
            out[-1] = (out[-1][0], t - out[-1][0] + interval)
        else:
            out.append((t, interval))
    return out


# ----------------------------------------------------------------------------- wall clock

class WallClock:
    """A wall clock of cgwd's own (tests/interop/wallclock/sitecustomize.py): ``env`` goes to
    start_cgwd, ``step(seconds)`` moves cgwd's time.time() while it runs; the machine's clock
    and every monotonic clock are untouched (CLOCK_REALTIME cannot be set per namespace, and
    stepping the host's would disturb everything else on it)."""

    def __init__(self, lab):
        self.path = os.path.join(lab.workdir, "wallclock.offset")
        self.offset = 0.0
        self._write()
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wallclock")
        self.env = {"CGWD_FAKE_WALL_CLOCK": self.path,
                    "PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}

    def _write(self) -> None:
        with open(self.path, "r+b" if os.path.exists(self.path) else "wb") as f:
            f.write(struct.pack("d", self.offset))

    def step(self, seconds: float) -> None:
        self.offset += seconds
        self._write()
