"""Soak: months of rekeys compressed into minutes, with traffic through both tunnels.

Lifetimes are cut to the lab minimum on both sides (cgwd: ``short_lifetimes = true``, ESP
lifetime 120 s, rekey margin 40 s, fuzz 50 %: our Child/phase-2 rekeys come 60-80 s after
each pair is installed; strongSwan: CHILD_SA rekey after 72-80 s), so every tunnel gets a
phase-2 rekey about every minute from either side (collisions included, as AWS has them).
Phase 1 is renewed every 5 minutes (in the short CI run: every third of it) from alternating
sides: strongSwan (`swanctl --rekey --ike`, IKEv1 with ``--reauth``) and cgwd (`cgwctl rekey
--ike`). Meanwhile three pingers run: on-prem -> VPC host through the preferred tunnel, and
the customer gateway -> each AWS inside address through each tunnel.

Every minute a row of the table is taken, after every SA is accounted for (cgwd's status
against `swanctl --list-sas`: the same pairs and IKE SA at both ends, no orphan on either
side; a rekey in flight may take a few seconds to settle, shown as "settle s"): cgwd's RSS,
fds, asyncio tasks, threads, the customer namespace's interfaces, routes (all, and cgwd's
protocol 157), xfrm states + policies, cgwd's RIB, SAs at both ends, rekeys so far, pings
lost so far. At the end: 0 pings lost, nothing grew, both BGP sessions never reset.

CI runs 3 minutes per IKE version; the full hour:

    CGWD_SOAK_SECONDS=3600 .venv/bin/python -m pytest tests/interop/test_soak.py -s -p no:cacheprovider
"""

from __future__ import annotations

import os
import re
import time

import pytest
from chaoslib import log_around, sample, settle_sas, table
from faultlab import Pinger, bring_up, config, ctl, log_text, status

from cgwd.lab.topology import AwsTunnelSpec

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SOAK = float(os.environ.get("CGWD_SOAK_SECONDS", "180"))
SAMPLE_EVERY = 60.0
PHASE1_EVERY = 300.0 if SOAK >= 900 else max(30.0, SOAK / 3)
# A single lost ping in about 1,000 to 36,000 is seen now and then with IKEv1 (issue 18, cause
# not yet found; the log lines of cgwd and charon around each loss, stamped to the millisecond,
# are printed for it). The short CI run allows that one per pinger so it cannot turn CI red on
# its own; the hour run and any longer one allow none.
LOSS_ALLOWED = 1 if SOAK < 900 else int(os.environ.get("CGWD_SOAK_LOSS_ALLOWED", "0"))
RSS_GROWTH = 4 << 20  # bytes of RSS the run may add after the first minute (allocator, caches)


def _count(log: str, name: str, event: str) -> int:
    return len(re.findall(rf"tunnel={re.escape(name)} event={event}\b", log))


def _phase1(lab, k: int, names: list[str], ike: int) -> str:
    """The k-th phase-1 renewal: even k by AWS (strongSwan), odd k by cgwd, both tunnels."""
    if k % 2 == 0:
        for t in lab.tunnels:
            t.charon.swanctl("--rekey", "--ike", "aws", *(["--reauth"] if ike == 1 else []))
        return "AWS"
    for n in names:
        r = ctl(lab, "rekey", n, "--ike")
        assert r.returncode == 0, r.stderr
    return "cgwd"


@pytest.mark.timeout(SOAK + 600)
@pytest.mark.parametrize("ike", [1, 2], ids=["ikev1", "ikev2"])
def test_soak_rekeys_lose_nothing_and_leak_nothing(lab_factory, ike):
    aws = [AwsTunnelSpec(esp_rekey_time="80s", esp_life_time="150s") for _ in range(2)]
    lab = lab_factory(tunnels=2, ike_version=ike, aws=aws)
    short = {"short_lifetimes": True, "esp_lifetime": 120, "rekey_margin": 40, "rekey_fuzz": 50}
    proc = bring_up(lab, config(lab, tunnels=[short, short]))
    lab.wait_ping(30)
    st0 = status(lab)
    pid = int(st0["pid"])
    names = [t["name"] for t in st0["tunnels"]]
    bgp0 = [x for t in st0["tunnels"] for x in (t["bgp"]["uptime_since"], t["bgp"]["messages_in"]["open"])]
    pingers = [Pinger(lab, lab.onprem, lab.spec.vpc_host, interval=0.1, name="onprem-vpc")]
    pingers += [Pinger(lab, lab.cgw, t.aws_inside, interval=0.2, src=t.cgw_inside, name=f"tunnel{t.index}")
                for t in lab.tunnels]
    t0 = time.monotonic()
    plan = sorted([(k * SAMPLE_EVERY, "sample", k) for k in range(int(SOAK // SAMPLE_EVERY) + 1)]
                  + [((k + 0.5) * PHASE1_EVERY, "phase1", k) for k in range(int(SOAK / PHASE1_EVERY - 0.5) + 1)
                     if (k + 0.5) * PHASE1_EVERY < SOAK])
    rows, renewals, orphans = [], [], []
    for at, what, k in plan:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        assert proc.poll() is None, log_text(lab)[-3000:]
        if what == "phase1":
            renewals.append((round(time.monotonic() - t0), _phase1(lab, k, names, ike)))
            continue
        took, problems, st = settle_sas(lab)
        if problems:
            orphans.append((round(time.monotonic() - t0), problems))
        log = log_text(lab)
        row = sample(lab, pid, st)
        row.update(t=time.monotonic() - t0, settle=took,
                   ph2=sum(_count(log, n, r"ipsec-up(-pending|-standby)?") - 1 for n in names),
                   ph1=sum(_count(log, n, "phase1-up") - 1 for n in names))
        rows.append(row)
        print(f"soak IKEv{ike} {row['t']:.0f}s: {row}", flush=True)
    results = [p.stop() for p in pingers]
    st1 = status(lab)
    log = log_text(lab)
    per_tunnel = {n: (_count(log, n, r"ipsec-up(-pending|-standby)?") - 1, _count(log, n, "phase1-up") - 1)
                  for n in names}
    counters = {t["name"]: t["ike"]["counters"] for t in st1["tunnels"]}
    drops = {t["name"]: t["ipsec"]["drops"] for t in st1["tunnels"]}
    print(f"\nsoak IKEv{ike}: {SOAK:.0f}s, phase 1 renewed every {PHASE1_EVERY:.0f}s by {renewals}\n" + table(rows))
    print(f"soak IKEv{ike}: pings {[(p.name, r['received'], r['sent']) for p, r in zip(pingers, results)]}; "
          f"(phase-2, phase-1) renewals per tunnel {per_tunnel}; IKE counters {counters}; ESP drops {drops}; "
          f"packets held until their pair was installed: {log.count('came before its pair was installed')}")
    assert not orphans, f"SAs not accounted for at both ends: {orphans}"
    wall = time.time() - time.monotonic()
    lost = [wall + at for r in results for at in r["lost_at"][:5]]
    if lost:
        paths = [os.path.join(lab.workdir, "cgwd.log")] + [t.charon.log for t in lab.tunnels]
        print(log_around(paths, lost))
    for p, r in zip(pingers, results):
        assert r["lost"] <= LOSS_ALLOWED, f"{p.name}: {r['lost']} of {r['sent']} pings lost (at {r['lost_at'][:10]})"
    for n, (ph2, ph1) in per_tunnel.items():
        assert ph2 >= SOAK / 100, f"{n}: only {ph2} phase-2 rekeys in {SOAK:.0f}s"
        assert ph1 >= len(renewals), f"{n}: {ph1} new IKE SAs for {len(renewals)} renewals"
    base, last = rows[1] if len(rows) > 2 else rows[0], rows[-1]
    for key in ("links", "routes", "routes157", "xfrm", "rib", "threads"):
        assert last[key] == base[key], f"{key} went from {base[key]} to {last[key]}: {[r[key] for r in rows]}"
    assert last["fds"] <= base["fds"] + 1, [r["fds"] for r in rows]
    assert last["tasks"] <= base["tasks"] + 2, [r["tasks"] for r in rows]
    assert last["rss"] - base["rss"] <= RSS_GROWTH, [r["rss"] >> 10 for r in rows]
    assert last["sas"] <= 2 * len(names) and last["aws_sas"] == last["sas"]
    # IKEv1: strongSwan keeps each IKE SA it re-authenticated until it expires (8 h): one per
    # AWS reauth here, none for ours (as the responder it drops the old SA at once)
    assert last["aws_kept"] <= len(names) * sum(1 for _t, who in renewals if who == "AWS") * (ike == 1)
    bgp1 = [x for t in st1["tunnels"] for x in (t["bgp"]["uptime_since"], t["bgp"]["messages_in"]["open"])]
    assert bgp1 == pytest.approx(bgp0, abs=1.0), "a BGP session was reset by the rekeys"
    assert "Traceback" not in log
    assert proc.poll() is None
