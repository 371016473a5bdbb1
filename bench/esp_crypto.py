"""ESP per-packet crypto cost vs. `openssl speed` on the same machine.

    .venv/bin/python bench/esp_crypto.py [--packets N] [--size 1400]

Encrypt: EspEncoder.encrypt(inner) -> ESP bytes; decrypt: EspDecoder.decrypt (incl.
ICV check, replay window, padding check).  OpenSSL reference: `openssl speed -evp
aes-128-cbc`, `-hmac sha1`, `-evp aes-128-gcm`, `-evp aes-256-gcm` (1024-byte column);
the CBC+HMAC limit is 1/(1/cbc + 1/hmac).  Ratio = ours / openssl.
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


def bench_suite(enc, integ, n, size):
    sp = SaPair(pair_for(enc, integ), replay_window=1024)
    e, d = EspEncoder(sp.outbound), EspDecoder(sp.inbound)
    inner = b"\x45" + os.urandom(size - 1)
    for _ in range(1000):
        e.encrypt(inner)
    encrypt = e.encrypt
    t0 = time.perf_counter()
    for _ in range(n):
        encrypt(inner)
    t_enc = time.perf_counter() - t0
    # decrypt fresh packets (sequence numbers must be new), generated in untimed chunks
    sp2 = SaPair(sp.pair, replay_window=1024)
    e2, d2 = EspEncoder(sp2.outbound), EspDecoder(sp2.inbound)
    decrypt = d2.decrypt
    t_dec = 0.0
    done = 0
    while done < n:
        chunk = [e2.encrypt(inner) for _ in range(min(10_000, n - done))]
        t0 = time.perf_counter()
        for p in chunk:
            decrypt(p)
        t_dec += time.perf_counter() - t0
        done += len(chunk)
    return t_enc / n, t_dec / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1400)
    a = ap.parse_args()
    cbc = openssl_speed(["-evp", "aes-128-cbc"])
    hm = openssl_speed(["-hmac", "sha1"])
    ref = {
        "aes128": (1 / (1 / cbc + 1 / hm)) if cbc and hm else None,
        "aes128gcm16": openssl_speed(["-evp", "aes-128-gcm"]),
        "aes256gcm16": openssl_speed(["-evp", "aes-256-gcm"]),
    }
    print(f"openssl speed (1024-byte blocks): aes-128-cbc {cbc:.0f} MB/s, hmac(sha1) {hm:.0f} MB/s"
          if cbc and hm else "openssl speed unavailable")
    print(f"{'suite':30s} {'enc us/pkt':>10s} {'enc MB/s':>9s} {'dec us/pkt':>10s} {'dec MB/s':>9s}"
          f" {'openssl MB/s':>12s} {'enc ratio':>9s} {'dec ratio':>9s}")
    for enc, integ, label in SUITES:
        te, td = bench_suite(enc, integ, a.packets, a.size)
        me, md = a.size / te / 1e6, a.size / td / 1e6
        r = ref[enc]
        re_, rd = (f"{me / r:9.2f}", f"{md / r:9.2f}") if r else ("      n/a", "      n/a")
        print(f"{label:30s} {te * 1e6:10.2f} {me:9.0f} {td * 1e6:10.2f} {md:9.0f} {r or 0:12.0f} {re_} {rd}")


if __name__ == "__main__":
    main()
