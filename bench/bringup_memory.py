#!/usr/bin/env python3
"""Bring-up time and memory: cgwd vs the reference stack (strongSwan + BIRD), same lab, same run.

Run as root (builds labs in network namespaces bu<pid>*, removed at exit):

    .venv/bin/python bench/bringup_memory.py [--rounds 2] [--tunnels 2] [--ike 2] [--json OUT]

Each round builds a fresh lab (two AWS endpoints: strongSwan + BIRD AS 64512) per stack, so
both stacks face the same AWS side from the same starting state; rounds alternate the order.

Bring-up: the clock starts when the stack is started -- cgwd: the moment its process is
spawned (`python -m cgwd.daemon` in the customer namespace, config already imported);
reference: the moment `Lab.start_reference()` is called (it starts charon, loads the
connections with `swanctl --load-all`, which initiates them, and starts BIRD). It stops when
every tunnel's ESP SA is installed on the customer side, every BGP session is Established
and the VPC route is in the customer namespace's kernel table. Milestones are read as they
happen, without polling the stack under test where possible: cgwd's and charon's log lines
are tailed every 10 ms (stamped on arrival), the kernel route is watched with
`ip monitor route`; BIRD's BGP state (the reference customer side) is polled with
`birdc show protocols` every 20 ms. The lab's own start-up waits (charon's vici socket,
ipsec0, BIRD's control socket) poll every 20 ms in this script instead of 200 ms, so the
harness does not inflate the reference. When done, the state is confirmed independently
(`cgwctl status --json` / `swanctl --list-sas` + `birdc`). Ratio = cgwd / reference
(below 1: cgwd is faster). The reference's time "from initiation" (from `swanctl
--load-all`, charon's own start-up excluded) is printed too.

Memory: once both tunnels are up and a ping went through, VmRSS (and VmHWM, the peak) of
the cgwd process (all its threads: one address space) against charon + BIRD (the two
customer-side processes of the reference). Ratio = cgwd / (charon + bird).

cgwd runs with compiled bytecode, as `pip install` leaves it (this machine's shell sets
PYTHONDONTWRITEBYTECODE, so nothing else writes it): the script byte-compiles the cgwd
package in place (`python -m compileall cgwd`, git-ignored __pycache__) before each start.

Also printed: the CPU time each stack used until it was up (cgwd process; charon + BIRD),
which depends less on what else runs on the machine than the wall-clock times.

Options: --tuned-reference gives the reference BIRD `connect delay time 1` (BIRD's minimum;
its default 5 s is what dominates the reference's bring-up); --full-pyroute2 starts cgwd with
the whole pyroute2 package imported first (A/B for cgwd.pyroute2_lite).

The machine has 2 cores shared with whatever else runs: compare ratios, not absolute
figures, and run it more than once.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from cgwd.lab import bird as lab_bird  # noqa: E402
from cgwd.lab import netns as lab_netns  # noqa: E402
from cgwd.lab import strongswan as lab_strongswan  # noqa: E402
from cgwd.lab.cli import cgwd_ready, import_config, start_cgwd  # noqa: E402
from cgwd.lab.netns import LabError, list_netns  # noqa: E402
from cgwd.lab.topology import Lab, LabSpec, leftovers  # noqa: E402

POLL = 0.02     # birdc polling and the lab's start-up waits
TAIL = 0.01     # log tailing
TIMEOUT = 90.0  # per stack bring-up (a loaded 2-core machine is slow)

# The lab's own waits (vici socket, ipsec0, BIRD control socket) poll at 20 ms here.
_fast_wait = functools.partial(lab_netns.wait_for, interval=POLL)
lab_strongswan.wait_for = _fast_wait
lab_bird.wait_for = _fast_wait

_STAMPS: dict[str, float] = {}


def _stamp_calls(cls, name: str, key: str) -> None:
    """Record when the reference stack's charon loads its connections / BIRD starts."""
    orig = getattr(cls, name)

    @functools.wraps(orig)
    def wrapper(self, *a, **kw):
        if "reference" in getattr(self, "dir", ""):
            _STAMPS.setdefault(key, time.monotonic())
        return orig(self, *a, **kw)

    setattr(cls, name, wrapper)


_orig_neighbor_render = lab_bird.BgpNeighbor.render
REF_CONNECT_DELAY: int | None = None  # --tuned-reference


def _neighbor_render(self) -> str:
    """The reference's BIRD neighbors (tun1, tun2, ...) with BIRD's shortest connect delay."""
    text = _orig_neighbor_render(self)
    if REF_CONNECT_DELAY is not None and re.fullmatch(r"tun\d+", self.name):
        text = text.replace("  connect retry time", f"  connect delay time {REF_CONNECT_DELAY};\n  connect retry time", 1)
    return text


lab_bird.BgpNeighbor.render = _neighbor_render

_stamp_calls(lab_strongswan.Charon, "start", "charon_start")
_stamp_calls(lab_strongswan.Charon, "load", "initiate")
_stamp_calls(lab_bird.Bird, "start", "bird_start")


# ---------------------------------------------------------------------------- observers
class LogWatch:
    """Tails a growing log file every 10 ms in a thread; the first line matching each pattern
    is stamped on arrival. A pattern with a group counts distinct values (tunnel names):
    KEY_first when the first shows up, KEY_all when ``n`` have."""

    def __init__(self, path: str, patterns: list, n: int, marks: "Marks"):
        self.path, self.patterns, self.n, self.marks = path, patterns, n, marks
        self.per: dict[str, set] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        f, buf = None, ""
        try:
            while not self._stop.is_set():
                if f is None:
                    try:
                        f = open(self.path, errors="replace")
                    except OSError:
                        f = None
                if f is not None:
                    buf += f.read()
                    *lines, buf = buf.split("\n")
                    now = time.monotonic()
                    for line in lines:
                        self._match(line, now)
                self._stop.wait(TAIL)
        finally:
            if f is not None:
                f.close()

    def _match(self, line: str, now: float) -> None:
        for key, pat in self.patterns:
            mo = pat.search(line)
            if not mo:
                continue
            if mo.groups():
                seen = self.per.setdefault(key, set())
                seen.add(mo.group(1))
                self.marks.set(f"{key}_first", now)
                if len(seen) >= self.n:
                    self.marks.set(f"{key}_all", now)
            else:
                self.marks.set(key, now)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)


class RouteWatch:
    """`ip monitor route` in a namespace: when the prefix first appears (stamped on arrival)."""

    def __init__(self, ns: str, prefix: str):
        self.prefix = prefix
        self.seen: float | None = None
        self.proc = subprocess.Popen(["ip", "-n", ns, "monitor", "route"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.1)  # let the monitor subscribe before the stack starts

    def _read(self) -> None:
        for line in self.proc.stdout:
            if self.seen is None and line.startswith(self.prefix + " "):
                self.seen = time.monotonic()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Marks:
    def __init__(self, t0: float):
        self.t0 = t0
        self.at: dict[str, float] = {}

    def set(self, name: str, t: float | None = None) -> None:
        if name not in self.at:
            self.at[name] = (t if t is not None else time.monotonic()) - self.t0

    def has(self, name: str) -> bool:
        return name in self.at


def proc_status(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile"):
                    out[k] = int(v.split()[0])
        with open(f"/proc/{pid}/comm") as f:
            out["comm"] = f.read().strip()
    except OSError:
        pass
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# ---------------------------------------------------------------------------- cgwd
CGWD_PATTERNS = [
    ("config_loaded", re.compile(r"event=datapath ")),
    ("ike_socket_open", re.compile(r"cgwd\.ike: IKE endpoint on ")),
    ("datapath_open", re.compile(r"cgwd\.esp\.\w+: (\S+): \w+ ESP data path on ")),
    ("ready", re.compile(r"event=ready ")),
    ("mm_sent", re.compile(r"cgwd\.ike: (\S+): initiating main mode")),
    ("mm_done", re.compile(r"cgwd\.ike: (\S+): ISAKMP SA established")),
    ("qm_done", re.compile(r"cgwd\.ike: (\S+): IPsec SA established")),
    ("sa_installed", re.compile(r"tunnel=(\S+) event=ipsec-up ")),
    ("bgp_established", re.compile(r"tunnel=(\S+) event=bgp-established ")),
]


FULL_PYROUTE2 = False  # --full-pyroute2: the whole pyroute2 package imported first (as before pyroute2_lite)


def spawn_cgwd(lab: Lab, cfg: str):
    if not FULL_PYROUTE2:
        return start_cgwd(lab, cfg)
    sock = os.path.join(lab.workdir, "cgwd.sock")
    code = ("import sys, runpy, pyroute2; sys.argv[0] = 'cgwd'; "
            "runpy.run_module('cgwd.daemon', run_name='__main__', alter_sys=True)")
    proc = lab.cgw.popen([sys.executable, "-c", code, "--config", cfg, "--socket", sock],
                         log_path=os.path.join(lab.workdir, "cgwd.log"))
    lab.procs.append(proc)
    return proc


def run_cgwd(lab: Lab, n: int) -> dict:
    cfg = import_config(lab)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    watch = RouteWatch(lab.cgw.name, lab.spec.vpc_cidr)
    t0 = time.monotonic()
    m = Marks(t0)
    logs = LogWatch(log_path, CGWD_PATTERNS, n, m)
    try:
        proc = spawn_cgwd(lab, cfg)
        deadline = t0 + TIMEOUT
        while True:
            if watch.seen is not None:
                m.set("route_in_kernel", watch.seen)
            if m.has("sa_installed_all") and m.has("bgp_established_all") and m.has("route_in_kernel"):
                break
            if proc.poll() is not None:
                raise LabError(f"cgwd exited ({proc.returncode}): {open(log_path).read()[-2000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"cgwd not up after {TIMEOUT:.0f}s; marks {m.at}")
            time.sleep(TAIL)
        cpu = proc_cpu(proc.pid)
        total = max(m.at["sa_installed_all"], m.at["bgp_established_all"], m.at["route_in_kernel"])
        lab_netns.wait_for(lambda: cgwd_ready(lab), 30, what="cgwctl status: all tunnels up")  # confirm
        mem = measure_after_up(lab, {"cgwd": proc.pid})
        return {"total": total, "cpu_s": cpu, "marks": dict(m.at), "memory": mem}
    finally:
        watch.close()
        logs.close()


# ---------------------------------------------------------------------------- reference
REF_PATTERNS = [
    ("mm_done", re.compile(r"IKE_SA (tun\d+)\[\d+\] established")),
    ("sa_installed", re.compile(r"CHILD_SA (tun\d+)\{\d+\} established")),
]


def run_reference(lab: Lab, n: int) -> dict:
    watch = RouteWatch(lab.cgw.name, lab.spec.vpc_cidr)
    charon_log = os.path.join(lab.workdir, "reference", "charon.log")
    _STAMPS.clear()
    t0 = time.monotonic()
    m = Marks(t0)
    logs = LogWatch(charon_log, REF_PATTERNS, n, m)
    try:
        lab.start_reference()
        for k, v in _STAMPS.items():
            m.set(k, v)
        m.set("start_reference_returned")
        sock = lab.ref_bird.sock
        deadline = t0 + TIMEOUT
        while True:
            if not m.has("bgp_established_all"):
                out = subprocess.run(["birdc", "-s", sock, "show", "protocols"], capture_output=True,
                                     text=True, timeout=10).stdout
                t = time.monotonic()
                est = sum(1 for ln in out.splitlines() if ln.startswith("tun") and "Established" in ln)
                if est >= 1:
                    m.set("bgp_established_first", t)
                if est == n:
                    m.set("bgp_established_all", t)
            if watch.seen is not None:
                m.set("route_in_kernel", watch.seen)
            if m.has("sa_installed_all") and m.has("bgp_established_all") and m.has("route_in_kernel"):
                break
            if time.monotonic() > deadline:
                raise LabError(f"reference not up after {TIMEOUT:.0f}s; marks {m.at}")
            time.sleep(POLL)
        cpu = proc_cpu(lab.ref_charon.proc.pid) + proc_cpu(lab.ref_bird.proc.pid)
        total = max(m.at["sa_installed_all"], m.at["bgp_established_all"], m.at["route_in_kernel"])
        # confirm independently of the log parsing
        for t in lab.tunnels:
            if not lab.ref_charon.child_installed(f"tun{t.index}"):
                raise LabError(f"reference: tun{t.index} CHILD_SA not INSTALLED in swanctl --list-sas")
        if lab.spec.vpc_cidr not in lab.cgw_routes():
            raise LabError("reference: VPC route not in the kernel")
        mem = measure_after_up(lab, {"charon": lab.ref_charon.proc.pid, "bird": lab.ref_bird.proc.pid})
        res = {"total": total, "cpu_s": cpu, "marks": dict(m.at), "memory": mem}
        if "initiate" in m.at:
            res["from_initiate"] = total - m.at["initiate"]
        return res
    finally:
        watch.close()
        logs.close()


# ---------------------------------------------------------------------------- memory
def measure_after_up(lab: Lab, pids: dict[str, int], settle: float = 2.0) -> dict:
    """RSS of the stack's processes once traffic went through the tunnel."""
    try:
        lab.wait_ping(timeout=30)
        pinged = lab.ping(3)
    except LabError:
        pinged = False
    time.sleep(settle)
    procs = {name: proc_status(pid) for name, pid in pids.items()}
    for name, st in procs.items():
        if st.get("comm") not in (name, "python3", "python", "python3.11"):
            raise LabError(f"pid {pids[name]} is {st.get('comm')!r}, not {name}")
    return {"ping_ok": pinged, "procs": procs,
            "rss_kb": sum(p.get("VmRSS", 0) for p in procs.values()),
            "hwm_kb": sum(p.get("VmHWM", 0) for p in procs.values())}


# ---------------------------------------------------------------------------- driver
def compile_cgwd() -> None:
    """Byte-compile the cgwd package in place (__pycache__, git-ignored), as `pip install`
    does; only files changed since the last run are recompiled."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "cgwd")], check=True,
                   stdout=subprocess.DEVNULL)


def import_time(runs: int = 3) -> float:
    best = None
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "import cgwd.daemon"], check=True, cwd=REPO)
        d = time.monotonic() - t
        best = d if best is None else min(best, d)
    return best


IKE_VERSION = 1  # --ike 2: the AWS endpoints, cgwd and the reference charon speak IKEv2


def one(stack: str, prefix: str, tunnels: int) -> dict:
    lab = Lab(LabSpec(prefix=prefix, tunnels=tunnels, ike_version=IKE_VERSION))
    try:
        lab.up()
        time.sleep(1.0)  # let the AWS side settle (BIRD listening, charons idle)
        if stack == "cgwd":
            compile_cgwd()
            return run_cgwd(lab, tunnels)
        return run_reference(lab, tunnels)
    finally:
        lab.down()
        left = leftovers(prefix)
        if left:
            print(f"warning: lab {prefix} left {left}", file=sys.stderr)


def fmt_marks(marks: dict) -> str:
    return "  ".join(f"{k}={v:.3f}" for k, v in sorted(marks.items(), key=lambda kv: kv[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tunnels", type=int, default=2)
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--tuned-reference", action="store_true",
                    help="the reference BIRD with `connect delay time 1` (BIRD's minimum; default 5 s)")
    ap.add_argument("--ike", type=int, choices=(1, 2), default=1, help="IKE version of every side (default 1)")
    ap.add_argument("--full-pyroute2", action="store_true",
                    help="A/B: start cgwd with the whole pyroute2 package imported (before pyroute2_lite)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    global FULL_PYROUTE2, REF_CONNECT_DELAY, IKE_VERSION
    FULL_PYROUTE2 = args.full_pyroute2
    IKE_VERSION = args.ike
    REF_CONNECT_DELAY = 1 if args.tuned_reference else None
    compile_cgwd()
    tag = f"bu{os.getpid() % 1000}"
    results: dict[str, list] = {"cgwd": [], "reference": []}
    try:
        imp = import_time()
        print(f"python -c 'import cgwd.daemon': {imp:.3f}s (best of 3)")
        for r in range(args.rounds):
            order = ("cgwd", "reference") if r % 2 == 0 else ("reference", "cgwd")
            for stack in order:
                res = one(stack, f"{tag}{r}{stack[0]}", args.tunnels)
                results[stack].append(res)
                mem = res["memory"]
                extra = f" (from initiation {res['from_initiate']:.3f}s)" if "from_initiate" in res else ""
                print(f"round {r + 1} {stack:9s}: up in {res['total']:.3f}s{extra}, CPU {res['cpu_s']:.2f}s; RSS {mem['rss_kb'] / 1024:.1f} MiB"
                      f" (peak {mem['hwm_kb'] / 1024:.1f}); ping {'ok' if mem['ping_ok'] else 'FAILED'}")
                print(f"    {fmt_marks(res['marks'])}")
                print("    " + ", ".join(f"{n}: RSS {p.get('VmRSS', 0) / 1024:.1f} MiB (anon {p.get('RssAnon', 0) / 1024:.1f},"
                                          f" file {p.get('RssFile', 0) / 1024:.1f}), {p.get('Threads')} threads"
                                          for n, p in mem["procs"].items()))
    finally:
        stale = [n for n in list_netns() if n.startswith(tag)]
        if stale:
            print(f"warning: namespaces left: {stale}", file=sys.stderr)
    c = [x["total"] for x in results["cgwd"]]
    ref = [x["total"] for x in results["reference"]]
    ref_i = [x.get("from_initiate", x["total"]) for x in results["reference"]]
    c_rss = [x["memory"]["rss_kb"] for x in results["cgwd"]]
    r_rss = [x["memory"]["rss_kb"] for x in results["reference"]]
    summary = {
        "bringup_cgwd_s": statistics.median(c), "bringup_reference_s": statistics.median(ref),
        "bringup_reference_from_initiate_s": statistics.median(ref_i),
        "bringup_ratio": statistics.median(c) / statistics.median(ref),
        "bringup_cpu_cgwd_s": statistics.median(x["cpu_s"] for x in results["cgwd"]),
        "bringup_cpu_reference_s": statistics.median(x["cpu_s"] for x in results["reference"]),
        "rss_cgwd_kb": statistics.median(c_rss), "rss_reference_kb": statistics.median(r_rss),
        "rss_ratio": statistics.median(c_rss) / statistics.median(r_rss),
        "import_cgwd_daemon_s": imp, "tunnels": args.tunnels,
        "rounds": args.rounds, "full_pyroute2": args.full_pyroute2,
        "tuned_reference": args.tuned_reference, "ike_version": IKE_VERSION,
    }
    print()
    print(f"bring-up (median of {args.rounds}): cgwd {summary['bringup_cgwd_s']:.3f}s, reference "
          f"{summary['bringup_reference_s']:.3f}s (from initiation {summary['bringup_reference_from_initiate_s']:.3f}s)")
    print(f"  ratio cgwd/reference = {summary['bringup_ratio']:.2f}  (target <= 1; cgwd target < 2 s)")
    print(f"  CPU used until up: cgwd {summary['bringup_cpu_cgwd_s']:.2f}s, charon+bird "
          f"{summary['bringup_cpu_reference_s']:.2f}s")
    print(f"memory, {args.tunnels} tunnels up (median): cgwd {summary['rss_cgwd_kb'] / 1024:.1f} MiB, "
          f"charon+bird {summary['rss_reference_kb'] / 1024:.1f} MiB")
    print(f"  ratio cgwd/(charon+bird) = {summary['rss_ratio']:.2f}  (target <= 2)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
