"""Short runs of the benches that need a lab, so they keep working (issue 19): CI runs them
with small sizes; the figures in the README come from the full runs."""
import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.interop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
