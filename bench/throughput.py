"""TCP throughput and ping RTT through cgwd's userspace ESP vs the reference stack, same run.

    .venv/bin/python bench/throughput.py [--seconds 10] [--rounds 2] [--suites aes128-sha1,aes128gcm16]
                                         [--nat] [--tunnels 2] [--only cgwd|reference] [--pps 64,200,1300]
                                         [--trace-rtt]

For each ESP suite one lab is built (strongSwan libipsec + BIRD play the AWS endpoints, in
network namespaces on this machine).  Then, ``--rounds`` times, alternating:

* cgwd as the customer gateway (config imported from the lab's AWS XML, as
  tests/interop/test_cgwd_lab.py does), userspace ESP data path;
* the reference stack (``Lab.start_reference()``: strongSwan libipsec + BIRD on the customer
  side too).

Each gets 50 pings on the idle tunnel, then iperf3 TCP on-prem (10.200.0.10) -> VPC
(10.100.0.10) and the reverse (``-R``).  The table prints Mbit/s, RTT (average and median of
the pings) and cgwd/reference ratios from the same run (medians over the rounds); each
round also shows the TCP retransmissions iperf3 counted and the CPU the customer-side
gateway process (cgwd, or the reference's charon) spent per GB carried (with ``--pps``, also
iperf3 UDP of each payload size each way at 150,000 packets/s offered: packets/s received, loss, CPU per packet): on this shared
2-core machine, where the AWS-side charon competes for the same cores, that is the
steadiest efficiency figure.  All traffic stays inside the lab's namespaces.  Run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cgwd.lab.cli import cgwd_ready, import_config, reference_ready, start_cgwd  # noqa: E402
from cgwd.lab.netns import stop_process, wait_for  # noqa: E402
from cgwd.lab.topology import AwsTunnelSpec, Lab, LabSpec, leftovers  # noqa: E402

SUITES = {"aes128-sha1": "aes128-sha1-modp1024", "aes128gcm16": "aes128gcm16-modp1024"}
PORT = 5201


def gateway_cpu(lab: Lab) -> float:
    """CPU seconds (user + system, all threads) used so far by the customer gateway's data
    path process in the cgw namespace: cgwd, or the reference's charon (libipsec)."""
    total = 0.0
    for pid in lab.cgw.pids():
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            if comm == "charon" or b"cgwd.daemon" in cmd:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total


def iperf(lab: Lab, seconds: int, reverse: bool) -> tuple[float, int, float]:
    """(Mbit/s received, TCP retransmissions, gateway CPU seconds per GB carried) of one
    iperf3 TCP run from the on-prem host."""
    args = ["iperf3", "-c", lab.spec.vpc_host, "-p", str(PORT), "-t", str(seconds), "-J", "-O", "1"]
    if reverse:
        args.append("-R")
    cpu0 = gateway_cpu(lab)
    p = lab.onprem.run(args, check=False, timeout=seconds + 60)
    cpu = gateway_cpu(lab) - cpu0
    try:
        data = json.loads(p.stdout)
        rcv = data["end"]["sum_received"]
        # iperf3's byte count excludes the omitted first second; the CPU figure does not,
        # so this overstates s/GB a little, equally for both stacks
        return rcv["bits_per_second"] / 1e6, data["end"]["sum_sent"].get("retransmits", 0), \
            cpu / (rcv["bytes"] / 1e9) if rcv["bytes"] else 0.0
    except (ValueError, KeyError):
        print(f"  iperf3 failed: {p.stdout[-300:]} {p.stderr[-300:]}", file=sys.stderr)
        return 0.0, 0, 0.0


def udp_rate(lab: Lab, seconds: int, size: int, reverse: bool) -> tuple[float, float, float]:
    """(packets/s received, % lost, gateway CPU microseconds per packet received) of one
    iperf3 UDP run at PPS_OFFERED packets/s with ``size``-byte payloads from the on-prem host (``reverse``:
    the VPC host sends)."""
    # offered: PPS_OFFERED packets/s (AWS rates a tunnel at ~140,000); unlimited (-b 0) starves
    # iperf3's own control connection through the same tunnel and the run fails
    args = ["iperf3", "-c", lab.spec.vpc_host, "-p", str(PORT), "-t", str(seconds), "-J", "-u",
            "-b", str(PPS_OFFERED * size * 8), "-l", str(size)]
    if reverse:
        args.append("-R")
    cpu0 = gateway_cpu(lab)
    p = lab.onprem.run(args, check=False, timeout=seconds + 60)
    cpu = gateway_cpu(lab) - cpu0
    try:
        data = json.loads(p.stdout)
        if data.get("error"):
            raise KeyError(data["error"])
        end = data["end"]
        rx = end.get("sum_received") or end["sum"]
        total = end["sum"]["packets"]
        lost = end["sum"].get("lost_packets", 0)
        got = max(total - lost, 0)
        secs = rx.get("seconds") or seconds
        return got / secs, 100.0 * lost / total if total else 0.0, cpu * 1e6 / got if got else 0.0
    except (ValueError, KeyError):
        err = p.stdout[-300:] if not p.stdout.lstrip().startswith("{") else json.loads(p.stdout).get("error", "?")
        print(f"  iperf3 UDP failed: {err} {p.stderr[-300:]}", file=sys.stderr)
        return 0.0, 0.0, 0.0


def ping_rtt(lab: Lab, count: int, interval: float = 0.1) -> tuple[float, float]:
    """(average, median) RTT in ms of ``count`` pings ``interval`` s apart ((0, 0) when any was
    lost). The median is the steadier figure on a shared machine: one descheduled ping moves
    the average of 50 by a lot. 0.1 s apart is an idle tunnel (caches and the CPU's state cold
    at every ping); 5 ms apart (``rtt_warm``) the same path warm, which separates what the data
    path computes from what waking an idle process costs."""
    p = lab.onprem.run(["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "2", lab.spec.vpc_host],
                       check=False, timeout=count + 30)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", p.stdout)]
    if len(rtts) != count:
        print(f"  ping lost packets: {p.stdout.strip().splitlines()[-2:]}", file=sys.stderr)
        return 0.0, 0.0
    return statistics.fmean(rtts), statistics.median(rtts)


def gateway_latency(lab: Lab, count: int) -> tuple[float, float, float]:
    """--trace-rtt: where an idle ping's round trip goes at the customer gateway. tcpdump in
    the gateway's namespace stamps (ns) each echo request arriving on lan0 and its ESP leaving
    wan0, and the reply's ESP arriving on wan0 and the reply leaving lan0; returns the medians
    in microseconds of (out: lan0 in -> ESP out, in: ESP in -> lan0 out), which hold the
    gateway's wake-up, its crypto and its syscalls and nothing of the AWS side, and of the
    rest (ESP out -> ESP in: the AWS endpoints and the VPC)."""
    path = os.path.join(lab.workdir, f"rtt-trace-{time.monotonic_ns()}.txt")
    td = lab.cgw.popen(["tcpdump", "-i", "any", "-n", "-tt", "--time-stamp-precision=nano", "-l",
                        "icmp or esp or udp port 4500"], log_path=path)
    time.sleep(1.5)
    lab.onprem.run(["ping", "-n", "-c", str(count), "-i", "0.1", "-W", "2", lab.spec.vpc_host],
                   check=False, timeout=count + 30)
    time.sleep(0.5)
    td.send_signal(signal.SIGINT)
    td.wait(10)
    ev = []
    with open(path) as f:
        for ln in f:
            m = re.match(r"(\d+\.\d+) (\S+)\s+(In|Out)\s+(.*)", ln)
            if m:
                rest = m.group(4)
                kind = ("req" if "echo request" in rest else "rep" if "echo reply" in rest
                        else "esp" if "ESP" in rest else None)
                if kind:
                    ev.append((float(m.group(1)), m.group(2), m.group(3), kind))
    outs, ins, away = [], [], []
    for k, (t, dev, way, kind) in enumerate(ev):
        if not (kind == "req" and dev == "lan0" and way == "In"):
            continue
        later = ev[k + 1:k + 12]
        esp_out = next((e[0] for e in later if e[3] == "esp" and e[1] == "wan0" and e[2] == "Out"), None)
        esp_in = next((e[0] for e in later if e[3] == "esp" and e[1] == "wan0" and e[2] == "In"), None)
        rep = next((e[0] for e in later if e[3] == "rep" and e[1] == "lan0" and e[2] == "Out"), None)
        if esp_out:
            outs.append((esp_out - t) * 1e6)
        if esp_in and rep and rep > esp_in:
            ins.append((rep - esp_in) * 1e6)
            if esp_out and esp_in > esp_out:
                away.append((esp_in - esp_out) * 1e6)
    return tuple(statistics.median(x) if x else 0.0 for x in (outs, ins, away))


TRACE_RTT = False           # --trace-rtt
PPS_SIZES: list[int] = []   # --pps: UDP payload sizes for the packet-rate runs
PPS_OFFERED = 150_000       # packets/s the UDP sender offers


def measure(lab: Lab, seconds: int, pings: int) -> dict:
    lab.wait_ping(60)
    # RTT of the idle tunnel first: right after a bulk transfer a single-threaded process
    # that just used a lot of CPU wakes later for a few seconds (kernel scheduler lag), which
    # measures the scheduler rather than the data path.
    time.sleep(2)
    avg, median = ping_rtt(lab, pings)
    _, warm = ping_rtt(lab, 4 * pings, 0.005)
    gw_out, gw_in, gw_away = gateway_latency(lab, pings) if TRACE_RTT else (0.0, 0.0, 0.0)
    up, up_re, up_cpu = iperf(lab, seconds, False)
    down, down_re, down_cpu = iperf(lab, seconds, True)
    res = {"up": up, "down": down, "rtt": avg, "rtt_med": median, "rtt_warm": warm, "gw_out_us": gw_out, "gw_in_us": gw_in, "gw_away_us": gw_away, "retrans": (up_re, down_re),
           "cpu_up": up_cpu, "cpu_down": down_cpu}
    for size in PPS_SIZES:
        for way, rev in (("up", False), ("down", True)):
            pps, loss, us = udp_rate(lab, seconds, size, rev)
            res[f"pps{size}_{way}"], res[f"loss{size}_{way}"], res[f"us{size}_{way}"] = pps, loss, us
    return res


def aws_clear(lab: Lab) -> None:
    wait_for(lambda: all("INSTALLED" not in t.charon.list_sas() for t in lab.tunnels), 60,
             what="the AWS endpoints to drop the previous customer's SAs")


def run_cgwd(lab: Lab, config: str, seconds: int, pings: int) -> dict:
    proc = start_cgwd(lab, config)
    try:
        wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 90, interval=0.5, what="cgwd ready")
        if proc.poll() is not None:
            raise RuntimeError(open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:])
        return measure(lab, seconds, pings)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except Exception:  # noqa: BLE001
            stop_process(proc)
        lab.procs.remove(proc)
        aws_clear(lab)


def run_reference(lab: Lab, seconds: int, pings: int) -> dict:
    lab.start_reference()
    try:
        wait_for(lambda: reference_ready(lab), 90, interval=0.5, what="reference stack ready")
        return measure(lab, seconds, pings)
    finally:
        lab.stop_reference()
        for t in lab.tunnels:
            try:
                t.charon.swanctl("--terminate", "--ike", "aws", check=False, timeout=30)
            except Exception:  # noqa: BLE001
                pass
        aws_clear(lab)  # (ipsec0, its addresses and BIRD's routes through it went with charon)


def bench_suite(name: str, proposal: str, a) -> dict:
    prefix = f"tp{os.getpid() % 1000}{name[-2:]}"[:10]
    spec = LabSpec(prefix=prefix, tunnels=a.tunnels, nat=a.nat,
                   aws=[AwsTunnelSpec(esp_proposals=proposal) for _ in range(a.tunnels)])
    lab = Lab(spec)
    res = {"cgwd": [], "reference": []}
    try:
        lab.up()
        # bound to the VPC host: a UDP reply must come from the address the client sent to
        lab.procs.append(lab.vpc.popen(["iperf3", "-s", "-p", str(PORT), "-B", spec.vpc_host]))
        config = import_config(lab)
        for r in range(a.rounds):
            for who in ("cgwd", "reference"):
                if a.only and who != a.only:
                    continue
                m = (run_cgwd(lab, config, a.seconds, a.pings) if who == "cgwd"
                     else run_reference(lab, a.seconds, a.pings))
                print(f"  {name:12s} round {r + 1} {who:9s}: up {m['up']:7.1f} Mbit/s  down {m['down']:7.1f}"
                      f" Mbit/s  rtt avg {m['rtt']:.3f} med {m['rtt_med']:.3f} warm {m['rtt_warm']:.3f} ms  (TCP retransmits {m['retrans'][0]}/"
                      f"{m['retrans'][1]}; gateway CPU s/GB {m['cpu_up']:.2f}/{m['cpu_down']:.2f})", flush=True)
                for size in PPS_SIZES:
                    print(f"  {'':12s}         {who:9s}: UDP {size} B: up {m[f'pps{size}_up']:8.0f} pkt/s "
                          f"({m[f'loss{size}_up']:.1f} % lost, {m[f'us{size}_up']:.1f} us CPU/pkt)  down "
                          f"{m[f'pps{size}_down']:8.0f} pkt/s ({m[f'loss{size}_down']:.1f} % lost, "
                          f"{m[f'us{size}_down']:.1f} us CPU/pkt)", flush=True)
                res[who].append(m)
    finally:
        lab.down()
        left = leftovers(prefix)
        if left:
            print(f"  WARNING: lab {prefix} left {left}", file=sys.stderr)
    return res


def med(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r[key] > 0]
    return statistics.median(vals) if vals else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--tunnels", type=int, default=2)
    ap.add_argument("--nat", action="store_true")
    ap.add_argument("--only", choices=("cgwd", "reference"))
    ap.add_argument("--pps", default="", help="UDP payload sizes for packet-rate runs, e.g. 64,200,1300 "
                    "(iperf3 UDP at 150,000 pkt/s offered each way: packets/s received, loss, gateway CPU per packet)")
    ap.add_argument("--trace-rtt", action="store_true",
                    help="also time each idle ping at the gateway with tcpdump: lan0 -> ESP out, ESP in -> lan0")
    a = ap.parse_args()
    global TRACE_RTT
    TRACE_RTT = a.trace_rtt
    PPS_SIZES[:] = [int(x) for x in a.pps.split(",") if x]
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} load {os.getloadavg()[0]:.2f}, {os.cpu_count()} cpus, "
          f"iperf3 {a.seconds}s x {a.rounds} rounds, {'NAT' if a.nat else 'direct'}, {a.tunnels} tunnels")
    table = []
    for name in a.suites.split(","):
        res = bench_suite(name, SUITES[name], a)
        table.append((name, res))
    print(f"\n{'suite':12s} {'stack':9s} {'up Mbit/s':>10s} {'down Mbit/s':>11s} {'rtt avg ms':>10s}"
          f" {'rtt med ms':>10s} {'CPU s/GB up':>11s} {'down':>5s}")
    for name, res in table:
        for who in ("cgwd", "reference"):
            if res[who]:
                print(f"{name:12s} {who:9s} {med(res[who], 'up'):10.1f} {med(res[who], 'down'):11.1f}"
                      f" {med(res[who], 'rtt'):10.3f} {med(res[who], 'rtt_med'):10.3f}"
                      f" {med(res[who], 'cpu_up'):11.2f} {med(res[who], 'cpu_down'):5.2f}")
        if res["cgwd"] and res["reference"]:
            ratio = []
            for k in ("up", "down", "rtt", "rtt_med", "cpu_up", "cpu_down"):
                ref = med(res["reference"], k)
                ratio.append(med(res["cgwd"], k) / ref if ref else float("nan"))
            print(f"{name:12s} {'ratio':9s} {ratio[0]:10.2f} {ratio[1]:11.2f} {ratio[2]:10.2f} {ratio[3]:10.2f}"
                  f" {ratio[4]:11.2f} {ratio[5]:5.2f}")
    for name, res in table:
        if res["cgwd"] and res["reference"]:
            c, r = med(res["cgwd"], "rtt_warm"), med(res["reference"], "rtt_warm")
            print(f"{name:12s} RTT median, pings 5 ms apart (warm): {c:.3f} vs {r:.3f} ms"
                  f" ({c / r if r else float('nan'):.2f}); 0.1 s apart (idle): {med(res['cgwd'], 'rtt_med'):.3f}"
                  f" vs {med(res['reference'], 'rtt_med'):.3f} ms")
            if TRACE_RTT:
                print(f"{name:12s} at the gateway (tcpdump, idle pings, median us): out lan0 -> ESP "
                      f"{med(res['cgwd'], 'gw_out_us'):.1f} vs {med(res['reference'], 'gw_out_us'):.1f}, in ESP -> lan0 "
                      f"{med(res['cgwd'], 'gw_in_us'):.1f} vs {med(res['reference'], 'gw_in_us'):.1f}; beyond the "
                      f"gateway (ESP out -> ESP in) {med(res['cgwd'], 'gw_away_us'):.1f} vs "
                      f"{med(res['reference'], 'gw_away_us'):.1f}")
        for size in PPS_SIZES:
            cols = []
            for way in ("up", "down"):
                c, r = med(res["cgwd"], f"pps{size}_{way}"), med(res["reference"], f"pps{size}_{way}")
                cu, ru = med(res["cgwd"], f"us{size}_{way}"), med(res["reference"], f"us{size}_{way}")
                cols.append(f"{way} {c:.0f} vs {r:.0f} pkt/s ({c / r if r else float('nan'):.2f}), CPU/pkt "
                            f"{cu:.1f} vs {ru:.1f} us ({cu / ru if ru else float('nan'):.2f})")
            print(f"{name:12s} UDP {size:4d} B: " + "; ".join(cols))
    print("(ratio = cgwd/reference, same run; targets: throughput >= 1.0, RTT <= 1.2; CPU s/GB is the"
          " customer-side gateway process's CPU per GB carried: lower is better)")
    print(f"# end load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
