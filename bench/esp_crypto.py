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

``--callgrind``: where a packet's decrypt goes, in instructions (valgrind's callgrind, so
the figure does not depend on the machine's load): the script runs itself under callgrind
decrypting N and 2N packets, and N and 2N packets only generated, and prints the per-packet
difference by part (OpenSSL's AES core, OpenSSL/cryptography per-call set-up, the
interpreter, allocation, copies, Python ints).
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


def _decrypt_only(enc: str, integ: str | None, n: int, decrypt: bool) -> None:
    """The callgrind subject: generate ``n`` packets, then (``decrypt``) decrypt them."""
    sp = SaPair(pair_for(enc, integ), replay_window=1024)
    e, d = EspEncoder(sp.outbound), EspDecoder(sp.inbound)
    inner = b"\x45" + os.urandom(1399)
    pkts = [e.encrypt(inner) for _ in range(n)]
    if decrypt:
        for p in pkts:
            d.decrypt(p)


PARTS = (("cipher + MAC core (OpenSSL)", lambda fn, obj: "aesni" in fn or "gcm_ghash" in fn or "gcm128" in fn
          or fn.startswith("sha1_block") or fn.startswith("aes_")),
         ("OpenSSL/cryptography per call", lambda fn, obj: "libcrypto" in obj or "_rust" in obj),
         ("allocation", lambda fn, obj: "alloc" in fn.lower() or "free" in fn.lower() or "unlink_chunk" in fn),
         ("copies (memcpy/memset)", lambda fn, obj: "memcpy" in fn or "memset" in fn or "memmove" in fn),
         ("Python ints", lambda fn, obj: "long" in fn.lower()),
         ("interpreter (ceval)", lambda fn, obj: "EvalFrame" in fn),
         ("other Python runtime", lambda fn, obj: True))


def callgrind_profile(enc: str, integ: str | None, n: int = 5000) -> dict[str, float]:
    """Instructions per decrypted packet by part (see the module doc)."""
    import collections
    import tempfile

    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for decrypt in (False, True):
            for k in (n, 2 * n):
                out = os.path.join(tmp, f"cg.{int(decrypt)}.{k}")
                subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                                __file__, "--callgrind-subject", f"{enc},{integ or ''},{k},{int(decrypt)}"],
                               check=True, capture_output=True, timeout=1800)
                ann = subprocess.run(["callgrind_annotate", "--threshold=100", out], capture_output=True,
                                     text=True, check=True).stdout
                fns = collections.Counter()
                for ln in ann.splitlines():
                    m = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$", ln)
                    if m and "PROGRAM TOTALS" not in m.group(2):
                        fns[m.group(2).strip()] += int(m.group(1).replace(",", ""))
                counts[(decrypt, k)] = fns
    parts = collections.Counter()
    for key in set().union(*counts.values()):
        v = (counts[(True, 2 * n)][key] - counts[(True, n)][key]
             - counts[(False, 2 * n)][key] + counts[(False, n)][key]) / n
        obj = key.rsplit(" [", 1)[1] if " [" in key else ""
        fn = key.split(" [", 1)[0].rsplit(":", 1)[-1]
        parts[next(name for name, test in PARTS if test(fn, obj))] += v
    return dict(parts)


def best_openssl(args: list[str], runs: int = 3) -> float | None:
    vals = [v for v in (openssl_speed(args) for _ in range(runs)) if v]
    return max(vals) if vals else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--packets", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per decrypted packet by part, under valgrind (not timed)")
    ap.add_argument("--callgrind-subject", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.callgrind_subject:
        enc, integ, k, decrypt = a.callgrind_subject.split(",")
        _decrypt_only(enc, integ or None, int(k), decrypt == "1")
        return
    if a.callgrind:
        for enc, integ, label in SUITES[:2]:
            parts = callgrind_profile(enc, integ, max(a.packets // 40, 200))
            total = sum(parts.values())
            print(f"{label}: {total:,.0f} instructions per decrypted {a.size}-byte packet (callgrind)")
            for name, v in sorted(parts.items(), key=lambda x: -x[1]):
                print(f"  {name:32s} {v:8,.0f}  {100 * v / total:5.1f} %")
        return
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
