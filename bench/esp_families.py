"""TCP throughput through cgwd's userspace ESP in the four combinations of inner and outer
family (IPv4/IPv6 inside, IPv4/IPv6 outside), plain ESP and ESP-in-UDP, same run.

    .venv/bin/python bench/esp_families.py [--seconds 10] [--suite aes128gcm16] [--dry-run]

Two network namespaces joined by a veth with IPv4 and IPv6 addresses; one
tests/interop/esp_userspace_peer.py in each (hand-made SA pairs, no IKE, as the self-interop
test); iperf3 TCP between the TUN inside addresses (169.254.10.x or fd00:10::x), both
directions, for each combination. Prints Mbit/s per combination and direction and the
tunnel MTU the data path chose, so the IPv6 fast path can be compared with the IPv4 one on
the same machine in the same run. ``--dry-run`` builds each combination, pings once through
it and tears it down (a check of the set-up, no measurement). Run as root; all traffic stays
inside the namespaces it creates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "interop"))

PEER = ROOT / "tests" / "interop" / "esp_userspace_peer.py"
PY = sys.executable
OUT = {4: ("198.51.100.1", "198.51.100.2", 24), 6: ("2001:db8:1::1", "2001:db8:1::2", 64)}
INSIDE = {4: ("169.254.10.2/30", "169.254.10.1/30"), 6: ("fd00:10::2/126", "fd00:10::1/126")}
COMBOS = [(4, 4, True), (6, 4, True), (4, 6, False), (6, 6, False), (6, 6, True)]


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def keys(enc: str, integ: str | None) -> tuple[dict, dict]:
    from cgwd.ipsec_sa import ENC_KEY_BYTES, GCM_SALT_BYTES, INTEG_KEY_BYTES, is_aead

    kl = ENC_KEY_BYTES[enc] + (GCM_SALT_BYTES if is_aead(enc) else 0)
    ik = INTEG_KEY_BYTES[integ] if integ else 0
    k1, k2, i1, i2 = (os.urandom(n).hex() for n in (kl, kl, ik, ik))
    a = dict(spi_in=0xA0000001, spi_out=0xB0000001, encryption=enc, integrity=integ, enc_key_in=k1,
             enc_key_out=k2, integ_key_in=i1, integ_key_out=i2)
    b = dict(spi_in=0xB0000001, spi_out=0xA0000001, encryption=enc, integrity=integ, enc_key_in=k2,
             enc_key_out=k1, integ_key_in=i2, integ_key_out=i1)
    return a, b


class Peer:
    def __init__(self, ns: str, cfg: dict) -> None:
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, PY, str(PEER)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.p.stdin.write(json.dumps(cfg) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline().strip()
        if line != "READY":
            self.p.kill()
            raise RuntimeError(f"peer in {ns}: {line} {self.p.stderr.read()[-1000:]}")

    def stats(self) -> dict:
        self.p.stdin.write(json.dumps({"op": "stats"}) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def finish(self) -> dict:
        self.p.stdin.close()
        out = self.p.stdout.read()
        self.p.wait(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def iperf(a: str, b: str, dst: str, seconds: int, reverse: bool) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", b, "iperf3", "-s", "-1", "-B", dst], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        args = ["ip", "netns", "exec", a, "iperf3", "-J", "-c", dst, "-t", str(seconds)] + (["-R"] if reverse else [])
        res = json.loads(sh(*args).stdout)
        return res["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        srv.wait(timeout=seconds + 30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--suite", default="aes128gcm16", help="aes128gcm16, aes256gcm16, aes128-sha1, ...")
    ap.add_argument("--dry-run", action="store_true", help="build and ping each combination, measure nothing")
    args = ap.parse_args()
    enc, _, integ = args.suite.partition("-")
    tag = f"{os.getpid() % 100000}"
    a, b = f"esbA{tag}", f"esbB{tag}"
    rows = []
    for ns in (a, b):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", "ebA" + tag, "netns", a, "type", "veth", "peer", "name", "ebB" + tag, "netns", b)
        for ns, dev, i in ((a, "ebA" + tag, 0), (b, "ebB" + tag, 1)):
            sh("ip", "-n", ns, "addr", "add", f"{OUT[4][i]}/{OUT[4][2]}", "dev", dev)
            sh("ip", "-n", ns, "-6", "addr", "add", f"{OUT[6][i]}/{OUT[6][2]}", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for inner, outer, udp in COMBOS:
            pa, pb = keys(enc, integ or None)
            ts = "::/0" if inner == 6 else None
            A = Peer(a, dict(ifname="cgw-bA", inside=INSIDE[inner][0], local_address=OUT[outer][0],
                             remote_address=OUT[outer][1], pairs=[pa], udp_encap=udp, ts=ts))
            B = Peer(b, dict(ifname="cgw-bB", inside=INSIDE[inner][1], local_address=OUT[outer][1],
                             remote_address=OUT[outer][0], pairs=[pb], udp_encap=udp, ts=ts))
            dst = INSIDE[inner][1].split("/")[0]
            label = f"IPv{inner} in IPv{outer} {'ESP-in-UDP' if udp else 'plain ESP'}"
            try:
                ok = " 0% packet loss" in sh("ip", "netns", "exec", a, "ping", f"-{inner}", "-c", "1", "-W", "2", dst,
                                             check=False).stdout
                mtu = A.stats()["mtu"]
                if args.dry_run:
                    rows.append((label, mtu, "ping ok" if ok else "PING FAILED", ""))
                else:
                    up = iperf(a, b, dst, args.seconds, False)
                    down = iperf(a, b, dst, args.seconds, True)
                    rows.append((label, mtu, f"{up:8.1f}", f"{down:8.1f}"))
            finally:
                A.finish()
                B.finish()
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)
    print(f"suite {args.suite}, {args.seconds} s per direction" if not args.dry_run else f"suite {args.suite}, dry run")
    print(f"{'combination':34} {'MTU':>5} {'A->B Mbit/s':>12} {'B->A Mbit/s':>12}")
    for label, mtu, up, down in rows:
        print(f"{label:34} {mtu:>5} {up:>12} {down:>12}")
    return 0 if all("FAILED" not in r[2] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
