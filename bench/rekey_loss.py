"""Packets lost across phase-2 rekeys: cgwd vs. the reference stack, in the same run.

    sudo .venv/bin/python bench/rekey_loss.py [--rate 1000] [--rekeys 10] [--spacing 6] [--ike 2]

Builds the lab with one AWS endpoint (strongSwan + BIRD). A UDP flow of --rate packets/s
with sequence numbers runs from the on-prem host (10.200.0.10) to a receiver on the VPC
host (10.100.0.10) while --rekeys phase-2 rekeys happen, --spacing seconds apart,
alternately started by the AWS side (`swanctl --rekey` on its charon) and by the customer
gateway (`cgwctl rekey` for cgwd; `swanctl --rekey` on the customer charon for the
reference). First with cgwd as the customer gateway (configured by `cgwctl import aws`),
then, in the same lab, with the reference stack (strongSwan + BIRD, `Lab.start_reference`).

Prints, per stack: packets sent, lost (never received), the loss bursts with their time
relative to the nearest rekey, losses within 2 s of a rekey, and the ratio of losses
cgwd / reference. Target: zero lost through cgwd. ``--ike 2``: both sides speak IKEv2 (AWS's
endpoint, cgwd configured from the describe-vpn-connections JSON, and the reference charon),
so the rekeys are CREATE_CHILD_SA exchanges.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cgwd.lab.cli import (  # noqa: E402
    cgwctl_command, cgwctl_status, cgwd_ready, import_config, reference_ready, start_cgwd,
)
from cgwd.lab.netns import LabError, run, stop_process, wait_for  # noqa: E402
from cgwd.lab.topology import Lab, LabSpec  # noqa: E402

PORT = 39999

SENDER = r"""
import json, socket, struct, sys, time
dst, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pad = b"\0" * 100
t0 = time.monotonic()
n = 0
errors = 0
total = int(rate * seconds)
while n < total:
    due = t0 + n / rate
    now = time.monotonic()
    if now < due:
        time.sleep(due - now)
    try:
        s.sendto(struct.pack("!Q", n) + pad, (dst, port))
    except OSError:
        errors += 1
    n += 1
t1 = time.monotonic()
for _ in range(20):
    try:
        s.sendto(b"END" + struct.pack("!Q", n), (dst, port))
    except OSError:
        pass
    time.sleep(0.05)
print(json.dumps({"sent": n, "t0": t0, "t1": t1, "send_errors": errors}), flush=True)
"""

RECEIVER = r"""
import json, select, socket, struct, sys, time
addr, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((addr, port))
print("ready", flush=True)
seen = bytearray()
dups = 0
got = 0
end = None
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    r, _, _ = select.select([s], [], [], 0.5)
    if not r:
        if end is not None:
            break
        continue
    data = s.recv(2048)
    if data[:3] == b"END":
        end = struct.unpack("!Q", data[3:11])[0]
        continue
    seq = struct.unpack("!Q", data[:8])[0]
    if seq >= len(seen):
        seen.extend(b"\0" * (seq + 1 - len(seen) + 4096))
    if seen[seq]:
        dups += 1
    else:
        seen[seq] = 1
        got += 1
n = end if end is not None else len(seen)
missing = [i for i in range(n) if i >= len(seen) or not seen[i]]
print(json.dumps({"received": got, "duplicates": dups, "end": end, "missing": missing}), flush=True)
"""


def bursts(missing: list[int]) -> list[tuple[int, int]]:
    """(first seq, length) of each run of consecutive lost packets."""
    out: list[tuple[int, int]] = []
    for s in missing:
        if out and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((s, 1))
    return out


def run_flow(lab: Lab, rate: float, seconds: float, rekey_at: list[float], do_rekey, log,
             both_ways: bool = False) -> dict:
    """Run the flow(s) for `seconds`; call do_rekey(i) at the offsets in rekey_at; analyse loss.

    One flow on-prem -> VPC; with both_ways a second one VPC -> on-prem at the same time.
    """
    flows = [("on-prem -> VPC", lab.onprem, lab.vpc, lab.spec.vpc_host, PORT)]
    if both_ways:
        flows.append(("VPC -> on-prem", lab.vpc, lab.onprem, lab.spec.onprem_host, PORT + 1))
    procs = []
    try:
        for _name, _src, dst_ns, dst, port in flows:
            recv = subprocess.Popen(dst_ns.cmd([sys.executable, "-c", RECEIVER, dst, str(port), str(seconds + 60)]),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            procs.append(recv)
            assert recv.stdout.readline().strip() == "ready"
        senders = []
        for _name, src_ns, _dst_ns, dst, port in flows:
            send = subprocess.Popen(src_ns.cmd([sys.executable, "-c", SENDER, dst, str(port), str(rate),
                                                str(seconds)]),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True)
            procs.append(send)
            senders.append(send)
        start = time.monotonic()
        when: list[tuple[float, str]] = []
        for i, off in enumerate(rekey_at):
            delay = start + off - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t = time.monotonic()
            who = do_rekey(i)
            when.append((t, who))
            log(f"  rekey {i + 1:2d} by {who:<10s} at {t - start:5.1f}s")
        out = {}
        for k, (name, *_rest) in enumerate(flows):
            so, _ = senders[k].communicate(timeout=seconds + 120)
            sender = json.loads(so.strip().splitlines()[-1])
            ro, _ = procs[k].communicate(timeout=90)
            receiver = json.loads(ro.strip().splitlines()[-1])
            out[name] = analyse(sender, receiver, rate, when)
    finally:
        for p in procs:
            stop_process(p)
    return out


def analyse(sender: dict, receiver: dict, rate: float, when: list[tuple[float, str]]) -> dict:
    sent = sender["sent"]
    missing = [m for m in receiver["missing"] if m < sent]
    t0 = sender["t0"]
    near = 0
    detail = []
    for first, length in bursts(missing):
        t = t0 + first / rate
        nearest = min(when, key=lambda w: abs(w[0] - t)) if when else None
        rel = t - nearest[0] if nearest else float("nan")
        if nearest and -0.5 <= rel <= 2.0:
            near += length
        detail.append((t - t0, length, rel, nearest[1] if nearest else "-"))
    return {"sent": sent, "lost": len(missing), "near_rekey": near, "bursts": detail,
            "duplicates": receiver["duplicates"], "send_errors": sender["send_errors"]}


def swan_rekey(charon, child: str) -> None:
    out = charon.swanctl("--rekey", "--child", child, check=False)
    if "failed" in out.lower():
        raise LabError(f"swanctl --rekey --child {child}: {out.strip()}")


def report(name: str, flows: dict, log) -> None:
    for direction, r in flows.items():
        pct = 100.0 * r["lost"] / max(r["sent"], 1)
        log(f"{name} {direction}: sent {r['sent']}, lost {r['lost']} ({pct:.3f} %), of which within "
            f"-0.5..+2 s of a rekey: {r['near_rekey']}; duplicates {r['duplicates']}, "
            f"sender errors {r['send_errors']}")
        for t, n, rel, who in r["bursts"][:20]:
            log(f"    burst of {n} at {t:6.2f}s ({rel:+.2f}s from the rekey by {who})")
        if len(r["bursts"]) > 20:
            log(f"    ... {len(r['bursts']) - 20} more bursts")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1000, help="packets per second (default 1000)")
    ap.add_argument("--rekeys", type=int, default=10, help="phase-2 rekeys per stack (default 10)")
    ap.add_argument("--spacing", type=float, default=6.0, help="seconds between rekeys (default 6)")
    ap.add_argument("--both-ways", action="store_true",
                    help="a second flow VPC -> on-prem at the same rate, at the same time")
    ap.add_argument("--ike", type=int, choices=(1, 2), default=1, help="IKE version of both sides (default 1)")
    ap.add_argument("--prefix", default=f"rk{os.getpid() % 1000}")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("rekey_loss: needs root (network namespaces)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    offsets = [3.0 + i * args.spacing for i in range(args.rekeys)]
    seconds = offsets[-1] + args.spacing
    lab = Lab(LabSpec(prefix=args.prefix, tunnels=1, ike_version=args.ike))
    results = {}
    try:
        log(f"lab {args.prefix}: one AWS endpoint (strongSwan + BIRD, IKEv{args.ike}); flow {args.rate:.0f} packets/s "
            f"for {seconds:.0f}s, {args.rekeys} phase-2 rekeys {args.spacing:.0f}s apart, alternating sides")
        lab.up()
        aws = lab.tunnels[0].charon
        # ---------------------------------------------------------------- cgwd
        config = import_config(lab)
        proc = start_cgwd(lab, config)
        wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 120, interval=0.5, what="cgwd ready")
        if proc.poll() is not None:
            raise LabError("cgwd exited; see " + os.path.join(lab.workdir, "cgwd.log"))
        lab.wait_ping(60)
        name = cgwctl_status(lab, as_json=True)["tunnels"][0]["name"]
        sock = os.path.join(lab.workdir, "cgwd.sock")

        def cgwd_rekey(i: int) -> str:
            if i % 2 == 0:
                swan_rekey(aws, "vti")
                return "AWS side"
            p = run(cgwctl_command("rekey", name, "--socket", sock), check=False)
            if p.returncode != 0:
                raise LabError(f"cgwctl rekey: {p.stdout}{p.stderr}")
            return "cgwd"

        log("cgwd:")
        before = cgwctl_status(lab, as_json=True)["tunnels"][0]
        results["cgwd"] = run_flow(lab, args.rate, seconds, offsets, cgwd_rekey, log, args.both_ways)
        time.sleep(args.spacing)
        after = cgwctl_status(lab, as_json=True)
        t = after["tunnels"][0]
        counted = (t["ike"]["counters"].get("rekeys_ipsec", 0) - before["ike"]["counters"].get("rekeys_ipsec", 0))
        report("cgwd", results["cgwd"], log)
        log(f"    phase-2 rekeys counted by cgwd: {counted}; data path drops {t['ipsec']['drops']}, "
            f"per SA {[s['drops'] for s in t['ipsec']['sas']]}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        wait_for(lambda: "ESTABLISHED" not in aws.list_sas(), 30, what="the AWS side to drop cgwd's SAs")
        # ---------------------------------------------------------------- reference
        lab.start_reference()
        wait_for(lambda: reference_ready(lab), 120, interval=0.5, what="reference stack ready")
        lab.wait_ping(60)

        def ref_rekey(i: int) -> str:
            if i % 2 == 0:
                swan_rekey(aws, "vti")
                return "AWS side"
            swan_rekey(lab.ref_charon, "tun1")
            return "reference"

        log("reference (strongSwan + BIRD):")
        results["reference"] = run_flow(lab, args.rate, seconds, offsets, ref_rekey, log, args.both_ways)
        report("reference", results["reference"], log)
    finally:
        lab.down()
    for direction in results["cgwd"]:
        c, r = results["cgwd"][direction]["lost"], results["reference"][direction]["lost"]
        ratio = "n/a (reference lost none)" if r == 0 else f"{c / r:.2f}"
        log(f"{direction}: lost packets cgwd / reference: {c} / {r} = {ratio}  (target: 0 through cgwd)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
