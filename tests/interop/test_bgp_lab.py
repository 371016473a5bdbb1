"""Namespaces, veths and peers (BIRD, GoBGP) for the BGP interop tests (names bgpit-*).

Helpers only (no tests); also used by bench/bgp_ingest.py.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PY = sys.executable
RUNNER = ["-m", "cgwd.bgp.standalone"]


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def nsexec(ns, *args, check=True, **kw):
    return sh("ip", "netns", "exec", ns, *args, check=check, **kw)


def wait_for(pred, timeout, interval=0.2, what="condition"):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Lab:
    """cgw namespace + one namespace per AWS endpoint, joined by veths."""

    def __init__(self, tag: str, n_links: int = 2):
        self.tag = tag
        self.cgw = f"bgpit-{tag}-cgw"
        self.peers = [f"bgpit-{tag}-aws{i + 1}" for i in range(n_links)]
        self.tmp = tempfile.mkdtemp(prefix=f"bgpit-{tag}-")
        self.procs: list[subprocess.Popen] = []
        self.links = []
        for i in range(n_links):
            base = 10 + i
            self.links.append({"name": f"tun{i + 1}", "ifname": f"bgpv{i + 1}",
                               "local": f"169.254.{base}.2", "remote": f"169.254.{base}.1",
                               "peer_ns": self.peers[i]})

    def __enter__(self):
        self.cleanup_namespaces()
        sh("ip", "netns", "add", self.cgw)
        nsexec(self.cgw, "ip", "link", "set", "lo", "up")
        for i, (ns, l) in enumerate(zip(self.peers, self.links)):
            sh("ip", "netns", "add", ns)
            nsexec(ns, "ip", "link", "set", "lo", "up")
            a, b = f"bgpit{self.tag[:3]}{i}a", f"bgpit{self.tag[:3]}{i}b"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", self.cgw)
            sh("ip", "link", "set", b, "netns", ns)
            nsexec(self.cgw, "ip", "link", "set", a, "name", l["ifname"])
            nsexec(self.cgw, "ip", "addr", "add", l["local"] + "/30", "dev", l["ifname"])
            nsexec(self.cgw, "ip", "link", "set", l["ifname"], "up")
            nsexec(ns, "ip", "link", "set", b, "name", "aws0")
            nsexec(ns, "ip", "addr", "add", l["remote"] + "/30", "dev", "aws0")
            nsexec(ns, "ip", "link", "set", "aws0", "up")
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
        self.cleanup_namespaces()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cleanup_namespaces(self):
        for ns in [self.cgw] + self.peers:
            if os.path.exists(f"/run/netns/{ns}"):
                # kill anything still running in it (only our own test peers run there)
                pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                sh("ip", "netns", "del", ns, check=False)

    # ------------------------------------------------------------ peers
    def start_bird(self, i: int, *, local_as=64512, remote_as=65000, prepend=0, med=None,
                   static=("10.100.0.0/16",), hold=30, keepalive=10, extra_static_file=None):
        l = self.links[i]
        d = os.path.join(self.tmp, f"bird{i}")
        os.makedirs(d, exist_ok=True)
        exp = []
        for _ in range(prepend):
            exp.append(f"bgp_path.prepend({local_as});")
        if med is not None:
            exp.append(f"bgp_med = {med};")
        statics = "\n".join(f"    route {p} blackhole;" for p in static)
        include = f'include "{extra_static_file}";' if extra_static_file else ""
        conf = f"""
router id {l['remote']};
log "{d}/bird.log" all;
protocol device {{ }}
protocol static vpc {{
    ipv4;
{statics}
    {include}
}}
protocol bgp cgw {{
    local {l['remote']} as {local_as};
    neighbor {l['local']} as {remote_as};
    hold time {hold};
    keepalive time {keepalive};
    connect retry time 2;
    error wait time 1, 5;
    graceful restart on;
    debug {{ states, events, packets }};
    ipv4 {{
        import all;
        export filter {{ if proto = "vpc" then {{ {' '.join(exp)} accept; }} reject; }};
    }};
}}
"""
        cf = os.path.join(d, "bird.conf")
        with open(cf, "w") as f:
            f.write(conf)
        sock = os.path.join(d, "bird.ctl")
        p = subprocess.Popen(["ip", "netns", "exec", l["peer_ns"], "bird", "-f", "-c", cf, "-s", sock,
                              "-P", os.path.join(d, "bird.pid")],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "bird.err"), "w"))
        self.procs.append(p)
        wait_for(lambda: os.path.exists(sock), 10, what="bird control socket")
        l["bird_sock"] = sock
        l["bird_proc"] = p
        return p

    def birdc(self, i: int, *cmd) -> str:
        l = self.links[i]
        return nsexec(l["peer_ns"], "birdc", "-s", l["bird_sock"], *cmd, check=False).stdout

    def bird_established(self, i: int) -> bool:
        return "Established" in self.birdc(i, "show", "protocols", "cgw")

    def start_gobgp(self, i: int, *, local_as, remote_as=65000, routes=(), hold=30, keepalive=10):
        l = self.links[i]
        d = os.path.join(self.tmp, f"gobgp{i}")
        os.makedirs(d, exist_ok=True)
        conf = f"""
[global.config]
  as = {local_as}
  router-id = "{l['remote']}"
  port = 179
  local-address-list = ["{l['remote']}"]
[global.apply-policy.config]
  default-import-policy = "accept-route"
  default-export-policy = "accept-route"

[[neighbors]]
  [neighbors.config]
    neighbor-address = "{l['local']}"
    peer-as = {remote_as}
  [neighbors.timers.config]
    hold-time = {hold}
    keepalive-interval = {keepalive}
    connect-retry = 2
  [neighbors.transport.config]
    local-address = "{l['remote']}"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
"""
        cf = os.path.join(d, "gobgpd.toml")
        with open(cf, "w") as f:
            f.write(conf)
        api = f"127.0.0.1:{50051 + i}"
        p = subprocess.Popen(["ip", "netns", "exec", l["peer_ns"], "gobgpd", "-f", cf, "-t", "toml",
                              "--api-hosts", api, "--log-level", "info"],
                             stdout=open(os.path.join(d, "gobgpd.log"), "w"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        l["gobgp_api"] = api
        l["gobgp_proc"] = p
        wait_for(lambda: self.gobgp(i, "global").returncode == 0, 15, what="gobgpd API")
        for r in routes:
            self.gobgp(i, "global", "rib", "add", r, "-a", "ipv4")
        return p

    def gobgp(self, i: int, *cmd):
        l = self.links[i]
        host, port = l["gobgp_api"].split(":")
        return nsexec(l["peer_ns"], "gobgp", "-u", host, "-p", port, *cmd, check=False)

    def start_frr(self, i: int, *, local_as, remote_as=65000, routes=(), hold=30, keepalive=10):
        """FRR's bgpd (Debian's frr) alone in the peer namespace: no zebra (-Z), its own
        vty socket directory, pid file and config in the test's temp dir."""
        l = self.links[i]
        d = os.path.join(self.tmp, f"frr{i}")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o777)
        nets = "".join(f"  network {r}\n" for r in routes)
        conf = f"""frr defaults traditional
hostname aws{i + 1}
log file {d}/bgpd.log debugging
route-map ALLOW permit 10
!
router bgp {local_as}
 bgp router-id {l['remote']}
 no bgp network import-check
 neighbor {l['local']} remote-as {remote_as}
 neighbor {l['local']} timers {keepalive} {hold}
 neighbor {l['local']} timers connect 2
 neighbor {l['local']} update-source {l['remote']}
 address-family ipv4 unicast
{nets}  neighbor {l['local']} activate
  neighbor {l['local']} route-map ALLOW in
  neighbor {l['local']} route-map ALLOW out
 exit-address-family
!
"""
        cf = os.path.join(d, "bgpd.conf")
        with open(cf, "w") as f:
            f.write(conf)
        p = subprocess.Popen(["ip", "netns", "exec", l["peer_ns"], "/usr/lib/frr/bgpd", "-Z", "-S",
                              "-f", cf, "--vty_socket", d, "-i", os.path.join(d, "bgpd.pid"),
                              "-l", l["remote"], "-u", "root", "-g", "root"],
                             stdout=open(os.path.join(d, "bgpd.out"), "w"), stderr=subprocess.STDOUT)
        self.procs.append(p)
        l["frr_dir"] = d
        l["frr_proc"] = p
        wait_for(lambda: os.path.exists(os.path.join(d, "bgpd.vty")) or p.poll() is not None, 15,
                 what="bgpd vty socket")
        assert p.poll() is None, open(os.path.join(d, "bgpd.out")).read()[-2000:]
        return p

    def vtysh(self, i: int, cmd: str) -> str:
        l = self.links[i]
        return nsexec(l["peer_ns"], "vtysh", "--vty_socket", l["frr_dir"], "-d", "bgpd", "-c", cmd,
                      check=False).stdout

    # ------------------------------------------------------------ cgwd side
    def start_cgwd(self, *, local_asn=65000, remote_asns=None, export=("192.168.50.0/24",),
                   hold=30, max_prefix=1000, ecmp=False, links=None, extra=None):
        links = list(range(len(self.links))) if links is None else links
        status = os.path.join(self.tmp, "cgwd-status.json")
        cfg = {"router_id": "10.255.0.2", "local_asn": local_asn, "export": list(export),
               "status_file": status, "max_prefix": max_prefix, "ecmp": ecmp, "tunnels": []}
        for i in links:
            l = self.links[i]
            cfg["tunnels"].append({"name": l["name"], "ifname": l["ifname"], "local": l["local"],
                                   "remote": l["remote"],
                                   "remote_asn": (remote_asns or {}).get(i, 64512),
                                   "hold_time": hold})
        cfg.update(extra or {})
        cf = os.path.join(self.tmp, "cgwd.json")
        with open(cf, "w") as f:
            json.dump(cfg, f)
        self.cgwd_log = os.path.join(self.tmp, "cgwd.log")
        p = subprocess.Popen(["ip", "netns", "exec", self.cgw, PY, *RUNNER, cf],
                             stdout=subprocess.DEVNULL, stderr=open(self.cgwd_log, "w"), cwd=REPO)
        self.procs.append(p)
        self.cgwd_proc = p
        self.status_file = status
        wait_for(lambda: os.path.exists(status), 15, what="cgwd status file")
        return p

    def status(self) -> dict:
        for _ in range(5):
            try:
                with open(self.status_file) as f:
                    return json.load(f)
            except (OSError, ValueError):
                time.sleep(0.05)
        return {}

    def stop_cgwd(self, timeout=30):
        self.cgwd_proc.send_signal(signal.SIGTERM)
        self.cgwd_proc.wait(timeout)
        return self.status()

    def kernel_routes(self, *extra) -> str:
        return nsexec(self.cgw, "ip", "route", "show", "proto", "157", *extra).stdout
