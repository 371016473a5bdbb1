#!/usr/bin/env python3
"""UPDATE ingest benchmark: a real peer (BIRD) sends N prefixes; cgwd and ExaBGP receive.

Run as root (creates network namespaces bgpit-bench-* / bgpit-kbench-*, removed at exit):
    .venv/bin/python bench/bgp_ingest.py [--prefixes 100000] [--kernel [--no-bird-kernel]]
    .venv/bin/python bench/bgp_ingest.py --kernel-only --prefixes 20000
      (kernel route installation alone: pyroute2 one request per route, cgwd's netlink
       batches, and iproute2's `ip -batch` as the reference, same routes, same run)

Measures, for each receiver, the time from session Established to End-of-RIB with all
prefixes delivered to the application:
  * cgwd: BgpSession + BgpSpeaker (decode, events) -> RoutingTable RIB (policy, best path);
    with --kernel also installs every route with pyroute2 (worker thread) and reports the
    time until the kernel has them all;
  * ExaBGP 4.2 (Debian package) with an API process that counts the parsed routes it is
    handed as JSON (ExaBGP's normal way to give routes to an application);
  * with --kernel, the whole pipeline into the kernel against the C reference: BIRD receiving
    the same feed in the same namespace into the kernel's main table (its kernel protocol),
    session Established -> every route exported, wall clock and CPU (user + system, netlink
    included; cgwd's CPU counts its netlink worker thread).
"ratios" at the end: cgwd/ExaBGP prefixes per CPU-second (decode through RIB), and with
--kernel cgwd/BIRD for the kernel pipeline (per CPU-second and per wall-clock second).
Memory: tracemalloc delta of the Adj-RIB-In + RIB for N routes (cgwd), and the RSS of
the receiving process after ingest (both).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "interop"))
sys.path.insert(0, REPO)

from test_bgp_lab import Lab, nsexec, wait_for  # noqa: E402

CGWD_SIDE = r'''
import asyncio, json, os, resource, sys, time, tracemalloc
sys.path.insert(0, REPO)
from cgwd.bgp.session import BgpPeerConfig, BgpSession, SessionUp, EndOfRib, RoutesReceived, SessionDown
from cgwd.bgp.speaker import BgpSpeaker
from cgwd.bgp.routing import RoutingTable
from cgwd.bgp.kernel import KernelRoutes

def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])

async def main():
    n_expect = N
    kernel = KernelRoutes(254, 100, 157) if USE_KERNEL else None
    rt = RoutingTable(kernel=kernel, import_policy="aws-default", max_prefix=None)
    rt.tunnel_up("tun1", "bgpv1", "169.254.10.1")
    t = {}
    count = [0]
    lag = [0.0]
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    def on_event(ev):
        if isinstance(ev, SessionUp):
            t["up"] = loop.time()
            t["cpu_up"] = time.process_time()
            t["rss_up"] = rss_kb()
        elif isinstance(ev, RoutesReceived):
            count[0] += len(ev.announced)
        elif isinstance(ev, EndOfRib):
            t["eor"] = loop.time()
            t["cpu_eor"] = time.process_time()
            done.set()
        elif isinstance(ev, SessionDown):
            t["down"] = ev.reason
            done.set()
        rt.handle_event("tun1", ev)
    async def probe():
        while True:
            t0 = loop.time(); await asyncio.sleep(0.01); lag[0] = max(lag[0], loop.time() - t0 - 0.01)
    tracemalloc.start() if TRACE else None
    rss0 = rss_kb()
    sess = BgpSession(BgpPeerConfig("169.254.10.2", "169.254.10.1", 65000, 64512, "10.255.0.2",
                                    hold_time=HOLD, connect_retry=1))
    sp = BgpSpeaker(sess, local_address="169.254.10.2", remote_address="169.254.10.1", on_event=on_event)
    pr = asyncio.ensure_future(probe())
    cpu0 = time.process_time()
    await sp.start()
    await asyncio.wait_for(done.wait(), 600)
    cpu1 = time.process_time()
    res = {"prefixes": count[0], "rib": len(rt.rib.selected), "seconds": t["eor"] - t["up"],
           "cpu_seconds": t["cpu_eor"] - t["cpu_up"], "cpu_seconds_incl_connect": cpu1 - cpu0, "max_loop_lag": lag[0], "down": t.get("down"),
           "rss_delta_kb": rss_kb() - rss0, "rss_kb": rss_kb()}
    if TRACE:
        cur, peak = tracemalloc.get_traced_memory()
        res["traced_bytes"] = cur
        tracemalloc.stop()
    if kernel is not None:
        t0 = loop.time()
        await loop.run_in_executor(None, rt.flush)
        res["kernel_seconds_after_eor"] = loop.time() - t0
        res["kernel_installed"] = len(kernel.installed)
        # fail closed (the daemon's default): one unreachable guard route per learned prefix too
        res["kernel_unreachable_guards"] = len(kernel.unreachable)
        res["kernel_seconds_total"] = loop.time() - t["up"]
        # every thread of the process (the netlink worker too), user + system
        res["kernel_cpu_seconds_total"] = time.process_time() - t["cpu_up"]
        await asyncio.sleep(2 * HOLD / 3 + 1)
    res["state_after"] = sess.state
    res["flaps"] = sess.status()["flaps"]
    await sp.stop("bench done")
    rt.clear(); await loop.run_in_executor(None, rt.flush); rt.close()
    print(json.dumps(res))
    pr.cancel()
asyncio.run(main())
'''

KERNEL_SIDE = r'''
import json, os, subprocess, sys, tempfile, time
sys.path.insert(0, REPO)
from cgwd.bgp.kernel import KernelRoutes
from cgwd.bgp.rib import NextHop, RibChanges
N = NPREFIX
prefixes = [f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32" if N > 60000
            else f"10.{64 + i // 256}.{i % 256}.0/24" for i in range(N)]
nh1 = (NextHop("tun1", "bgpv1", "169.254.10.1"),)
def in_kernel():
    out = subprocess.run(["ip", "route", "show", "proto", "157"], capture_output=True, text=True).stdout
    return len(out.splitlines())
res = {}
for mode in ("pyroute2_per_request", "batched"):
    k = KernelRoutes(254, 100, 157)
    k._batch_ok = mode == "batched"
    t0 = time.perf_counter()
    k.apply(RibChanges(add={p: nh1 for p in prefixes}))
    t1 = time.perf_counter()
    n = in_kernel()
    t2 = time.perf_counter()
    k.remove_all()
    t3 = time.perf_counter()
    res[mode] = {"install_seconds": t1 - t0, "routes_per_second": round(N / (t1 - t0)),
                 "remove_seconds": t3 - t2, "removes_per_second": round(N / (t3 - t2)),
                 "in_kernel_after_install": n, "left_after_remove": in_kernel(),
                 "failed": len(k.failed), "conflicts": len(k.conflicts)}
    k.close()
# reference in the same run: iproute2 reading the same routes from a file (`ip -batch`)
d = tempfile.mkdtemp()
for cmd in ("add", "del"):
    with open(os.path.join(d, cmd), "w") as f:
        for p in prefixes:
            f.write(f"route {cmd} {p} via 169.254.10.1 dev bgpv1 metric 100 proto 157 table 254\n")
t0 = time.perf_counter()
subprocess.run(["ip", "-batch", os.path.join(d, "add")], check=True)
t1 = time.perf_counter()
n = in_kernel()
t2 = time.perf_counter()
subprocess.run(["ip", "-batch", os.path.join(d, "del")], check=True)
t3 = time.perf_counter()
res["ip_batch_reference"] = {"install_seconds": t1 - t0, "routes_per_second": round(N / (t1 - t0)),
                             "remove_seconds": t3 - t2, "removes_per_second": round(N / (t3 - t2)),
                             "in_kernel_after_install": n, "left_after_remove": in_kernel()}
ref = res["ip_batch_reference"]["routes_per_second"]
for mode in ("pyroute2_per_request", "batched"):
    res[mode]["ratio_to_ip_batch"] = round(res[mode]["routes_per_second"] / ref, 2)
res["batched_speedup_over_per_request"] = round(
    res["batched"]["routes_per_second"] / res["pyroute2_per_request"]["routes_per_second"], 1)
print(json.dumps(res))
'''

EXA_COUNTER = r'''
import sys, json, time, os
n = 0
t_up = None
HZ = os.sysconf("SC_CLK_TCK")
def cpu():
    # ExaBGP (our parent) + this API process
    f = open("/proc/%d/stat" % os.getppid()).read().rsplit(")", 1)[1].split()
    t = os.times()
    return (int(f[11]) + int(f[12])) / HZ + t.user + t.system
out = open(OUT, "w")
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    typ = msg.get("type")
    if typ == "state" and msg.get("neighbor", {}).get("state") == "up":
        t_up = time.monotonic()
        out.write(json.dumps({"up": t_up, "cpu_up": cpu()}) + "\n"); out.flush()
    elif typ == "update":
        upd = msg["neighbor"]["message"].get("update", {})
        if "announce" in upd:
            for fam, hops in upd["announce"].items():
                for nh, prefixes in hops.items():
                    n += len(prefixes)
        if "eor" in msg["neighbor"]["message"]:
            out.write(json.dumps({"eor": time.monotonic(), "prefixes": n, "cpu_eor": cpu()}) + "\n"); out.flush()
'''


def write_feed(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"route 10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}/32 blackhole;\n"
                    if n > 60000 else f"route 10.{64 + i // 256}.{i % 256}.0/24 blackhole;\n")


def proc_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1])
    except OSError:
        return None


def run_cgwd(lab, n, kernel, trace, hold):
    code = CGWD_SIDE.replace("REPO", repr(REPO)).replace("USE_KERNEL", str(bool(kernel))) \
        .replace("TRACE", str(bool(trace))).replace("HOLD", str(hold)).replace("= N\n", f"= {n}\n")
    path = os.path.join(lab.tmp, "cgwd_side.py")
    with open(path, "w") as f:
        f.write(code)
    out = nsexec(lab.cgw, sys.executable, path, timeout=900).stdout.strip().splitlines()
    return json.loads(out[-1])


def run_kernel_only(lab, n):
    code = KERNEL_SIDE.replace("REPO", repr(REPO)).replace("NPREFIX", str(n))
    path = os.path.join(lab.tmp, "kernel_side.py")
    with open(path, "w") as f:
        f.write(code)
    out = nsexec(lab.cgw, sys.executable, path, timeout=900).stdout.strip().splitlines()
    return json.loads(out[-1])


def run_exabgp(lab, n, hold):
    d = os.path.join(lab.tmp, "exa")
    os.makedirs(d, exist_ok=True)
    outf = os.path.join(d, "counter.out")
    counter = os.path.join(d, "counter.py")
    with open(counter, "w") as f:
        f.write(EXA_COUNTER.replace("OUT", repr(outf)))
    conf = textwrap.dedent(f"""
    process counter {{
        run {sys.executable} {counter};
        encoder json;
    }}
    neighbor 169.254.10.1 {{
        router-id 10.255.0.2;
        local-address 169.254.10.2;
        local-as 65000;
        peer-as 64512;
        hold-time {hold};
        family {{ ipv4 unicast; }}
        capability {{ graceful-restart 120; route-refresh; }}
        api {{
            processes [ counter ];
            neighbor-changes;
            receive {{ parsed; update; }}
        }}
    }}
    """)
    cf = os.path.join(d, "exabgp.conf")
    with open(cf, "w") as f:
        f.write(conf)
    env = dict(os.environ, **{"exabgp.daemon.user": "root", "exabgp.api.cli": "false",
                              "exabgp.log.destination": os.path.join(d, "exabgp.log"),
                              "exabgp.daemon.daemonize": "false"})
    p = subprocess.Popen(["ip", "netns", "exec", lab.cgw, "exabgp", cf], env=env,
                         stdout=open(os.path.join(d, "stdout"), "w"), stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    try:
        def result():
            if not os.path.exists(outf):
                return None
            lines = [json.loads(x) for x in open(outf).read().splitlines() if x.strip()]
            up = next((x for x in lines if "up" in x), None)
            eor = next((x for x in lines if "eor" in x), None)
            if up and eor:
                return {"seconds": eor["eor"] - up["up"], "prefixes": eor["prefixes"],
                        "cpu_seconds": eor["cpu_eor"] - up["cpu_up"]}
            return None
        res = wait_for(result, 900, interval=0.2, what="ExaBGP End-of-RIB")
        res["rss_kb"] = proc_rss_kb(p.pid)
        # ExaBGP's python process is a child of `ip netns exec` (exec'ed): same pid
        return res
    except AssertionError as e:
        return {"error": str(e), "elapsed": time.monotonic() - t0,
                "log_tail": open(os.path.join(d, "stdout")).read()[-1500:]}
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


BIRD_RECEIVER = """
router id 10.255.0.2;
protocol device {{ }}
protocol kernel k4 {{
    kernel table 254;
    ipv4 {{ import none; export all; }};
}}
protocol bgp aws {{
    local 169.254.10.2 as 65000;
    neighbor 169.254.10.1 as 64512;
    hold time {hold};
    keepalive time {keepalive};
    connect retry time 1;
    ipv4 {{ import all; export none; }};
}}
"""


def proc_cpu(pid):
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_bird_kernel(lab, n, hold):
    """BIRD (the C reference) receiving the same feed in the cgw namespace into the kernel's
    main table: session Established -> every route exported to (and acknowledged by) the
    kernel, wall clock and BIRD's CPU (user + system: netlink included)."""
    d = os.path.join(lab.tmp, "bird_rx")
    os.makedirs(d, exist_ok=True)
    cf, sock = os.path.join(d, "bird.conf"), os.path.join(d, "bird.ctl")
    with open(cf, "w") as f:
        f.write(BIRD_RECEIVER.format(hold=hold, keepalive=max(1, hold // 3)))
    p = subprocess.Popen(["ip", "netns", "exec", lab.cgw, "bird", "-f", "-c", cf, "-s", sock,
                          "-P", os.path.join(d, "bird.pid")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "bird.err"), "w"))
    try:
        wait_for(lambda: os.path.exists(sock) and os.path.exists(os.path.join(d, "bird.pid")), 10,
                 what="receiving bird's control socket")
        pid = int(open(os.path.join(d, "bird.pid")).read().split()[0])

        def birdc(*cmd):
            return nsexec(lab.cgw, "birdc", "-s", sock, *cmd, check=False).stdout

        t_end = time.monotonic() + 60
        while "Established" not in birdc("show", "protocols", "aws"):
            if time.monotonic() > t_end:
                return {"error": "receiving BIRD did not establish"}
            time.sleep(0.02)
        t_up, cpu_up = time.monotonic(), proc_cpu(pid)

        def exported():
            for line in birdc("show", "protocols", "all", "k4").splitlines():
                line = line.strip()
                if line.startswith("Routes:"):
                    # "Routes:  0 imported, 100000 exported, 0 preferred"
                    for part in line[len("Routes:"):].split(","):
                        v, _sp, what = part.strip().partition(" ")
                        if what == "exported":
                            return int(v)
            return 0
        wait_for(lambda: exported() >= n, 600, interval=0.1, what="BIRD exported the feed to the kernel")
        t_done, cpu_done = time.monotonic(), proc_cpu(pid)
        in_kernel = len(nsexec(lab.cgw, "ip", "-o", "route", "show", "table", "254", "proto", "bird")
                        .stdout.splitlines())
        return {"kernel_installed": in_kernel, "exported": exported(), "kernel_seconds_total": t_done - t_up,
                "kernel_cpu_seconds_total": cpu_done - cpu_up, "rss_kb": proc_rss_kb(pid)}
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefixes", type=int, default=100_000)
    ap.add_argument("--kernel", action="store_true", help="also install the routes in the kernel")
    ap.add_argument("--no-exabgp", action="store_true")
    ap.add_argument("--no-bird-kernel", action="store_true",
                    help="with --kernel: skip the reference (BIRD receiving the feed into the kernel)")
    ap.add_argument("--hold", type=int, default=30)
    ap.add_argument("--kernel-only", action="store_true",
                    help="only time kernel route installation: cgwd per request vs batched "
                         "vs `ip -batch` (no BGP)")
    args = ap.parse_args()
    if args.kernel_only:
        if os.geteuid() != 0:
            sys.exit("needs root")
        with Lab("kbench", n_links=1) as lab:
            print(json.dumps({"prefixes": args.prefixes,
                              "kernel_install": run_kernel_only(lab, args.prefixes)}, indent=2))
        return
    if os.geteuid() != 0 or not shutil.which("bird"):
        sys.exit("needs root and bird")
    results = {}
    with Lab("bench", n_links=1) as lab:
        feed = os.path.join(lab.tmp, "feed.conf")
        write_feed(feed, args.prefixes)
        lab.start_bird(0, static=(), extra_static_file=feed, hold=args.hold, keepalive=args.hold // 3)
        wait_for(lambda: "vpc" in lab.birdc(0, "show", "protocols") and
                 f"{args.prefixes} imported" in lab.birdc(0, "show", "protocols", "all", "vpc"),
                 120, what="BIRD loaded the feed")
        results["cgwd"] = run_cgwd(lab, args.prefixes, False, False, args.hold)
        results["cgwd_tracemalloc"] = run_cgwd(lab, args.prefixes, False, True, args.hold)
        if args.kernel:
            results["cgwd_kernel"] = run_cgwd(lab, args.prefixes, True, False, args.hold)
        if not args.no_exabgp and shutil.which("exabgp"):
            time.sleep(2)
            results["exabgp"] = run_exabgp(lab, args.prefixes, args.hold)
        if args.kernel and not args.no_bird_kernel:
            time.sleep(2)
            results["bird_kernel"] = run_bird_kernel(lab, args.prefixes, args.hold)
    for k, v in results.items():
        if v.get("kernel_installed") and v.get("kernel_seconds_total"):
            # session up -> every route in the kernel (decode + RIB + netlink, overlapped)
            v["kernel_routes_per_second_total"] = round(v["kernel_installed"] / v["kernel_seconds_total"])
            if v.get("kernel_cpu_seconds_total"):
                v["kernel_prefixes_per_cpu_second"] = round(v["kernel_installed"] / v["kernel_cpu_seconds_total"])
        if "seconds" in v and v.get("prefixes"):
            v["prefixes_per_second"] = round(v["prefixes"] / v["seconds"])
            if v.get("cpu_seconds"):
                v["prefixes_per_cpu_second"] = round(v["prefixes"] / v["cpu_seconds"])
    ratios = {}
    exa, cg = results.get("exabgp", {}), results.get("cgwd", {})
    if exa.get("prefixes_per_cpu_second") and cg.get("prefixes_per_cpu_second"):
        # decode through RIB, per CPU-second: cgwd / ExaBGP (issue 19: >= 3)
        ratios["ingest_cgwd_over_exabgp_per_cpu_second"] = round(
            cg["prefixes_per_cpu_second"] / exa["prefixes_per_cpu_second"], 2)
    kb, kc = results.get("bird_kernel", {}), results.get("cgwd_kernel", {})
    for key in ("kernel_prefixes_per_cpu_second", "kernel_routes_per_second_total"):
        if kb.get(key) and kc.get(key):
            # the whole pipeline into the kernel: cgwd / BIRD (the C reference), whatever it is
            ratios[f"kernel_pipeline_cgwd_over_bird_{key.removeprefix('kernel_')}"] = round(kc[key] / kb[key], 2)
    if ratios:
        results["ratios"] = ratios
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
