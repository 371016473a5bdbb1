"""A static-routing VPN connection in the lab: no BGP anywhere; AWS's side is strongSwan only.

cgwd is configured from the lab's static XML (`cgwctl import aws --static-route`). AWS's side
routes the on-prem prefix into its tunnels and sends to on-prem through tunnel 2 while it is
up (AWS picks the tunnel), so with tunnel 1 carrying cgwd's routes every reply comes back on
the other tunnel: the customer namespace has strict reverse-path filtering, and that traffic
must still arrive. Plaintext to the VPC leaving the outside interface is counted by iptables
in the customer (and NAT) namespace: it must stay at zero through failover, recovery and a
total outage.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for

pytestmark = pytest.mark.interop

HOLD_DOWN = 12
LEAK = "cgwd-test-plaintext"


def _config(lab) -> str:
    path = import_config(lab)
    text = open(path).read()
    text = text.replace('gateway_type = "vgw"\n', f'gateway_type = "vgw"\nstatic_hold_down = {HOLD_DOWN}\n', 1)
    text = re.sub(r"dpd_interval = \d+", "dpd_interval = 2", text)  # faster than AWS's 10 s x 3
    with open(path, "w") as f:
        f.write(text)
    return path


def count_plaintext(lab, prefix: str | None = None) -> None:
    """iptables rules that count packets for the VPC (or ``prefix``) leaving the gateway's
    outside interface (and, behind NAT, the NAT router's) unencrypted."""
    vpc = prefix or lab.spec.vpc_cidr
    for chain in ("FORWARD", "OUTPUT"):
        lab.cgw.run(["iptables", "-I", chain, "-o", "wan0", "-d", vpc, "-m", "comment", "--comment", LEAK])
    if lab.nat:
        lab.nat.run(["iptables", "-I", "FORWARD", "-d", vpc, "-m", "comment", "--comment", LEAK])


def plaintext(lab) -> int:
    n = 0
    for ns in (lab.cgw, lab.nat) if lab.nat else (lab.cgw,):
        for chain in ("FORWARD", "OUTPUT"):
            out = ns.run(["iptables", "-L", chain, "-v", "-n", "-x"], check=False).stdout
            n += sum(int(line.split()[0]) for line in out.splitlines() if LEAK in line)
    return n


def vpc_ping(lab, count: int = 3) -> bool:
    """From the VPC host to the on-prem host (the VPC's own address as source)."""
    p = lab.vpc.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", "-I", lab.spec.vpc_host,
                     lab.spec.onprem_host], check=False, timeout=30)
    m = re.search(r"(\d+) received", p.stdout)
    return bool(m) and int(m.group(1)) == count


def static_state(lab, i: int) -> str | None:
    ts = cgwctl_status(lab, as_json=True).get("tunnels") or []
    return ts[i].get("static", {}).get("state") if len(ts) > i else None


def via(lab) -> str | None:
    m = re.search(r"via (169\.254\.\d+\.1)", lab.cgw_routes())
    return m.group(1) if m else None


def cut(lab, t) -> None:
    lab.wan.run(["iptables", "-I", "FORWARD", "-d", t.aws_outside, "-j", "DROP"])
    lab.wan.run(["iptables", "-I", "FORWARD", "-s", t.aws_outside, "-j", "DROP"])


def mend(lab, t) -> None:
    lab.wan.run(["iptables", "-D", "FORWARD", "-d", t.aws_outside, "-j", "DROP"])
    lab.wan.run(["iptables", "-D", "FORWARD", "-s", t.aws_outside, "-j", "DROP"])


# --------------------------------------------------------------- what the static tests measure
class RouteMonitor:
    """`ip monitor route` in the customer namespace: every change of the kernel's route to one
    prefix through a tunnel (cgwd's fail-closed ``unreachable`` routes left out), with the
    kernel's timestamps: a route that moved and moved back within a sample is still seen."""

    def __init__(self, lab, prefix: str | None = None):
        self.lab, self.prefix = lab, prefix or lab.spec.vpc_cidr
        self.path = os.path.join(lab.workdir, f"route-monitor-{time.monotonic_ns()}.log")
        with open(self.path, "wb") as out:
            self.proc = subprocess.Popen(["ip", "-n", lab.cgw.name, "-ts", "monitor", "route"], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        lab.procs.append(self.proc)
        time.sleep(0.3)                   # subscribed before anything moves

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(5)

    def changes(self) -> list[tuple[float, str | None]]:
        """[(Unix time, the AWS inside address the route goes via, or None: deleted)]."""
        out = []
        with open(self.path, errors="replace") as f:
            for line in f:
                m = re.match(r"\[(\S+)\] (Deleted )?(\S+) (.*)", line)
                if not m or m.group(3) != self.prefix or "unreachable" in line:
                    continue
                ts = datetime.datetime.fromisoformat(m.group(1)).timestamp()
                hop = re.search(r"via (\S+)", m.group(4))
                out.append((ts, None if m.group(2) else (hop.group(1) if hop else None)))
        return out


def moves(changes: list[tuple[float, str | None]]) -> list[str]:
    """The tunnels (next hops) the route went to, in order: cgwd changes a route by deleting
    its own and adding the new one in one netlink batch (never NLM_F_REPLACE: another daemon's
    route is left alone), so a deletion followed by an add is one move."""
    out: list[str] = []
    for _ts, hop in changes:
        if hop is not None and (not out or out[-1] != hop):
            out.append(hop)
    return out


def replace_gaps(changes: list[tuple[float, str | None]]) -> list[float]:
    """Seconds between each deletion of the route and the add that followed it (while the
    fail-closed unreachable route was the only one)."""
    return [b[0] - a[0] for a, b in zip(changes, changes[1:]) if a[1] is None and b[1] is not None]


class Pinger:
    """A ping every 0.1 s from the on-prem host to the VPC host (``ping -D -O``: the time of
    every reply, and every request without one)."""

    def __init__(self, lab, dst: str | None = None, interval: float = 0.1):
        self.path = os.path.join(lab.workdir, f"ping-{time.monotonic_ns()}.log")
        self.proc = lab.onprem.popen(["ping", "-D", "-O", "-n", "-i", str(interval), "-W", "1",
                                      dst or lab.spec.vpc_host], log_path=self.path)
        lab.procs.append(self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(10)

    def replies(self) -> dict[int, float]:
        """icmp_seq -> when its reply came (Unix time)."""
        out = {}
        with open(self.path, errors="replace") as f:
            for line in f:
                m = re.match(r"\[(\d+\.\d+)\] \d+ bytes from .* icmp_seq=(\d+)", line)
                if m:
                    out.setdefault(int(m.group(2)), float(m.group(1)))
        return out

    def sent(self) -> int:
        with open(self.path, errors="replace") as f:
            seqs = [int(m.group(1)) for m in re.finditer(r"icmp_seq=(\d+)", f.read())]
        return max(seqs, default=0)

    def outage_after(self, t: float) -> tuple[int, float | None]:
        """(requests lost after ``t``, when replies came back after the first loss) — (0, None)
        when nothing was lost."""
        replies = self.replies()
        last = self.sent()
        before = [s for s, ts in replies.items() if ts <= t]
        first = max(before, default=0) + 1
        lost = [s for s in range(first, last + 1) if s not in replies]
        if not lost:
            return 0, None
        back = min((replies[s] for s in replies if s > lost[0]), default=None)
        return len(lost), back

    def lost_between(self, a: float, b: float) -> int:
        """Requests without a reply after the last one answered by ``a``, up to the last one
        answered by ``b`` (by sequence numbers)."""
        replies = self.replies()
        left = max((s for s, ts in replies.items() if ts <= a), default=0)
        right = max((s for s, ts in replies.items() if ts <= b), default=0)
        return sum(1 for s in range(left + 1, right + 1) if s not in replies)


class LogWatch:
    """When lines matching each pattern first appeared in cgwd's log (polled every 50 ms: the
    log's own timestamps have whole seconds)."""

    def __init__(self, lab, patterns: dict[str, str]):
        self.path = os.path.join(lab.workdir, "cgwd.log")
        self.patterns = {k: re.compile(v) for k, v in patterns.items()}
        self.seen: dict[str, float] = {}
        self.lines: dict[str, str] = {}
        self._stop = threading.Event()
        with open(self.path, errors="replace") as f:
            f.seek(0, os.SEEK_END)
            self._pos = f.tell()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = ""
        while not self._stop.wait(0.05):
            with open(self.path, errors="replace") as f:
                f.seek(self._pos)
                buf += f.read()
                self._pos = f.tell()
            *done, buf = buf.split("\n")
            now = time.time()
            for line in done:
                for k, rx in self.patterns.items():
                    if k not in self.seen and rx.search(line):
                        self.seen[k], self.lines[k] = now, line

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def set_options(path: str, **vpn_keys) -> None:
    """Add VPN-level keys after ``gateway_type`` and tunnel keys (``dpd_interval=...``) where
    the import wrote them, in an imported config."""
    text = open(path).read()
    tunnel_keys = {k: vpn_keys.pop(k) for k in ("dpd_interval", "dpd_retries", "dpd_action") if k in vpn_keys}
    for k, v in tunnel_keys.items():
        line = f"{k} = {v if isinstance(v, int) else chr(34) + v + chr(34)}"
        text, n = re.subn(rf"^(\s*){k} = .*$", rf"\g<1>{line}", text, flags=re.M)
        if not n:
            text = re.sub(r"^(\s*)dpd_interval = (.*)$", rf"\g<0>\n\g<1>{line}", text, flags=re.M)
    extra = "".join(f"{k} = {v}\n" for k, v in vpn_keys.items())
    text = re.sub(r'^gateway_type = "(\w+)"\n', lambda m: m.group(0) + extra, text, count=1, flags=re.M)
    with open(path, "w") as f:
        f.write(text)


@pytest.mark.parametrize("nat", [False, True], ids=["direct", "behind-nat"])
def test_static_vpn_failover_hold_down_and_no_plaintext(lab_factory, nat):
    lab = lab_factory(static=True, nat=nat)
    t1, t2 = lab.tunnels
    for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
        lab.cgw.sysctl(key, "1")        # strict, as RHEL and Amazon Linux ship
    count_plaintext(lab)
    config = _config(lab)
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5, what="both tunnels, static routes")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    st = cgwctl_status(lab, as_json=True)
    assert [t["bgp"]["state"] for t in st["tunnels"]] == ["disabled", "disabled"]
    assert [t["static"]["state"] for t in st["tunnels"]] == ["up", "up"]
    assert st["vpns"][0]["routing"] == "static" and st["vpns"][0]["carriers"] == {lab.spec.vpc_cidr: [st["tunnels"][0]["name"]]}
    assert via(lab) == t1.aws_inside                        # tunnel 1 carries the static route
    assert "unreachable 10.100.0.0/16 proto 157 metric 1100" in lab.cgw_unreachable()
    assert not (t1.bird or t2.bird)                         # no BGP on AWS's side
    # traffic both ways; AWS answers through tunnel 2 (asymmetric), rp_filter lets it in
    wait_for(lambda: lab.aws_return_via == "aws2", 20, what="AWS's side to route on-prem via tunnel 2")
    lab.wait_ping(20)
    assert lab.ping(5) and vpc_ping(lab, 5)
    st = cgwctl_status(lab, as_json=True)
    assert st["tunnels"][1]["ipsec"]["packets_in"] > 0 and st["tunnels"][0]["ipsec"]["packets_out"] > 0
    # tunnel 1's endpoint vanishes: DPD declares it dead, the routes move at once
    cut(lab, t1)
    wait_for(lambda: via(lab) == t2.aws_inside, 30, interval=0.2, what="the static route to move to tunnel 2")
    assert static_state(lab, 0) == "down"
    wait_for(lambda: lab.ping(1, timeout=1), 20, interval=0.5, what="traffic over tunnel 2")
    assert vpc_ping(lab)
    # tunnel 1 returns: the routes move back only after the hold-down
    mend(lab, t1)
    wait_for(lambda: static_state(lab, 0) in ("hold-down", "up"), 90, interval=0.3, what="tunnel 1 back")
    samples = 0
    while static_state(lab, 0) == "hold-down":
        r = via(lab)
        if static_state(lab, 0) == "hold-down":
            assert r == t2.aws_inside, "routes moved to a returning tunnel during its hold-down"
            samples += 1
    assert samples >= 1, "the returning tunnel never went through its hold-down"
    wait_for(lambda: via(lab) == t1.aws_inside, 10, interval=0.2, what="routes back on tunnel 1")
    assert lab.ping(3) and vpc_ping(lab)
    # both endpoints gone: the VPC prefix is unreachable, nothing leaves in cleartext
    cut(lab, t1)
    cut(lab, t2)
    wait_for(lambda: via(lab) is None, 30, interval=0.2, what="no tunnel to carry the static route")
    assert lab.cgw_unreachable()
    assert not lab.ping(3, timeout=1)
    st = cgwctl_status(lab, as_json=True)
    assert st["vpns"][0]["carriers"] == {lab.spec.vpc_cidr: []} and st["vpns"][0]["unreachable"] == [lab.spec.vpc_cidr]
    assert plaintext(lab) == 0, "plaintext for the VPC left the gateway"
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log
    assert proc.poll() is None
