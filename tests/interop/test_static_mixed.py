"""One static and one BGP VPN connection on the same box, at once.

The lab runs four AWS endpoints: tunnels 1-2 are a BGP VPN connection (strongSwan + BIRD,
the VPC's 10.100.0.0/16), tunnels 3-4 a static one (strongSwan only, a second VPC prefix
10.101.0.0/16, answered through tunnel 4 while it is up: asymmetric). cgwd's config is the
operator's: `cgwctl import aws` of the BGP XML, then of the static XML with ``--merge``. Both
VPNs' routes are in the kernel; a failover in one (an endpoint vanishing) moves only that
VPN's route, as `ip monitor route` shows for the other's, and both VPC hosts stay reachable.
"""

from __future__ import annotations

import os
import re

import pytest

from cgwd.config import load_config
from cgwd.lab.cli import cgwctl_command, cgwctl_status, start_cgwd
from cgwd.lab.netns import run, wait_for
from test_static_lab import RouteMonitor, count_plaintext, cut, plaintext, set_options

pytestmark = pytest.mark.interop


def _via(lab, prefix: str) -> str | None:
    m = re.search(r"via (169\.254\.\d+\.1)", lab.cgw_routes(prefix))
    return m.group(1) if m else None


def _ready(lab, st: dict) -> bool:
    ts = st.get("tunnels") or []
    if len(ts) != 4 or any(t["ipsec"]["state"] != "installed" for t in ts):
        return False
    return ([t["bgp"]["state"] for t in ts[:2]] == ["established"] * 2
            and [t.get("static", {}).get("state") for t in ts[2:]] == ["up"] * 2
            and bool(_via(lab, lab.spec.vpc_cidr)) and bool(_via(lab, lab.spec.static_vpc_cidr)))


def _pings(lab) -> tuple[bool, bool]:
    return lab.ping(2, timeout=1), lab.ping(2, timeout=1, dst=lab.spec.static_vpc_host)


def test_a_static_and_a_bgp_vpn_on_one_box_fail_over_apart(lab_factory):
    lab = lab_factory(tunnels=4, static_vpn=2, aws_return_tunnel=4)
    bgp1, bgp2, st1, st2 = lab.tunnels
    s = lab.spec
    assert lab.bgp_tunnels == [bgp1, bgp2] and lab.static_tunnels == [st1, st2]
    assert bgp1.bird and bgp2.bird and not (st1.bird or st2.bird)
    count_plaintext(lab)
    count_plaintext(lab, s.static_vpc_cidr)
    out = os.path.join(lab.workdir, "cgwd.toml")
    for name, static in (("bgp.xml", False), ("static.xml", True)):
        path = os.path.join(lab.workdir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(lab.aws_xml(static=static))
        args = (["--static-route", s.static_vpc_cidr, "--merge", out] if static else ["--advertise", s.onprem_cidr])
        r = run(cgwctl_command("import", "aws", path, *args, "-o", out), check=False)
        assert r.returncode == 0, r.stderr
    r = run(cgwctl_command("config", "check", out), check=False)
    assert r.returncode == 0 and r.stdout.startswith("OK: 2 VPN connection(s), 4 tunnel(s)"), r.stdout + r.stderr
    cfg = load_config(out)
    assert [(v.name, v.routing) for v in cfg.vpns] == [(s.vpn_id, "bgp"), (s.static_vpn_id, "static")]
    set_options(out, dpd_interval=2)  # failover within seconds (AWS's 10 s x 3: test_static_failover.py)

    proc = start_cgwd(lab, out)
    wait_for(lambda: proc.poll() is not None or _ready(lab, cgwctl_status(lab, as_json=True)), 90, interval=0.5,
             what="4 tunnels: BGP on 1-2, static routes on 3-4, both VPC prefixes in the kernel")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    st = cgwctl_status(lab, as_json=True)
    names = [t["name"] for t in st["tunnels"]]
    vpns = {v["name"]: v for v in st["vpns"]}
    assert vpns[s.vpn_id]["routing"] == "bgp" and "static" not in vpns[s.vpn_id]
    assert vpns[s.static_vpn_id]["routing"] == "static"
    assert vpns[s.static_vpn_id]["static"] == [{"prefix": s.static_vpc_cidr, "tunnels": [names[2]],
                                                "backups": [names[3]], "reason": None}]
    assert {r["prefix"] for r in st["routes"] if r["tunnel"] in names[:2]} == {s.vpc_cidr}
    assert [t["bgp"]["state"] for t in st["tunnels"][2:]] == ["disabled", "disabled"]
    assert _via(lab, s.static_vpc_cidr) == st1.aws_inside
    assert _via(lab, s.vpc_cidr) in (bgp1.aws_inside, bgp2.aws_inside)
    wait_for(lambda: lab.aws_return_via == "aws4", 20, what="AWS's static side to answer via tunnel 4")
    wait_for(lambda: all(_pings(lab)), 30, interval=0.5, what="pings to both VPC hosts")
    st = cgwctl_status(lab, as_json=True)
    # cgwd sends into tunnel 3, AWS's static side answers on tunnel 4 (nothing else flows there)
    assert st["tunnels"][2]["ipsec"]["packets_out"] > 0 and st["tunnels"][3]["ipsec"]["packets_in"] > 0

    # the static VPN's primary endpoint vanishes: only its route moves
    bgp_routes = RouteMonitor(lab, s.vpc_cidr)
    cut(lab, st1)
    wait_for(lambda: _via(lab, s.static_vpc_cidr) == st2.aws_inside, 60, interval=0.2,
             what="the static route to move to tunnel 4")
    wait_for(lambda: all(_pings(lab)), 30, interval=0.5, what="pings to both VPC hosts after the static failover")
    bgp_routes.stop()
    assert bgp_routes.changes() == [], f"the BGP VPN's route moved: {bgp_routes.changes()}"
    st = cgwctl_status(lab, as_json=True)
    assert [t["bgp"]["state"] for t in st["tunnels"][:2]] == ["established"] * 2
    assert lab.aws_bgp_established(1) and lab.aws_bgp_established(2)
    assert st["tunnels"][2]["static"]["state"] == "down"

    # the BGP VPN's endpoint carrying the VPC route vanishes: only that route moves
    first = next(t for t in (bgp1, bgp2) if _via(lab, s.vpc_cidr) == t.aws_inside)
    other = bgp2 if first is bgp1 else bgp1
    static_routes = RouteMonitor(lab, s.static_vpc_cidr)
    cut(lab, first)
    wait_for(lambda: _via(lab, s.vpc_cidr) == other.aws_inside, 60, interval=0.2,
             what="the BGP VPN's route to move to its other tunnel")
    wait_for(lambda: all(_pings(lab)), 30, interval=0.5, what="pings to both VPC hosts after the BGP failover")
    static_routes.stop()
    assert static_routes.changes() == [], f"the static VPN's route moved: {static_routes.changes()}"
    assert _via(lab, s.static_vpc_cidr) == st2.aws_inside
    st = cgwctl_status(lab, as_json=True)
    assert st["tunnels"][3]["static"]["state"] == "up"
    assert plaintext(lab) == 0, "plaintext for a VPC left the gateway"
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log
    assert proc.poll() is None
