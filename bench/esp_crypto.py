"""ESP per-packet crypto cost vs. `openssl speed` on the same machine.

    .venv/bin/python bench/esp_crypto.py [--packets N] [--size 1400]

Encrypt: EspEncoder.encrypt(inner) -> ESP bytes; decrypt: EspDecoder.decrypt (incl.
ICV check, replay window, padding check): the calls the userspace data path makes per
packet.  OpenSSL reference, per direction: `openssl speed -evp aes-128-cbc` (and with
`-decrypt`), `-hmac sha1`, `-evp aes-128-gcm` / `aes-256-gcm` (and with `-decrypt`),
1024-byte column; the CBC+HMAC limit is 1/(1/cbc + 1/hmac) with the CBC figure of that
direction (CBC decryption is parallel and much faster than encryption, so the decrypt
limit is mostly HMAC).  Ratio = ours / openssl of the same direction.

The machine is shared (labs of other runs, 2 cores), so both sides are measured as the
best of several short trials (``--trials``; openssl: best of 3 one-second runs), each
suite's OpenSSL reference right before its own measurement.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cgwd.esp.packet import EspDecoder, EspEncoder  # noqa: E402
from cgwd.esp.sa import SaPair  # noqa: E402
from cgwd.ipsec_sa import IpsecSaPair  # noqa: E402

SUITES = [("aes128", "sha1", "AES-128-CBC + HMAC-SHA1-96"),
          ("aes128gcm16", None, "AES-128-GCM-16"),
          ("aes256gcm16", None, "AES-256-GCM-16")]


def openssl_speed(args: list[str], block: int = 1024, seconds: int = 1) -> float | None:
    """MB/s (10^6 bytes) from `openssl speed ... -bytes block`."""
    try:
        out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "-bytes", str(block), *args],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln for ln in out.splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.search(r"([\d.]+)k\s*$", ln)
        if m:
            return float(m.group(1)) * 1000 / 1e6
    return None


def pair_for(enc, integ):
    kl = {"aes128": 16, "aes128gcm16": 20, "aes256gcm16": 36}[enc]
    ik = 20 if integ else 0
    k, i = os.urandom(kl), os.urandom(ik)
    return IpsecSaPair(0x1001, 0x1001, enc, integ, k, k, i, i)


def bench_suite(enc, integ, n, size, trials):
    """Best-of-``trials`` seconds per packet for encrypt and for decrypt."""
    sp = SaPair(pair_for(enc, integ), replay_window=1024)
    e = EspEncoder(sp.outbound)
    inner = b"\x45" + os.urandom(size - 1)
    for _ in range(1000):
        e.encrypt(inner)
    encrypt = e.encrypt
    per = max(n // trials, 1000)
    best_enc = best_dec = float("inf")
    # decrypt fresh packets (sequence numbers must be new), generated untimed
    sp2 = SaPair(sp.pair, replay_window=1024)
    e2, d2 = EspEncoder(sp2.outbound), EspDecoder(sp2.inbound)
    decrypt = d2.decrypt
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(per):
            encrypt(inner)
        best_enc = min(best_enc, (time.perf_counter() - t0) / per)
        chunk = [e2.encrypt(inner) for _ in range(per)]
        t0 = time.perf_counter()
        for p in chunk:
            decrypt(p)
        best_dec = min(best_dec, (time.perf_counter() - t0) / per)
    return best_enc, best_dec


def best_openssl(args: list[str], runs: int = 3) -> float | None:
    vals = [v for v in (openssl_speed(args) for _ in range(runs)) if v]
    return max(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--trials", type=int, default=5)
    a = ap.parse_args()
    print(f"# load {os.getloadavg()[0]:.2f}; best of {a.trials} trials of {a.packets // a.trials} packets"
          f" of {a.size} bytes; openssl speed best of 3 x 1 s (1024-byte blocks)")
    print(f"{'suite':28s} {'enc us/pkt':>10s} {'enc MB/s':>8s} {'ossl enc':>8s} {'ratio':>5s}"
          f" {'dec us/pkt':>10s} {'dec MB/s':>8s} {'ossl dec':>8s} {'ratio':>5s}")
    for enc, integ, label in SUITES:
        if enc == "aes128":
            hm = best_openssl(["-hmac", "sha1"])
            refs = []
            for extra in ([], ["-decrypt"]):
                cbc = best_openssl([*extra, "-evp", "aes-128-cbc"])
                refs.append((1 / (1 / cbc + 1 / hm)) if cbc and hm else None)
        else:
            name = "aes-128-gcm" if enc == "aes128gcm16" else "aes-256-gcm"
            refs = [best_openssl(["-evp", name]), best_openssl(["-decrypt", "-evp", name])]
        te, td = bench_suite(enc, integ, a.packets, a.size, a.trials)
        me, md = a.size / te / 1e6, a.size / td / 1e6
        cols = []
        for t, m, r in ((te, me, refs[0]), (td, md, refs[1])):
            cols.append(f"{t * 1e6:10.2f} {m:8.0f} {r or 0:8.0f} " + (f"{m / r:5.2f}" if r else "  n/a"))
        print(f"{label:28s} {cols[0]} {cols[1]}", flush=True)


if __name__ == "__main__":
    main()
