"""Short runs of every bench, so they keep working (issue 19): CI runs them with small sizes
and checks that each printed the figures it exists for; the figures in the README come from
the full runs, alone on the machine. (bench/kernel_throughput.py is the exception: it boots
the QEMU guest, whose kernel tier tests/qemu already runs in CI.)"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.interop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM = r"([0-9]+(?:\.[0-9]+)?)"


def bench(name: str, *args: str, timeout: int = 600) -> str:
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", name), *args],
                       capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    print(p.stdout)
    return p.stdout


def test_scale_bench_short(tmp_path):
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    p = subprocess.run([sys.executable, os.path.join(REPO, "bench", "scale.py"), "--vpns", "1,2", "--prefixes", "2",
                        "--idle", "3", "--json", str(out), "--plot", str(png)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    print(p.stdout)
    res = json.loads(out.read_text())
    rows = {(r["stack"], r["tunnels"]) for r in res["results"]}
    assert rows == {(s, n) for s in ("cgwd", "reference") for n in (2, 4)}
    for r in res["results"]:
        assert 0 < r["bringup_s"] < 120 and r["rss_kb"] > 1000 and r["idle_cpu_s"] >= 0 and r["status_cli_ms"] > 0
    assert set(res["summary"]["slopes"]["rss_kb"]) == {"cgwd", "reference"}
    assert png.stat().st_size > 10_000


def test_esp_crypto_bench_short():
    out = bench("esp_crypto.py", "--packets", "4000", "--trials", "2")
    for label in ("AES-128-CBC + HMAC-SHA1-96", "AES-128-GCM-16", "AES-256-GCM-16"):
        m = re.search(re.escape(label) + r"\s+" + r"\s+".join([NUM] * 8), out)
        assert m, label
        enc_us, enc_ratio, dec_us, dec_ratio = (float(m.group(i)) for i in (1, 4, 5, 8))
        assert enc_us > 0 and dec_us > 0 and 0 < enc_ratio < 10 and 0 < dec_ratio < 10, m.group(0)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_esp_crypto_callgrind_profile_short():
    out = bench("esp_crypto.py", "--callgrind", "--packets", "8000")
    totals = [int(x.replace(",", "")) for x in re.findall(r"([\d,]+) instructions per decrypted", out)]
    assert len(totals) == 2 and all(5_000 < t < 500_000 for t in totals), out
    parts = re.findall(r"^  (.+?)\s+(-?[\d,]+)\s+(-?[\d.]+) %$", out, re.M)
    assert {p[0].strip() for p in parts} >= {"cipher + MAC core (OpenSSL)", "interpreter (ceval)"}, out


def test_throughput_bench_short_with_packet_rate():
    out = bench("throughput.py", "--seconds", "2", "--rounds", "1", "--pings", "5", "--suites", "aes128gcm16",
                "--pps", "200")
    m = re.search(r"aes128gcm16\s+ratio\s+" + r"\s+".join([NUM] * 6), out)
    assert m, out[-2000:]
    assert all(float(m.group(i)) > 0 for i in range(1, 7)), m.group(0)
    udp = re.search(r"UDP\s+200 B: up (\d+) vs (\d+) pkt/s .* down (\d+) vs (\d+) pkt/s", out)
    assert udp and all(int(x) > 0 for x in udp.groups()), out[-2000:]


def test_bringup_memory_bench_short(tmp_path):
    bench("bringup_memory.py", "--rounds", "1", "--json", str(tmp_path / "bu.json"))
    s = json.loads((tmp_path / "bu.json").read_text())["summary"]
    assert 0 < s["bringup_cgwd_s"] < 60 and 0 < s["bringup_reference_s"] < 60, s
    assert s["rss_cgwd_kb"] > 1000 and s["rss_reference_kb"] > 1000 and s["rss_ratio"] > 0, s


def test_rekey_loss_bench_short():
    out = bench("rekey_loss.py", "--rekeys", "2", "--spacing", "4", "--rate", "200")
    sent = re.findall(r"(cgwd|reference) on-prem -> VPC: sent (\d+), lost (\d+)", out)
    assert {w for w, _, _ in sent} == {"cgwd", "reference"} and all(int(n) > 1000 for _, n, _ in sent), out
    assert re.search(r"phase-2 rekeys counted by cgwd: 2\b", out), out


def test_bgp_ingest_bench_short():
    out = bench("bgp_ingest.py", "--prefixes", "3000", "--kernel")
    res = json.loads(out[out.index("{"):])
    assert res["cgwd"]["rib"] == 3000 and res["cgwd_kernel"]["kernel_installed"] == 3000, res["cgwd_kernel"]
    assert res["exabgp"]["prefixes"] == 3000 and res["bird_kernel"]["kernel_installed"] == 3000, res
    assert res["ratios"]["ingest_cgwd_over_exabgp_per_cpu_second"] > 0, res["ratios"]


def test_esp_families_bench_dry_run():
    out = bench("esp_families.py", "--dry-run")
    assert len(re.findall(r"ping ok", out)) == 5, out


def test_wakeup_bench_short():
    out = bench("wakeup.py", "--trips", "300", "--rounds", "1")
    med = dict(re.findall(r"^(blocking|asyncio|asyncio\+timers)\s+median\s+" + NUM, out, re.M))
    assert set(med) == {"blocking", "asyncio", "asyncio+timers"} and all(float(v) > 0 for v in med.values()), out
    assert len(re.findall(r"event loop cost per wake-up", out)) == 2, out
