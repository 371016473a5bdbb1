"""BFD on the LAN BGP session (issue 17) against a real BIRD (``protocol bfd`` + ``bfd on``).

The on-prem namespace runs BIRD (AS 65010, eBGP with TCP MD5, hold time 30 s, BFD 300 ms x 3)
peering with cgwd's LAN address 10.200.0.1, ``bfd = true`` on cgwd's side. Checked:

* the BFD session is Up at both ends (``birdc show bfd sessions``; cgwd's status: JSON and
  text, discriminators, 300 ms TX, 900 ms detection), BGP established;
* the router is silenced (nft drops its UDP to port 3784 in its namespace): cgwd declares BFD
  Down within the detection time and closes BGP at once (BIRD's last error names its own BFD
  going down, or cgwd's Cease subcode 10, whichever reached it first),
  the router's prefix leaves AWS; BGP stays down while BFD is down, and comes back when
  the rule is removed and BFD is Up again. The time is printed against the 30 s hold timer;
* the other direction: cgwd is stopped (SIGSTOP): BIRD sees BFD down and withdraws the VPC
  prefix cgwd gave it within about a second (hold timer: 30 s);
* reload: bfd_interval_ms 300 -> 500 applies in place (Poll Sequence): status and BIRD show
  500 ms, the BGP session stays up.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from cgwd.lab.bird import BgpNeighbor, Bird, BirdConfig
from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, start_cgwd
from cgwd.lab.netns import run, wait_for
from labenv import lan_config, silence_router_bfd, unsilence_router_bfd
from labenv import lan_neighbor as _neighbor

pytestmark = pytest.mark.interop

ALLOWED = "10.201.1.0/24"
ROUTER_AS = 65010
MD5 = "lan-md5-Secret.42"
HOLD = 30
BFD_MS, MULT = 300, 3
DETECT_S = BFD_MS * MULT / 1000


class _BfdBirdConfig(BirdConfig):
    def render(self) -> str:
        return super().render() + f"""
protocol bfd {{
  interface "*" {{ min rx interval {BFD_MS} ms; min tx interval {BFD_MS} ms; idle tx interval 1000 ms;
    multiplier {MULT}; }};
}}
"""


def _config(lab) -> str:
    return lan_config(lab, remote_asn=ROUTER_AS, password=MD5, hold_time=HOLD,
                      extra=f"bfd = true\nbfd_interval_ms = {BFD_MS}\nbfd_multiplier = {MULT}\n")


def _router(lab) -> Bird:
    nb = BgpNeighbor("cgw", lab.spec.onprem_host, ROUTER_AS, "10.200.0.1", lab.spec.cgw_asn, hold_time=HOLD,
                     export="where source = RTS_STATIC", import_="all", extra=f'password "{MD5}"; bfd on;')
    bird = Bird(lab.onprem, os.path.join(lab.workdir, "onprem-bird"), _BfdBirdConfig(
        router_id=lab.spec.onprem_host, static_routes=[(ALLOWED, "blackhole")], neighbors=[nb]))
    bird.start()
    lab.procs.append(bird.proc)
    return bird


def _bird_bfd_state(bird: Bird) -> str:
    """The state of BIRD's BFD session with cgwd ("Up", "Down", "Init", or "" when none)."""
    m = re.search(r"^10\.200\.0\.1\s+\S+\s+(\w+)", bird.birdc("show", "bfd", "sessions"), re.M)
    return m.group(1) if m else ""


def test_lan_bfd_with_bird_detects_both_directions(lab_factory):
    lab = lab_factory()
    router = _router(lab)
    config = _config(lab)
    proc = start_cgwd(lab, config)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.3, what="cgwd tunnels + BGP")
    assert proc.poll() is None, open(log_path).read()[-3000:]

    # BFD Up at both ends, BGP established, the router's prefix on its way to AWS
    wait_for(lambda: _bird_bfd_state(router) == "Up" and _neighbor(lab).get("bfd", {}).get("state") == "up",
             30, interval=0.3, what="BFD Up at both ends")
    wait_for(lambda: router.established("cgw") and lab.spec.vpc_cidr in router.routes("cgw"), 30, interval=0.3,
             what="BIRD established with the VPC prefix")
    wait_for(lambda: ALLOWED in lab.tunnels[0].bird.routes("cgw"), 30, interval=0.5, what="AWS to learn it")
    wait_for(lambda: _neighbor(lab)["bfd"].get("tx_interval_ms") == BFD_MS, 10, interval=0.3,
             what="the poll sequence to settle on 300 ms")
    n = _neighbor(lab)
    b = n["bfd"]
    assert n["state"] == "established"
    assert b["enabled"] and b["local_discriminator"] and b["remote_discriminator"]
    assert b["detection_time_ms"] == BFD_MS * MULT and b["ups"] == 1 and b["downs"] == 0
    assert b["drops_total"] == 0, b
    text = cgwctl_status(lab)
    assert re.search(rf"BFD Up \(remote up\): discriminators {b['local_discriminator']}/"
                     rf"{b['remote_discriminator']}, tx 300 ms, detection 900 ms", text), text

    # the router is silenced: its BFD packets to cgwd are dropped in its namespace
    took, n = silence_router_bfd(lab)
    print(f"\ncgwd: router silenced -> BFD Down + BGP closed in {took * 1000:.0f} ms "
          f"(detection {DETECT_S * 1000:.0f} ms, hold timer {HOLD * 1000} ms)")
    assert 0 < took <= DETECT_S + 0.25, took
    assert n["state"] != "established" and n["bfd"]["last_down_diag"] == "control detection time expired"
    assert n["bfd"]["bgp_gated"] is True
    wait_for(lambda: ALLOWED not in lab.tunnels[0].bird.routes("cgw"), 10, interval=0.3,
             what="the router's prefix to leave AWS")
    proto = router.birdc("show", "protocols", "all", "cgw")
    # either BIRD's own BFD went down first (cgwd's BFD now says Down: "BFD session down"), or
    # cgwd's Cease subcode 10 "BFD Down" (RFC 9384) came first, which BIRD 2.0.12 does not name
    assert re.search(r"Last error:\s+(.*BFD|Received: Unknown error 6\.10\b)", proto), proto
    # BIRD keeps trying (connect retry 2 s): BGP stays down while BFD is down
    time.sleep(4)
    n = _neighbor(lab)
    assert not router.established("cgw") and n["state"] != "established" and n["bfd"]["bgp_gated"] is True

    # the rule goes: BFD Up again, then BGP
    unsilence_router_bfd(lab)
    t1 = time.time()
    wait_for(lambda: _neighbor(lab).get("state") == "established", 40, interval=0.3,
             what="BGP back after BFD Up")
    print(f"cgwd: BFD and BGP back {time.time() - t1:.1f} s after the router was heard again")
    n = _neighbor(lab)
    assert n["bfd"]["state"] == "up" and n["bfd"]["ups"] == 2 and not n["bfd"]["bgp_gated"]
    wait_for(lambda: lab.spec.vpc_cidr in router.routes("cgw"), 30, interval=0.3, what="the VPC prefix back")

    # the other direction: cgwd stopped -> BIRD's BFD goes down and its routes from cgwd leave
    t2 = time.monotonic()
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: lab.spec.vpc_cidr not in router.routes("cgw"), 10, interval=0.05,
                 what="BIRD to withdraw cgwd's routes")
        took = time.monotonic() - t2
        state = _bird_bfd_state(router)
    finally:
        proc.send_signal(signal.SIGCONT)
    print(f"BIRD: cgwd stopped -> BFD {state or 'gone'} and cgwd's routes withdrawn in {took * 1000:.0f} ms "
          f"(hold timer {HOLD * 1000} ms)")
    assert took <= DETECT_S + 0.5, took
    assert state != "Up"

    # reload: a new interval applies in place (a Poll Sequence), no BGP reset
    wait_for(lambda: _neighbor(lab).get("state") == "established" and _neighbor(lab)["bfd"]["state"] == "up"
             and _bird_bfd_state(router) == "Up", 40, interval=0.3, what="BFD and BGP back after SIGCONT")
    up_since = _neighbor(lab)["uptime_since"]
    with open(config) as f:
        text = f.read().replace(f"bfd_interval_ms = {BFD_MS}", "bfd_interval_ms = 500")
    with open(config, "w") as f:
        f.write(text)
    r = run(cgwctl_command("reload", "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
    assert r.returncode == 0 and "bfd_interval_ms" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: _neighbor(lab)["bfd"].get("detection_time_ms") == 1500, 10, interval=0.3,
             what="the new detection time (BIRD's 3 x max(our RX 500 ms, its TX 300 ms))")
    b = _neighbor(lab)["bfd"]
    assert b["interval_ms"] == 500 and b["tx_interval_ms"] == 500 and b["downs"] == 2 and not b["polling"], b
    assert re.search(r"^10\.200\.0\.1\s+\S+\s+Up\s+\S+\s+0\.500", router.birdc("show", "bfd", "sessions"), re.M)
    n = _neighbor(lab)
    assert n["state"] == "established" and abs(n["uptime_since"] - up_since) < 0.5, "the BGP session stays up"

    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    log = open(log_path).read()
    assert "Traceback" not in log and MD5 not in log
    assert "event=bfd-down" in log and "event=bfd-up" in log
