"""AWS maintenance: the endpoint of one tunnel is replaced (its charon gone with every IKE and
ESP SA, a new one on the same outside address after a short outage), as AWS does one tunnel
at a time. The other tunnel carries the traffic meanwhile (both sides prefer it: AS path
prepending on the victim, at AWS's BIRD and in cgwd's config), so pings from on-prem to the
VPC must all come back; cgwd must notice that the endpoint lost its state (DPD/liveness: the
restarted charon answers nothing it does not know, and libipsec sends no INVALID_SPI),
negotiate anew and have the tunnel back within the DPD timeout + 10 s. With IKEv2 and the
startup action "start" AWS initiates after the restart, and cgwd must answer it.

The DPD timeout counts as AWS defines it: "the VPN endpoint will consider the peer dead 30
seconds after the first failed keep-alive"; the first keep-alive goes out when the peer has
been quiet for the DPD interval (on-demand DPD, RFC 3706). So from the endpoint's death:
at most interval (first probe) + timeout (dead) + 10 s (negotiated again). The probe is seen
on the wire (tcpdump in the WAN router), not taken from cgwd's word.

Everything is asserted by what happened: the log's events, the SPIs at both ends before and
after, who initiated the new IKE SA (strongSwan's ``_i*`` marks), BGP at both ends. The times
are printed; the one deadline asserted is the protocol's own (DPD timeout + 10 s).

DPD is AWS's default as the import writes it (10 s, 3 retries: AWS's 30 s DPD timeout).
"""

from __future__ import annotations

import re
import time

import pytest
from faultlab import Capture, Pinger, bring_up, config, gaps, log_text, status

from cgwd.lab import faults
from cgwd.lab.netns import wait_for
from cgwd.lab.strongswan import list_sas_parsed
from cgwd.lab.topology import AwsTunnelSpec

pytestmark = pytest.mark.interop

OUTAGE = 3.0  # seconds between the old endpoint's death and the new one's start


def _ipsec(st: dict, name: str) -> set[tuple[str, str]]:
    t = next(t for t in st["tunnels"] if t["name"] == name)
    return {(s["spi_in"], s["spi_out"]) for s in t["ipsec"]["sas"]}


def _aws_view(t) -> list[dict]:
    return [sa for sa in list_sas_parsed(t.charon.list_sas()) if sa["state"] == "ESTABLISHED"]


def _aws_children(t) -> set[tuple[str, str]]:
    """(AWS's in, AWS's out) of the installed CHILD_SAs: our (out, in)."""
    return {(c.get("spi_out"), c.get("spi_in")) for sa in _aws_view(t) for c in sa["children"]
            if c["state"] == "INSTALLED"}


def _back(lab, t, name: str, old: set) -> bool:
    """The tunnel carries traffic again: a new pair installed at both ends, the same one."""
    st = status(lab)
    tun = next(x for x in st["tunnels"] if x["name"] == name)
    if tun["ipsec"]["state"] != "installed":
        return False
    ours = _ipsec(st, name)
    new = ours - old
    return bool(new) and bool(new & _aws_children(t))


def _exchange(pkt) -> int | None:
    """The IKE exchange type of a captured datagram (5: IKEv1 informational, 37: IKEv2's)."""
    if not pkt.haslayer("UDP"):
        return None
    data = bytes(pkt["UDP"].payload)
    if pkt["UDP"].dport == 4500:
        data = data[4:]
    return data[18] if len(data) >= 28 else None


@pytest.mark.parametrize("ike,startup", [(1, "add"), (2, "add"), (2, "start")],
                         ids=["ikev1", "ikev2", "ikev2-aws-initiates"])
def test_endpoint_replaced_during_maintenance(lab_factory, ike, startup):
    action = "start" if startup == "start" else "none"
    aws = [AwsTunnelSpec(start_action=action), AwsTunnelSpec(start_action=action, as_path_prepend=2)]
    lab = lab_factory(tunnels=2, ike_version=ike, aws=aws)
    proc = bring_up(lab, config(lab, tunnels=[{}, {"prepend": 2}]))
    lab.wait_ping(30)
    st0 = status(lab)
    keep, victim = st0["tunnels"]
    vt = lab.tunnels[1]
    assert victim["dpd"]["interval"] == 10 and victim["dpd"]["retries"] == 3
    budget = victim["dpd"]["interval"] * victim["dpd"]["retries"] + 10  # AWS's DPD timeout + 10 s
    # the traffic goes through the other tunnel both ways
    wait_for(lambda: lab.vpc_route_to_onprem() == "aws1", 30, what="the VPC to return through aws1")
    assert f"dev {keep['ifname']}" in lab.cgw_routes(), lab.cgw_routes()
    old_pairs = _ipsec(st0, victim["name"])
    assert old_pairs and old_pairs == _aws_children(vt)
    old_ike = _aws_view(vt)
    assert len(old_ike) == 1
    keep_pairs, keep_bgp = _ipsec(st0, keep["name"]), keep["bgp"]["uptime_since"]
    keep_opens = keep["bgp"]["messages_in"]["open"]
    log_mark = len(log_text(lab))
    through = Pinger(lab, lab.onprem, lab.spec.vpc_host, interval=0.1, name="onprem-vpc")
    across = Pinger(lab, lab.cgw, vt.aws_inside, interval=0.2, src=vt.cgw_inside, name="victim")

    wire = Capture(lab, lab.wan, f"aws{vt.index}", f"src host {lab.spec.cgw_public} and dst host {vt.aws_outside} "
                   "and (udp port 500 or (udp port 4500 and udp[8:4] = 0))", "ike-to-victim.pcap")
    wall_minus_mono = time.time() - time.monotonic()
    died = faults.replace_endpoint(lab, vt, outage=OUTAGE)
    wait_for(lambda: _back(lab, vt, victim["name"], old_pairs), budget + 60, interval=0.2,
             what="the replaced endpoint's tunnel to carry traffic again")
    back = time.monotonic() - died
    wait_for(lambda: lab.aws_bgp_established(2) and next(
        t for t in status(lab)["tunnels"] if t["name"] == victim["name"])["bgp"]["state"] == "established",
        90, interval=0.2, what="BGP over the replaced endpoint")
    bgp_back = time.monotonic() - died
    time.sleep(2)
    r_through, r_across = through.stop(), across.stop()
    probes = [float(p.time) - wall_minus_mono for p in wire.stop() if _exchange(p) in (5, 37)]
    probes = [t for t in probes if t > died]
    first_probe = probes[0] - died if probes else None
    st1 = status(lab)
    log = log_text(lab)[log_mark:]
    new_ike = _aws_view(vt)
    tun1 = next(t for t in st1["tunnels"] if t["name"] == victim["name"])
    victim_gap = gaps(r_across["lost_at"], 0.2)
    events = re.findall(rf"tunnel={re.escape(victim['name'])} event=(\S+)", log)
    probe_txt = (f"first DPD probe {first_probe:.1f}s after; tunnel back after {back:.1f}s ({back - first_probe:.1f}s "
                 f"after the first probe, budget {budget}s = DPD timeout + 10 s)" if probes
                 else f"no DPD probe; tunnel back after {back:.1f}s")
    print(f"maintenance (IKEv{ike}, startup {startup}): endpoint of {victim['name']} replaced ({OUTAGE:.0f} s "
          f"outage); {probe_txt}, BGP after {bgp_back:.1f}s; pings through {keep['name']} {r_through['received']}/{r_through['sent']}; "
          f"pings across {victim['name']} {r_across['received']}/{r_across['sent']}, longest gap "
          f"{max((g[1] for g in victim_gap), default=0):.1f}s; events {sorted(set(events))}; "
          f"IKE counters {tun1['ike']['counters']}; AWS IKE SA now {new_ike[0]['spi_i']}_i {new_ike[0]['spi_r']}_r "
          f"(AWS {'initiated' if new_ike[0]['local'] == 'i' else 'responded'})")
    # the other tunnel carried everything, untouched
    assert r_through["lost"] == 0, f"{r_through['lost']} pings lost through the other tunnel"
    assert _ipsec(st1, keep["name"]) == keep_pairs
    k1 = next(t for t in st1["tunnels"] if t["name"] == keep["name"])
    assert k1["bgp"]["uptime_since"] == pytest.approx(keep_bgp, abs=1.0) and k1["bgp"]["messages_in"]["open"] == keep_opens
    # the victim: new SAs at both ends, the same ones; nothing of the old state is left
    new_pairs = _ipsec(st1, victim["name"])
    assert new_pairs and not new_pairs & old_pairs, (old_pairs, new_pairs)
    assert new_pairs == _aws_children(vt), (new_pairs, vt.charon.list_sas())
    assert len(new_ike) == 1 and new_ike[0]["spi_i"] != old_ike[0]["spi_i"]
    assert tun1["ike"]["spi"]["initiator"] == new_ike[0]["spi_i"]
    interval = victim["dpd"]["interval"]
    if startup == "start":  # AWS initiated after the restart; cgwd answered, without waiting for DPD
        assert new_ike[0]["local"] == "i" and tun1["ike"]["role"] == "responder"
        assert back <= OUTAGE + 10, f"AWS's initiation answered {back - OUTAGE:.1f}s after the endpoint returned"
    else:  # cgwd noticed and initiated
        assert new_ike[0]["local"] == "r" and tun1["ike"]["role"] == "initiator"
        assert "peer-dead" in events or "INVALID" in log, log[-3000:]
        assert probes, "cgwd sent no DPD probe to the silent endpoint"
        assert first_probe <= interval + 1.5, f"first probe {first_probe:.1f}s after the last traffic (interval {interval}s)"
        assert back - first_probe <= budget, \
            f"tunnel back {back - first_probe:.1f}s after the first failed keep-alive: more than DPD timeout + 10 s"
    late = [t - died for t in r_across["lost_at"] if not died - 1 <= t <= died + back + 1]
    assert not late, f"pings across the victim lost outside the outage (s after it died): {late[:20]}"
    assert "Traceback" not in log
    assert proc.poll() is None
