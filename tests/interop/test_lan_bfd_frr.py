"""BFD on the LAN BGP session (issue 17) against FRR's bfdd (zebra + bgpd + bfdd, ``neighbor X bfd``).

The on-prem namespace runs FRR (AS 65010, eBGP with TCP MD5, hold time 30 s) peering with cgwd's
LAN address 10.200.0.1; bgpd's ``neighbor 10.200.0.1 bfd`` asks bfdd for a session with its
defaults (300 ms, multiplier 3, echo off), cgwd has ``bfd = true`` (300 ms x 3). Checked:

* the session is Up at both ends (``show bfd peers json``; cgwd's status), discriminators agree,
  BGP established, FRR has the VPC prefix;
* FRR silenced (nft drops its UDP to port 3784 in its namespace): cgwd declares BFD Down within
  the detection time and closes BGP (FRR's bgpd records the BFD Down); BGP stays down while BFD
  is, and returns when the rule goes;
* cgwd stopped (SIGSTOP): FRR's bfdd declares the session down and bgpd withdraws the VPC
  prefix within about a second (the hold timer is 30 s);
* reload bfd_interval_ms 300 -> 500: a Poll Sequence FRR answers; bfdd shows our 500 ms
  (remote receive/transmit interval), the negotiated detection time follows, BGP stays up;
* FRR's own Poll Sequence (its peer's intervals 300 -> 600 ms): cgwd answers with the Final and
  its TX interval and detection time follow (600 ms, 1800 ms), nothing goes down;
* FRR's ``shutdown`` of the bfd peer: cgwd sees AdminDown (RFC 5882 3.2: not a path failure),
  so BGP is left alone at both ends (FRR's bgpd does not tear down on AdminDown either) and
  the session comes back Up on ``no shutdown`` without a BGP reset, also with bfdd in
  ``passive-mode`` (it waits for cgwd's first packet);
* ``bfd = false`` by reload: cgwd's AdminDown makes FRR 8.4's bgpd reset the BGP session once
  (it counts any Down from Up, AdminDown included: FRR's behaviour, printed);
* FRR drops BFD (``no neighbor X bfd``): bfdd signals Down, not AdminDown, and deletes the
  session, so cgwd sees a path failure and holds BGP, but only for the hold time (30 s): then
  BGP comes up without BFD (``gate_expiries``). Before, it stayed held for good.

Times are printed.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from cgwd.lab.cli import cgwctl_command, cgwd_ready, start_cgwd
from cgwd.lab.frr import Frr, FrrConfig, FrrNeighbor, frr_available
from cgwd.lab.netns import run, wait_for
from labenv import lan_config, silence_router_bfd, unsilence_router_bfd
from labenv import lan_neighbor as _neighbor

pytestmark = [pytest.mark.interop,
              pytest.mark.skipif(frr_available(bfd=True) is not None, reason=str(frr_available(bfd=True)))]

ALLOWED = "10.201.1.0/24"
ROUTER_AS = 65010
MD5 = "lan-md5-Secret.42"
HOLD = 30
BFD_MS, MULT = 300, 3
DETECT_S = BFD_MS * MULT / 1000
CGW = "10.200.0.1"


def _config(lab) -> str:
    return lan_config(lab, remote_asn=ROUTER_AS, password=MD5, hold_time=HOLD,
                      extra=f"bfd = true\nbfd_interval_ms = {BFD_MS}\nbfd_multiplier = {MULT}\n")


def _router(lab) -> Frr:
    cfg = FrrConfig(router_id=lab.spec.onprem_host, asn=ROUTER_AS, networks=[ALLOWED], neighbors=[
        FrrNeighbor(CGW, lab.spec.cgw_asn, hold_time=HOLD, keepalive=HOLD // 3, bfd=True, password=MD5)])
    frr = Frr(lab.onprem, os.path.join(lab.workdir, "onprem-frr"), cfg, bfd=True)
    frr.start()
    lab.procs.extend(frr.procs.values())
    return frr


def _frr_bfd(frr: Frr) -> dict:
    return frr.bfd_peer(CGW)


def _frr_has_vpc(lab, frr: Frr) -> bool:
    return any(((p.get("peer") or {}).get("peerId")) == CGW for p in frr.paths(lab.spec.vpc_cidr))


def test_lan_bfd_with_frr_bfdd(lab_factory):
    lab = lab_factory()
    frr = _router(lab)
    config = _config(lab)
    proc = start_cgwd(lab, config)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.3, what="cgwd tunnels + BGP")
    assert proc.poll() is None, open(log_path).read()[-3000:]

    # Up at both ends, BGP established, the VPC prefix at FRR
    wait_for(lambda: _frr_bfd(frr).get("status") == "up" and _neighbor(lab).get("bfd", {}).get("state") == "up",
             30, interval=0.3, what="BFD Up at both ends")
    wait_for(lambda: frr.established(CGW) and _frr_has_vpc(lab, frr), 30, interval=0.3,
             what="FRR established with the VPC prefix")
    wait_for(lambda: _neighbor(lab)["bfd"].get("tx_interval_ms") == BFD_MS and not _neighbor(lab)["bfd"]["polling"],
             10, interval=0.3, what="the poll sequence to settle on 300 ms")
    n, peer = _neighbor(lab), _frr_bfd(frr)
    print(f"\nFRR bfdd's view: {peer}")
    b = n["bfd"]
    assert n["state"] == "established" and b["ups"] == 1 and b["downs"] == 0 and b["drops_total"] == 0, b
    assert (peer.get("id"), peer.get("remote-id")) == (b["remote_discriminator"], b["local_discriminator"]), peer
    assert b["detection_time_ms"] == BFD_MS * MULT and b["remote_detect_mult"] == MULT, b
    assert (peer.get("remote-receive-interval"), peer.get("remote-transmit-interval"),
            peer.get("remote-detect-multiplier")) == (BFD_MS, BFD_MS, MULT), peer
    assert peer.get("remote-echo-receive-interval", 0) == 0 and not peer.get("echo-transmit-interval"), peer
    up_since = n["uptime_since"]

    # FRR silenced: cgwd's detection time, then BGP closed
    took, n = silence_router_bfd(lab)
    print(f"cgwd: FRR silenced -> BFD Down + BGP closed in {took * 1000:.0f} ms "
          f"(detection {DETECT_S * 1000:.0f} ms, hold timer {HOLD * 1000} ms)")
    assert 0 < took <= DETECT_S + 0.25, took
    assert n["state"] != "established" and n["bfd"]["last_down_diag"] == "control detection time expired"
    wait_for(lambda: not frr.established(CGW), 10, interval=0.2, what="FRR's BGP session down")
    wait_for(lambda: ALLOWED not in lab.tunnels[0].bird.routes("cgw"), 10, interval=0.3,
             what="FRR's prefix to leave AWS")
    time.sleep(4)       # FRR retries its connection every 2 s: BGP stays down while BFD is
    n = _neighbor(lab)
    assert not frr.established(CGW) and n["state"] != "established" and n["bfd"]["bgp_gated"] is True, n
    unsilence_router_bfd(lab)
    t1 = time.time()
    wait_for(lambda: _neighbor(lab).get("state") == "established", 40, interval=0.3, what="BGP back after BFD Up")
    print(f"cgwd: BFD and BGP back {time.time() - t1:.1f} s after FRR was heard again")
    n = _neighbor(lab)
    assert n["bfd"]["state"] == "up" and n["bfd"]["ups"] == 2 and not n["bfd"]["bgp_gated"], n
    wait_for(lambda: _frr_has_vpc(lab, frr), 30, interval=0.3, what="the VPC prefix back at FRR")

    # cgwd stopped: FRR's bfdd detects it, bgpd withdraws cgwd's routes
    wait_for(lambda: _frr_bfd(frr).get("status") == "up", 10, interval=0.1, what="FRR's BFD Up")
    t2 = time.monotonic()
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: not _frr_has_vpc(lab, frr), 10, interval=0.05, what="FRR to withdraw cgwd's routes")
        took = time.monotonic() - t2
        peer = _frr_bfd(frr)
        last = {k: v for k, v in frr.neighbor(CGW).items() if k.startswith("last")}
    finally:
        proc.send_signal(signal.SIGCONT)
    print(f"FRR: cgwd stopped -> bfdd {peer.get('status')} ({peer.get('diagnostic')}), BGP reset "
          f"({last}) and cgwd's routes withdrawn in {took * 1000:.0f} ms (hold timer {HOLD * 1000} ms)")
    assert took <= DETECT_S + 0.6, took
    assert peer.get("status") != "up" and "BFD" in str(last), (peer, last)

    # reload: 500 ms by a Poll Sequence, seen by FRR, BGP kept
    wait_for(lambda: _neighbor(lab).get("state") == "established" and _neighbor(lab)["bfd"]["state"] == "up"
             and _frr_bfd(frr).get("status") == "up" and frr.established(CGW), 40, interval=0.3,
             what="BFD and BGP back after SIGCONT")
    up_since = _neighbor(lab)["uptime_since"]
    frr_up = _frr_sessions(frr)
    with open(config) as f:
        text = f.read().replace(f"bfd_interval_ms = {BFD_MS}", "bfd_interval_ms = 500")
    with open(config, "w") as f:
        f.write(text)
    r = run(cgwctl_command("reload", "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
    assert r.returncode == 0 and "bfd_interval_ms" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: _frr_bfd(frr).get("remote-receive-interval") == 500
             and _frr_bfd(frr).get("remote-transmit-interval") == 500, 10, interval=0.2,
             what="FRR to see our 500 ms")
    wait_for(lambda: not _neighbor(lab)["bfd"]["polling"], 10, interval=0.2, what="our Poll Sequence to end")
    b, peer = _neighbor(lab)["bfd"], _frr_bfd(frr)
    print(f"reload 300 -> 500 ms: cgwd tx {b['tx_interval_ms']} ms, detection {b['detection_time_ms']} ms; "
          f"FRR: {peer}")
    assert b["interval_ms"] == 500 and b["tx_interval_ms"] == 500 and b["detection_time_ms"] == 1500, b
    assert peer.get("status") == "up" and b["state"] == "up" and b["downs"] == 2, (peer, b)
    n = _neighbor(lab)
    assert n["state"] == "established" and abs(n["uptime_since"] - up_since) < 0.5, "our BGP session stays up"
    assert _frr_sessions(frr) == frr_up, "FRR's BGP session stays up"

    # FRR's own Poll Sequence: its intervals to 600 ms; our Final, then our TX and detection follow
    key = _peer_key(peer)
    downs = b["downs"]
    frr.configure("bfd", key, "receive-interval 600", "transmit-interval 600", daemon="bfdd")
    wait_for(lambda: _frr_bfd(frr).get("transmit-interval") == 600 and _neighbor(lab)["bfd"]["tx_interval_ms"] == 600
             and _neighbor(lab)["bfd"]["detection_time_ms"] == 1800, 10, interval=0.2,
             what="FRR's 600 ms applied at both ends")
    b, peer = _neighbor(lab)["bfd"], _frr_bfd(frr)
    print(f"FRR 300 -> 600 ms (its Poll): cgwd tx {b['tx_interval_ms']} ms, detection {b['detection_time_ms']} ms "
          f"(remote rx {b['remote_min_rx_ms']}, tx {b['remote_desired_tx_ms']}); FRR status {peer.get('status')}")
    assert b["remote_min_rx_ms"] == 600 and b["remote_desired_tx_ms"] == 600 and b["downs"] == downs, b
    assert b["state"] == "up" and peer.get("status") == "up" and b["drops_total"] == 0, (b, peer)
    n = _neighbor(lab)
    assert n["state"] == "established" and abs(n["uptime_since"] - up_since) < 0.5
    assert _frr_sessions(frr) == frr_up

    # FRR's AdminDown: not a path failure (RFC 5882 3.2), BGP left alone at both ends
    teardowns = _neighbor(lab)["bfd"]["bgp_teardowns"]
    frr.configure("bfd", key, "shutdown", daemon="bfdd")
    wait_for(lambda: _neighbor(lab)["bfd"].get("remote_state") == "admindown", 10, interval=0.1,
             what="cgwd to see FRR's AdminDown")
    time.sleep(2 * DETECT_S + 1)
    n, peer = _neighbor(lab), _frr_bfd(frr)
    print(f"FRR shutdown: cgwd BFD {n['bfd']['state']} (remote {n['bfd']['remote_state']}, diag "
          f"{n['bfd']['local_diag']!r}), BGP {n['state']}; FRR bfdd {peer.get('status')}, "
          f"BGP {frr.neighbor(CGW).get('bgpState')}")
    assert n["bfd"]["state"] == "down" and n["bfd"]["bgp_teardowns"] == teardowns and not n["bfd"]["bgp_gated"], n
    assert n["state"] == "established" and abs(n["uptime_since"] - up_since) < 0.5, n
    assert peer.get("status") == "shutdown" and frr.established(CGW), peer
    assert _frr_sessions(frr) == frr_up
    frr.configure("bfd", key, "no shutdown", daemon="bfdd")
    wait_for(lambda: _neighbor(lab)["bfd"]["state"] == "up" and _frr_bfd(frr).get("status") == "up", 15,
             interval=0.2, what="BFD Up again after FRR's no shutdown")
    n = _neighbor(lab)
    assert n["state"] == "established" and abs(n["uptime_since"] - up_since) < 0.5 and n["bfd"]["ups"] == 4, n
    assert _frr_sessions(frr) == frr_up
    # FRR passive (it waits for our first packet): restarted by shutdown / no shutdown, Up again
    ups = n["bfd"]["ups"]
    frr.configure("bfd", key, "passive-mode", "shutdown", daemon="bfdd")
    wait_for(lambda: _neighbor(lab)["bfd"].get("remote_state") == "admindown", 10, interval=0.1,
             what="FRR's AdminDown again")
    t4 = time.monotonic()
    frr.configure("bfd", key, "no shutdown", daemon="bfdd")
    wait_for(lambda: _neighbor(lab)["bfd"]["state"] == "up" and _frr_bfd(frr).get("status") == "up", 15,
             interval=0.1, what="BFD Up with FRR passive")
    print(f"FRR passive-mode: Up {time.monotonic() - t4:.1f} s after its no shutdown (our slow rate: 1 s)")
    assert _frr_bfd(frr).get("passive-mode") is True and _neighbor(lab)["bfd"]["ups"] == ups + 1
    n = _neighbor(lab)
    assert n["state"] == "established" and abs(n["uptime_since"] - up_since) < 0.5 and _frr_sessions(frr) == frr_up
    frr.configure("bfd", key, "no passive-mode", daemon="bfdd")
    frr.configure("bfd", f"no {key}", daemon="bfdd")     # back to bgpd's own session (no configured peer)
    time.sleep(1)
    assert _frr_bfd(frr).get("status") == "up" and _neighbor(lab)["bfd"]["ups"] == ups + 1

    # bfd = false by reload: cgwd tells FRR AdminDown before it stops the session
    with open(config) as f:
        text = f.read().replace("bfd = true", "bfd = false")
    with open(config, "w") as f:
        f.write(text)
    r = run(cgwctl_command("reload", "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: _frr_bfd(frr).get("status") != "up", 10, interval=0.1, what="FRR to see our AdminDown")
    time.sleep(3)
    peer, n = _frr_bfd(frr), _neighbor(lab)
    nb = frr.neighbor(CGW)
    print(f"cgwd bfd = false: FRR bfdd {peer.get('status')} (remote diag {peer.get('remote-diagnostic')}), "
          f"FRR BGP {nb.get('bgpState')} sessions {_frr_sessions(frr)} (was {frr_up}, last reset "
          f"{nb.get('lastNotificationReason')} / {nb.get('lastResetDueTo')}), cgwd BGP {n['state']} "
          f"(up since moved {n.get('uptime_since', 0) - up_since:.1f} s)")
    assert peer.get("remote-diagnostic") == "administratively down" and _neighbor(lab)["bfd"] == {"enabled": False}
    assert nb.get("lastNotificationReason") == "Cease/BFD Down" and _frr_sessions(frr) == frr_up + 1, nb
    wait_for(lambda: frr.established(CGW) and _neighbor(lab).get("state") == "established", 30, interval=0.3,
             what="BGP back after FRR's reset")

    # bfd = true again, then FRR drops BFD (no neighbor X bfd): bfdd's last word is Down, not
    # AdminDown, so cgwd holds BGP as for a path failure, but only for the hold time
    with open(config, "w") as f:
        f.write(text.replace("bfd = false", "bfd = true"))
    r = run(cgwctl_command("reload", "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: _neighbor(lab).get("state") == "established" and _neighbor(lab)["bfd"].get("state") == "up"
             and frr.established(CGW) and _frr_bfd(frr).get("status") == "up", 30, interval=0.2,
             what="BFD and BGP up again")
    n0, s0 = _neighbor(lab), _frr_sessions(frr)
    log_at = os.path.getsize(log_path)
    t3 = time.monotonic()
    frr.configure("router bgp 65010", f"no neighbor {CGW} bfd", daemon="bgpd")
    wait_for(lambda: _neighbor(lab)["bfd"]["bgp_gated"], 10, interval=0.1, what="cgwd to see BFD gone and hold BGP")
    n = _neighbor(lab)
    print(f"FRR's BFD removed (no neighbor X bfd): cgwd BFD {n['bfd']['state']} after "
          f"{time.monotonic() - t3:.1f} s (diag {n['bfd']['last_down_diag']!r}: bfdd sent no AdminDown), BGP held")
    assert n["bfd"]["last_down_diag"] in ("neighbor signaled session down", "control detection time expired"), n
    wait_for(lambda: frr.bfd_peers() == [], 5, interval=0.2, what="bfdd to delete the session")
    wait_for(lambda: _neighbor(lab).get("state") == "established" and frr.established(CGW), HOLD + 20, interval=0.5,
             what="BGP let up without BFD after the hold time")
    n = _neighbor(lab)
    print(f"cgwd: BGP back without BFD {time.monotonic() - t3:.1f} s after FRR dropped BFD (gate limit: hold time "
          f"{HOLD} s); FRR sessions {_frr_sessions(frr)} (was {s0})")
    print("".join(ln for ln in open(log_path).read()[log_at:].splitlines(True) if "lan=core1" in ln))
    assert n["bfd"]["gate_expiries"] == n0["bfd"]["gate_expiries"] + 1 and not n["bfd"]["bgp_gated"], n
    assert n["bfd"]["state"] == "down" and HOLD <= time.monotonic() - t3 <= HOLD + 20
    assert "event=bfd-gate-expired" in open(log_path).read()

    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    log = open(log_path).read()
    assert "Traceback" not in log and MD5 not in log
    assert "event=bfd-down" in log and "event=bfd-up" in log


def _frr_sessions(frr: Frr) -> int | None:
    """How many times FRR's BGP session with cgwd has been established (a reset adds one)."""
    return frr.neighbor(CGW).get("connectionsEstablished")


def _peer_key(peer: dict) -> str:
    """The ``peer ...`` line of bfdd's configuration that names the session bgpd created."""
    parts = [f"peer {peer['peer']}"]
    if peer.get("multihop"):
        parts.append("multihop")
    if peer.get("local"):
        parts.append(f"local-address {peer['local']}")
    if peer.get("interface"):
        parts.append(f"interface {peer['interface']}")
    return " ".join(parts)
