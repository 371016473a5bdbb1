#!/usr/bin/env python3
"""Hub scale: what each added tunnel costs cgwd and strongSwan + BIRD (issue 19).

Run as root (network namespaces sc<pid>-*, removed at exit; needs matplotlib for --plot):

    .venv/bin/python bench/scale.py [--vpns 1,5,10,25] [--idle 60] [--ike 2] [--json OUT] [--plot OUT.png]
                                    [--tracemalloc]   (where cgwd's memory per tunnel goes; a separate run)

For each number of VPN connections V (2V tunnels, each with BGP and ``--prefixes`` VPC
prefixes per connection) a fresh hub lab (cgwd.lab.hub: one namespace per AWS endpoint with
its own charon + BIRD) is built for each stack, and the customer side is, in turn:

* cgwd, its config imported with ``cgwctl import aws`` from one describe-vpn-connections
  JSON holding every connection;
* the reference: one charon (swanctl, every connection with start_action=start) and one
  BIRD (one BGP protocol per tunnel), as people glue them by hand.

Figures per stack and size:

* bring-up: from the stack's start (cgwd spawned; the reference's charon started) until every
  VPC prefix is in the customer namespace's kernel table (``ip monitor route``) and every AWS
  endpoint's BIRD has its session with the customer Established (the time BIRD stamps on the
  state change, to the millisecond: read after the fact, so polling costs nothing). Then the
  state is confirmed from the stack itself (cgwctl status; swanctl --list-sas + birdc);
* RSS: VmRSS of cgwd against charon + BIRD, 5 s after bring-up;
* idle CPU: CPU seconds (user + system, all threads) over ``--idle`` seconds with every
  tunnel up and nothing changing but keepalives and DPD, per tunnel per minute;
* status: the median of 5 ``cgwctl status`` runs (the command an operator types, Python's
  start included) and of 5 requests on the control socket alone; for the reference
  ``swanctl --list-sas`` followed by ``birdc show protocols``.

Then the slope of each figure against the number of tunnels (least squares) per stack, and
the ratio cgwd / reference at each size. Targets (issue 19): bring-up of the largest size no
slower than the reference, RSS per added tunnel <= the reference's, idle CPU per tunnel <=
the reference's, status under 200 ms at 50 tunnels.

The machine has 2 cores: the AWS side (2V charons and BIRDs) shares them with the stack under
test, as it does for both stacks. Compare ratios and slopes, not absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from cgwd.control import ControlClient  # noqa: E402
from cgwd.lab.cli import cgwctl_command, cgwd_command  # noqa: E402
from cgwd.lab.hub import ONPREM_CIDR, HubLab, HubSpec  # noqa: E402
from cgwd.lab.netns import LabError, run, wait_for  # noqa: E402
from cgwd.lab.topology import destroy, leftovers  # noqa: E402

STACKS = ("cgwd", "reference")
SETTLE = 5.0
STATUS_RUNS = 5


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    with open(f"/proc/{pid}/comm") as f:
        out["comm"] = f.read().strip()
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RouteWatch:
    """``ip monitor route`` in a namespace: when every wanted prefix has a usable route."""

    def __init__(self, ns: str, wanted: set[str]):
        self.wanted = set(wanted)
        self.have: set[str] = set()
        self.complete_at: float | None = None
        self.proc = subprocess.Popen(["ip", "-n", ns, "-o", "monitor", "route"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.time()
            words = line.split()
            if not words:
                continue
            deleted = words[0] == "Deleted"
            if deleted:
                words = words[1:]
            if words and words[0] in ("unreachable", "blackhole", "prohibit", "throw"):
                continue  # a fail-closed route is not a route to the VPC
            if not words or words[0] not in self.wanted or " table " in line and " table main" not in line:
                continue
            if deleted:
                self.have.discard(words[0])
            else:
                self.have.add(words[0])
                if self.complete_at is None and self.have >= self.wanted:
                    self.complete_at = now

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def aws_established_at(lab: HubLab) -> list[float | None]:
    """When each AWS endpoint's BIRD saw its session with the customer go Established."""
    out = []
    for e in lab.endpoints:
        text = e.bird.birdc("show", "protocols", "cgw")
        m = re.search(r"^cgw\s+BGP\s+\S+\s+up\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s+Established", text, re.M)
        out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() if m else None)
    return out


def median_ms(fn, runs: int = STATUS_RUNS) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


# ---------------------------------------------------------------------------- the stacks
class CgwdStack:
    name = "cgwd"

    def __init__(self, lab: HubLab):
        self.lab = lab
        self.sock = os.path.join(lab.workdir, "cgwd.sock")
        self.log = os.path.join(lab.workdir, "cgwd.log")
        src = lab.aws_json()
        self.config = os.path.join(lab.workdir, "cgwd.toml")
        proc = run(cgwctl_command("import", "aws", src, "--advertise", ONPREM_CIDR, "-o", self.config),
                   check=False, timeout=60)
        if proc.returncode != 0:
            raise LabError(f"cgwctl import aws failed: {proc.stderr.strip()}")
        self.proc = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONTRACEMALLOC="1") if TRACEMALLOC else None
        self.proc = self.lab.cgw.popen(cgwd_command(self.config, self.sock), log_path=self.log, env=env)
        self.lab.procs.append(self.proc)

    def memory(self) -> dict:
        """--tracemalloc: cgwd's live Python allocations by package/module (bytes)."""
        r = ControlClient(self.sock).request({"cmd": "memory"}, timeout=60)
        if not r.get("ok"):
            raise LabError(f"cgwd memory: {r.get('error')}")
        return r["memory"]

    def pids(self) -> dict[str, int]:
        return {"cgwd": self.proc.pid}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def died(self) -> str:
        with open(self.log) as f:
            return f"cgwd exited ({self.proc.returncode}): {f.read()[-2000:]}"

    def confirm(self) -> None:
        st = ControlClient(self.sock).request({"cmd": "status"})["status"]
        tunnels = st.get("tunnels") or []
        ok = [t for t in tunnels if t.get("ipsec", {}).get("state") == "installed"
              and t.get("bgp", {}).get("state") == "established"]
        if len(ok) != self.lab.tunnels:
            raise LabError(f"cgwd status: {len(ok)} of {self.lab.tunnels} tunnels installed + established")

    def status_times(self) -> dict:
        client = ControlClient(self.sock)
        cli = cgwctl_command("status", "--socket", self.sock)
        return {"status_cli_ms": median_ms(lambda: run(cli, timeout=30)),
                "status_socket_ms": median_ms(lambda: client.request({"cmd": "status"}))}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


class ReferenceStack:
    name = "reference"

    def __init__(self, lab: HubLab):
        self.lab = lab
        d = os.path.join(lab.workdir, "reference")
        self.charon = lab.reference_charon(d)
        self.bird = lab.reference_bird(d)

    def start(self) -> None:
        self.charon.start()
        for e in self.lab.endpoints:
            self.lab.cgw.ip(f"addr add {e.cgw_inside}/30 dev ipsec0")
        self.lab.cgw.ip("link set ipsec0 up")
        self.charon.load()  # start_action=start: the load initiates every connection
        self.bird.start()

    def pids(self) -> dict[str, int]:
        return {"charon": self.charon.proc.pid, "bird": self.bird.proc.pid}

    def alive(self) -> bool:
        return self.charon.proc.poll() is None and self.bird.proc.poll() is None

    def died(self) -> str:
        return "the reference's charon or BIRD exited"

    def _sas_and_sessions(self) -> tuple[str, str]:
        return self.charon.list_sas(), self.bird.birdc("show", "protocols")

    def confirm(self) -> None:
        sas, protos = self._sas_and_sessions()
        installed = len(re.findall(r"tun\d+: #\d+, reqid \d+, INSTALLED", sas))
        est = sum(1 for ln in protos.splitlines() if ln.startswith("tun") and "Established" in ln)
        if installed != self.lab.tunnels or est != self.lab.tunnels:
            raise LabError(f"reference: {installed} CHILD_SAs installed, {est} sessions Established "
                           f"of {self.lab.tunnels}")

    def status_times(self) -> dict:
        return {"status_cli_ms": median_ms(self._sas_and_sessions)}

    def stop(self) -> None:
        self.bird.stop()
        self.charon.stop()


# ---------------------------------------------------------------------------- one run
def measure(stack_name: str, vpns: int, args) -> dict:
    prefix = f"sc{os.getpid() % 1000}"
    lab = HubLab(HubSpec(prefix=prefix, vpns=vpns, prefixes=args.prefixes, ike_version=args.ike,
                         ike_proposal=args.ike_proposal, esp_proposal=args.esp_proposal))
    try:
        lab.up()
        time.sleep(1.0)  # the AWS side settles (BIRDs listening, charons idle)
        stack = (CgwdStack if stack_name == "cgwd" else ReferenceStack)(lab)
        watch = RouteWatch(lab.cgw.name, lab.all_vpc_prefixes())
        timeout = 60 + 3 * lab.tunnels
        try:
            t0 = time.time()
            stack.start()
            while watch.complete_at is None:
                if not stack.alive():
                    raise LabError(stack.died())
                if time.time() - t0 > timeout:
                    raise LabError(f"{stack_name}: {len(watch.have)} of {len(watch.wanted)} VPC prefixes "
                                   f"after {timeout} s")
                time.sleep(0.05)
            est = aws_established_at(lab)
            while None in est:
                if time.time() - t0 > timeout:
                    raise LabError(f"{stack_name}: {est.count(None)} AWS sessions not Established after {timeout} s")
                time.sleep(1.0)
                est = aws_established_at(lab)
            bringup = max(watch.complete_at, *est) - t0
        finally:
            watch.close()
        wait_for(lambda: _confirmed(stack), 30, interval=0.5, what=f"{stack_name}: every tunnel up")
        time.sleep(SETTLE)
        pids = stack.pids()
        procs = {n: proc_status(p) for n, p in pids.items()}
        cpu0, w0 = sum(proc_cpu(p) for p in pids.values()), time.monotonic()
        time.sleep(args.idle)
        cpu1, w1 = sum(proc_cpu(p) for p in pids.values()), time.monotonic()
        stack.confirm()  # still every tunnel up after the idle window
        res = {"stack": stack_name, "vpns": vpns, "tunnels": lab.tunnels, "bringup_s": bringup,
               "rss_kb": sum(p["VmRSS"] for p in procs.values()), "procs": procs,
               "idle_cpu_s": cpu1 - cpu0, "idle_window_s": w1 - w0,
               "idle_cpu_ms_per_tunnel_min": (cpu1 - cpu0) * 1000 / lab.tunnels * 60 / (w1 - w0)}
        res.update(stack.status_times())
        if TRACEMALLOC and isinstance(stack, CgwdStack):
            res["tracemalloc"] = stack.memory()
        stack.stop()
        return res
    finally:
        lab.down()
        left = leftovers(prefix)
        if left:
            print(f"warning: hub lab {prefix} left {left[:5]}; removing", file=sys.stderr)
            destroy(prefix)


TRACEMALLOC = False  # --tracemalloc


def memory_slopes(results: list[dict], top: int = 15) -> dict[str, float]:
    """--tracemalloc: bytes per added tunnel of each package/module's live allocations in
    cgwd (least squares over the sizes run), largest first; printed and returned."""
    rows = sorted((r for r in results if "tracemalloc" in r), key=lambda r: r["tunnels"])
    if len(rows) < 2:
        return {}
    keys = set().union(*(r["tracemalloc"]["by_file"] for r in rows))
    xs = [r["tunnels"] for r in rows]
    per = {k: slope(xs, [r["tracemalloc"]["by_file"].get(k, 0) for r in rows]) or 0.0 for k in keys}
    total = slope(xs, [r["tracemalloc"]["traced_bytes"] for r in rows]) or 0.0
    rss = slope(xs, [r["rss_kb"] * 1024 for r in rows]) or 0.0
    print(f"\ncgwd's memory per added tunnel (tracemalloc, {len(rows)} sizes): RSS {rss / 1024:.1f} KiB, "
          f"traced Python allocations {total / 1024:.1f} KiB, of which:")
    best = dict(sorted(per.items(), key=lambda kv: -kv[1])[:top])
    for k, v in best.items():
        print(f"  {k:48s} {v / 1024:7.1f} KiB")
    return {"rss": rss, "traced": total, **best}


def _confirmed(stack) -> bool:
    try:
        stack.confirm()
        return True
    except (LabError, OSError, KeyError):
        return False


# ---------------------------------------------------------------------------- report
def slope(xs: list[float], ys: list[float]) -> float | None:
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


FIGURES = [("bringup_s", "bring-up (s)", 1.0), ("rss_kb", "RSS (MiB)", 1 / 1024),
           ("idle_cpu_ms_per_tunnel_min", "idle CPU (ms per tunnel per min)", 1.0),
           ("status_cli_ms", "status (ms)", 1.0)]


def report(results: list[dict]) -> dict:
    by = {s: sorted((r for r in results if r["stack"] == s), key=lambda r: r["tunnels"]) for s in STACKS}
    print("\n| tunnels | stack | bring-up s | RSS MiB | threads | fds | idle CPU ms/tunnel/min | status ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r["tunnels"], r["stack"])):
        thr = sum(p.get("Threads", 0) for p in r["procs"].values())
        fds = sum(p.get("fds", 0) for p in r["procs"].values())
        sock = f" (socket {r['status_socket_ms']:.0f})" if "status_socket_ms" in r else ""
        print(f"| {r['tunnels']} | {r['stack']} | {r['bringup_s']:.2f} | {r['rss_kb'] / 1024:.1f} | {thr} | {fds} | "
              f"{r['idle_cpu_ms_per_tunnel_min']:.1f} | {r['status_cli_ms']:.0f}{sock} |")
    summary: dict = {"slopes": {}, "ratios": []}
    print("\nslope per added tunnel (least squares):")
    for key, label, scale in FIGURES:
        line = []
        for s in STACKS:
            rows = by[s]
            k = slope([r["tunnels"] for r in rows], [r[key] * scale for r in rows]) if rows else None
            summary["slopes"].setdefault(key, {})[s] = k
            line.append(f"{s} {k:.4g}" if k is not None else f"{s} -")
        print(f"  {label}: " + ", ".join(line))
    print("\nratio cgwd / reference:")
    for rc in by["cgwd"]:
        rr = next((r for r in by["reference"] if r["tunnels"] == rc["tunnels"]), None)
        if rr is None:
            continue
        ratios = {key: rc[key] / rr[key] if rr[key] else None for key, _, _ in FIGURES}
        summary["ratios"].append({"tunnels": rc["tunnels"], **ratios})
        print(f"  {rc['tunnels']:3d} tunnels: " + ", ".join(
            f"{label.split(' (')[0]} {v:.2f}" for (key, label, _), v in zip(FIGURES, ratios.values()) if v is not None))
    return summary


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, label, scale) in zip(axes.flat, FIGURES):
        for s, style in zip(STACKS, ("o-", "s--")):
            rows = sorted((r for r in results if r["stack"] == s), key=lambda r: r["tunnels"])
            ax.plot([r["tunnels"] for r in rows], [r[key] * scale for r in rows], style,
                    label="cgwd" if s == "cgwd" else "strongSwan + BIRD")
        ax.set_xlabel("tunnels")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vpns", default="1,5,10,25", help="VPN connections per run, comma-separated (2 tunnels each)")
    ap.add_argument("--prefixes", type=int, default=4, help="VPC prefixes per VPN connection")
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement per run")
    ap.add_argument("--ike", type=int, choices=(1, 2), default=2)
    ap.add_argument("--ike-proposal", default="aes128-sha1-modp1024",
                    help="every side's IKE proposal (strongSwan syntax; default: AWS's default, DH group 2)")
    ap.add_argument("--esp-proposal", default="aes128-sha1-modp1024", help="every side's ESP proposal (PFS group)")
    ap.add_argument("--stacks", default=",".join(STACKS))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="write a PNG of each figure against the number of tunnels (matplotlib)")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="run cgwd with PYTHONTRACEMALLOC=1 and print where its memory per added tunnel goes "
                         "(tracing slows cgwd and adds memory: the other figures of such a run are not comparable)")
    args = ap.parse_args()
    global TRACEMALLOC
    TRACEMALLOC = args.tracemalloc
    if os.geteuid() != 0:
        print("scale.py: run as root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(v) for v in args.vpns.split(",")]
    stacks = [s for s in args.stacks.split(",") if s]
    if any(s not in STACKS for s in stacks):
        print(f"--stacks: {', '.join(STACKS)}", file=sys.stderr)
        return 2
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(REPO, "cgwd")], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"scale: VPN connections {sizes}, {args.prefixes} prefixes each, IKEv{args.ike} "
          f"({args.ike_proposal}; ESP {args.esp_proposal}), idle window {args.idle:g} s")
    results = []
    for i, v in enumerate(sizes):
        order = stacks if i % 2 == 0 else stacks[::-1]
        for s in order:
            r = measure(s, v, args)
            print(f"{s:9s} {r['tunnels']:3d} tunnels: bring-up {r['bringup_s']:.2f} s, RSS {r['rss_kb'] / 1024:.1f} MiB, "
                  f"idle {r['idle_cpu_ms_per_tunnel_min']:.1f} ms CPU/tunnel/min, status {r['status_cli_ms']:.0f} ms",
                  flush=True)
            results.append(r)
    summary = report(results)
    if TRACEMALLOC:
        summary["memory_per_tunnel"] = memory_slopes(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "summary": summary,
                       "date": time.strftime("%Y-%m-%d"), "machine": os.uname().machine,
                       "cpus": os.cpu_count()}, f, indent=2)
    if args.plot:
        plot(results, args.plot, f"cgwd vs strongSwan + BIRD, IKEv{args.ike} {args.ike_proposal}, "
                                 f"{time.strftime('%Y-%m-%d')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
