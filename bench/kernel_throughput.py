"""TCP throughput through cgwd's KERNEL (XFRM) data path vs its userspace data path, same run.

    .venv/bin/python bench/kernel_throughput.py [--seconds 10] [--rounds 2] [--no-reference]

The host kernel has no ESP, so this boots the Debian kernel of scripts/install-qemu.sh under
QEMU (TCG, software emulation: absolute figures are low, the ratios are what matter) and runs
itself inside the guest (``--in-guest``). There, one lab (one AWS endpoint: strongSwan with the
kernel's IPsec + BIRD; ESP-in-UDP so that every stack speaks the same wire format), and,
``--rounds`` times, alternating in the same guest:

* cgwd with ``datapath = "kernel"`` (xfrm interface, the kernel does ESP);
* cgwd with ``datapath = "userspace"`` (TUN, ESP in Python);
* strongSwan with the kernel's IPsec + BIRD as the customer gateway, its xfrm interface set
  up as cgwd sets up its own (MTU 1436, TCP MSS clamped to 1379): the reference; skip with
  ``--no-reference``.

Each gets iperf3 TCP on-prem (10.200.0.10) -> VPC (10.100.0.10) for ``--seconds``, and 20
pings. Prints Mbit/s, RTT and the ratios kernel/userspace and kernel/reference (medians of the
rounds). All traffic stays inside the guest's namespaces. Run as root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "qemu"))

PORT = 5201
STACKS = ("kernel", "userspace", "reference")


# ------------------------------------------------------------------ inside the guest
def guest_main(a) -> int:
    from cgwd.lab.cli import cgwd_ready, import_config, reference_ready, start_cgwd
    from cgwd.lab.netns import stop_process, wait_for
    from cgwd.lab.topology import Lab, LabSpec, leftovers
    from cgwd.esp.kernel import mss_rule_args
    from guest_xfrm import slow_lab_waits

    slow_lab_waits()

    for m in ("esp4", "xfrm_interface", "xfrm_user", "authenc", "cbc", "aesni_intel", "sha1_generic", "hmac",
              "tun", "veth", "iptable_nat"):
        subprocess.run(["modprobe", m], capture_output=True)
    out_path = os.path.join(a.out, "bench.json")
    res: dict = {"rounds": [], "kernel": os.uname().release, "cpus": os.cpu_count()}

    def save():
        with open(out_path, "w") as f:
            json.dump(res, f, indent=1)

    def iperf(lab) -> float:
        p = lab.onprem.run(["iperf3", "-c", lab.spec.vpc_host, "-p", str(PORT), "-t", str(a.seconds), "-J",
                            "-O", "1"], check=False, timeout=a.seconds + 90)
        try:
            return json.loads(p.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
        except (ValueError, KeyError):
            print(f"  iperf3 failed: {p.stdout[-300:]} {p.stderr[-300:]}", flush=True)
            return 0.0

    def rtt(lab) -> float:
        p = lab.onprem.run(["ping", "-n", "-q", "-c", "20", "-i", "0.1", "-W", "2", lab.spec.vpc_host],
                           check=False, timeout=60)
        m = re.search(r"= [\d.]+/([\d.]+)/", p.stdout)
        return float(m.group(1)) if m and " 0% packet loss" in p.stdout else 0.0

    def aws_clear(lab):
        wait_for(lambda: all("INSTALLED" not in t.charon.list_sas() for t in lab.tunnels), 90,
                 what="the AWS endpoint to drop the previous customer's SAs")

    def run_cgwd(lab, config) -> dict:
        proc = start_cgwd(lab, config)
        try:
            wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 240, interval=1, what="cgwd ready")
            if proc.poll() is not None:
                raise RuntimeError(open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:])
            lab.wait_ping(90)
            return {"mbps": iperf(lab), "rtt_ms": rtt(lab)}
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                stop_process(proc)
            lab.procs.remove(proc)
            aws_clear(lab)

    def run_reference(lab) -> dict:
        lab.start_reference(kernel_ipsec=True)
        # configured as AWS recommends and as cgwd configures itself: tunnel MTU 1436, MSS 1379
        lab.cgw.ip("link set ipsec0 mtu 1436")
        for args in mss_rule_args("ipsec0", 1379):
            lab.cgw.run(["iptables", "-w", "5", "-t", "mangle", "-A", *args])
        try:
            wait_for(lambda: reference_ready(lab), 240, interval=1, what="reference stack ready")
            lab.wait_ping(90)
            return {"mbps": iperf(lab), "rtt_ms": rtt(lab)}
        finally:
            for args in mss_rule_args("ipsec0", 1379):
                lab.cgw.run(["iptables", "-w", "5", "-t", "mangle", "-D", *args], check=False)
            lab.stop_reference()
            for t in lab.tunnels:
                t.charon.swanctl("--terminate", "--ike", "aws", check=False, timeout=30)
            aws_clear(lab)

    prefix = f"kb{os.getpid() % 1000}"
    lab = Lab(LabSpec(prefix=prefix, tunnels=1, aws_kernel_ipsec=True, aws_encap=True))
    try:
        lab.up()
        lab.procs.append(lab.vpc.popen(["iperf3", "-s", "-p", str(PORT)]))
        base = open(import_config(lab)).read()
        configs = {}
        for kind in ("kernel", "userspace"):
            configs[kind] = os.path.join(lab.workdir, f"cgwd-{kind}.toml")
            with open(configs[kind], "w") as f:
                f.write(base.replace('datapath = "auto"', f'datapath = "{kind}"'))
        stacks = [s for s in STACKS if not (s == "reference" and a.no_reference)]
        for r in range(a.rounds):
            for stack in stacks:
                t0 = time.monotonic()
                try:
                    m = run_reference(lab) if stack == "reference" else run_cgwd(lab, configs[stack])
                except Exception as exc:  # noqa: BLE001 - reported, the other stacks still run
                    m = {"mbps": 0.0, "rtt_ms": 0.0, "error": str(exc)[-1500:]}
                m.update(stack=stack, round=r + 1, seconds=round(time.monotonic() - t0, 1))
                print(f"  round {r + 1} {stack:9s}: {m['mbps']:8.1f} Mbit/s  rtt {m['rtt_ms']:.2f} ms"
                      + (f"  ERROR {m['error'][-300:]}" if "error" in m else ""), flush=True)
                res["rounds"].append(m)
                save()
    finally:
        lab.down()
        res["leftovers"] = leftovers(prefix)
        save()
    return 0


# ------------------------------------------------------------------ on the host
def med(rows, stack, key) -> float:
    vals = [r[key] for r in rows if r["stack"] == stack and r[key] > 0]
    return statistics.median(vals) if vals else 0.0


def host_main(a) -> int:
    import qemu_vm

    reason = qemu_vm.skip_reason()
    if reason:
        print(f"kernel_throughput: cannot boot the guest: {reason}", file=sys.stderr)
        return 2
    out = tempfile.mkdtemp(prefix="cgwd-kbench-")
    me = shlex.quote(str(Path(__file__).resolve()))
    py = shlex.quote(os.path.join(qemu_vm.VENV_BIN, "python"))
    cmd = (f"cd {shlex.quote(str(REPO))} && {py} {me} --in-guest --out {shlex.quote(out)} "
           f"--seconds {a.seconds} --rounds {a.rounds}" + (" --no-reference" if a.no_reference else ""))
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} host load {os.getloadavg()[0]:.2f}; booting "
          f"{qemu_vm.kernel_image()[1]} under QEMU (TCG); iperf3 {a.seconds}s x {a.rounds} rounds", flush=True)
    run = qemu_vm.run_in_guest(cmd, timeout=a.timeout, rwdir=out, log_path=os.path.join(out, "console.log"))
    try:
        res = json.load(open(os.path.join(out, "bench.json")))
    except (OSError, ValueError):
        print(run.output[-5000:])
        print(f"kernel_throughput: no results from the guest (exit {run.returncode}, "
              f"timed out {run.timed_out}); console above", file=sys.stderr)
        return 1
    for line in run.output.splitlines():
        if line.startswith("  round "):
            print(line)
    rows = res["rounds"]
    print(f"\nguest kernel {res['kernel']}, {res['cpus']} vCPUs (TCG); whole run {run.seconds:.0f}s")
    print(f"{'stack (customer side)':34s} {'Mbit/s':>8s} {'rtt ms':>7s}")
    names = {"kernel": "cgwd, kernel XFRM data path", "userspace": "cgwd, userspace data path",
             "reference": "strongSwan kernel IPsec + BIRD"}
    for s in STACKS:
        if any(r["stack"] == s for r in rows):
            print(f"{names[s]:34s} {med(rows, s, 'mbps'):8.1f} {med(rows, s, 'rtt_ms'):7.2f}")
    k, u, ref = (med(rows, s, "mbps") for s in STACKS)
    if k and u:
        print(f"ratio kernel / userspace (throughput): {k / u:.2f}")
    if k and ref:
        print(f"ratio cgwd kernel / strongSwan kernel (throughput): {k / ref:.2f}")
    if res.get("leftovers"):
        print(f"WARNING: the guest lab left {res['leftovers']}")
    errors = [r for r in rows if "error" in r]
    if errors or not (k and u):
        print(f"guest output kept in {out} (console.log, bench.json)")
        return 1
    shutil.rmtree(out, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-reference", action="store_true", help="skip strongSwan as the customer side")
    ap.add_argument("--timeout", type=float, default=1500, help="bound on the whole guest run (s)")
    ap.add_argument("--in-guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    return guest_main(a) if a.in_guest else host_main(a)


if __name__ == "__main__":
    sys.exit(main())
