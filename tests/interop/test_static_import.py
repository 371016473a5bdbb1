"""Each download format of the lab's static VPN connection, imported with the operator's
command (`cgwctl import aws FILE --static-route CIDR`), comes up in the lab, carries traffic
both ways and fails over.

The lab's AWS side runs static routing (strongSwan only, no BGP); cgwd.lab.awsvendor writes
the connection as AWS hands it out: the XML (``NoBGPVPNConnection``), describe-vpn-connections
JSON (``StaticRoutesOnly``, AWS's side routes), the Generic text ("Static Routing
Configuration"), the Yamaha RTX and Cisco IOS templates without BGP (with the operator's route
to the VPC; cgwd reads them behind NAT, as seeds 002/003 run them, with ``--local-address``).
cgwd runs the imported file unchanged until the failover, for which its DPD is tuned to
2 s x 3 with `cgwctl reload` (in place, the tunnels stay up): AWS's 10 s x 3 failover is
measured in test_static_failover.py.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from cgwd.aws_import import FORMAT_NAMES
from cgwd.config import load_config
from cgwd.lab import awsvendor
from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, start_cgwd
from cgwd.lab.netns import run, wait_for
from test_static_lab import count_plaintext, cut, plaintext, set_options, static_state, via, vpc_ping

pytestmark = [pytest.mark.interop, pytest.mark.slow]

# format -> (customer gateway behind NAT?, what `cgwctl import aws` says it detected)
CASES = {
    "xml": (False, "xml"),
    "json": (False, "json"),
    "generic": (False, "generic"),
    "yamaha": (True, "yamaha"),
    "cisco-ios": (True, "cisco"),
}


def test_every_download_format_is_covered():
    assert set(CASES) == set(awsvendor.FORMATS)


@pytest.mark.parametrize("fmt", list(CASES))
def test_static_download_imports_comes_up_carries_traffic_and_fails_over(lab_factory, fmt):
    nat, detected = CASES[fmt]
    lab = lab_factory(static=True, nat=nat)
    t1, t2 = lab.tunnels
    count_plaintext(lab)
    src = awsvendor.write_lab(lab, fmt, static=True)
    out = os.path.join(lab.workdir, "cgwd.toml")
    args = ["import", "aws", src, "--static-route", lab.spec.vpc_cidr, "-o", out]
    if nat:
        args += ["--local-address", lab.cgw_outside]
    r = run(cgwctl_command(*args), check=False)
    assert r.returncode == 0, r.stderr
    assert f"detected: {FORMAT_NAMES[detected]}" in r.stderr
    for t in lab.tunnels:
        assert t.psk not in r.stdout + r.stderr, "a PSK was printed by cgwctl import"
    r = run(cgwctl_command("config", "check", out), check=False)
    assert r.returncode == 0 and r.stdout.startswith("OK: 1 VPN connection(s), 2 tunnel(s)"), r.stdout + r.stderr
    cfg = load_config(out)
    vpn = cfg.vpns[0]
    assert vpn.routing == "static" and [str(n) for n in vpn.static_routes] == [lab.spec.vpc_cidr]
    assert [str(t.remote_address) for t in cfg.tunnels] == [t.aws_outside for t in lab.tunnels]
    assert [str(t.inside_cidr) for t in cfg.tunnels] == [str(t.inside) for t in lab.tunnels]
    assert {str(t.local_address) for t in cfg.tunnels} == {lab.cgw_outside}
    assert {str(t.public_address) for t in cfg.tunnels} == {lab.spec.cgw_public}

    proc = start_cgwd(lab, out)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5,
             what=f"cgwd from the static {fmt} import: both tunnels, the static route")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    st = cgwctl_status(lab, as_json=True)
    assert [t["ike"]["state"] for t in st["tunnels"]] == ["established", "established"]
    assert [t["bgp"]["state"] for t in st["tunnels"]] == ["disabled", "disabled"]
    assert [t["static"]["state"] for t in st["tunnels"]] == ["up", "up"]
    assert all(t["outside"]["nat"]["local_behind_nat"] == nat for t in st["tunnels"])
    (route,) = st["vpns"][0]["static"]
    assert route == {"prefix": lab.spec.vpc_cidr, "tunnels": [st["tunnels"][0]["name"]],
                     "backups": [st["tunnels"][1]["name"]], "reason": None}
    assert via(lab) == t1.aws_inside
    wait_for(lambda: lab.aws_return_via == "aws2", 20, what="AWS's side to route on-prem via tunnel 2")
    lab.wait_ping(20)
    assert lab.ping(3) and vpc_ping(lab, 3)

    # failover: DPD tuned in place, then tunnel 1's endpoint vanishes
    set_options(out, dpd_interval=2)
    r = run(cgwctl_command("reload", "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
    assert r.returncode == 0 and "dpd_interval" in r.stdout and "restarted" not in r.stdout.lower(), r.stdout + r.stderr
    cut(lab, t1)
    wait_for(lambda: via(lab) == t2.aws_inside, 60, interval=0.2, what="the static route to move to tunnel 2")
    assert static_state(lab, 0) == "down"
    wait_for(lambda: lab.ping(1, timeout=1), 20, interval=0.5, what="traffic over tunnel 2")
    assert vpc_ping(lab, 3)
    assert plaintext(lab) == 0, "plaintext for the VPC left the gateway"

    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert proc.returncode == 0
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log
    assert re.search(r"event=peer-dead", log)
    for t in lab.tunnels:
        assert t.psk not in log
