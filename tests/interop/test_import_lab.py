"""`cgwctl import aws` turns what AWS hands out into configs that bring the lab up.

For each download format the lab's VPN connection is written the way AWS writes it
(cgwd.lab.awsvendor: describe-vpn-connections JSON, the Generic text, the Yamaha RTX and
Cisco IOS templates with the lab's addresses, keys and ASNs), imported with the operator's
command, and cgwd is started from the result. strongSwan + BIRD (the AWS side) must see both
tunnels up, BGP must install the VPC route, and a ping must cross. The vendor formats run with
the customer gateway behind NAT, as in seeds 002/003 (`--local-address`), the others direct.
(The XML itself is covered by test_cgwd_lab.py.)
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
from cgwd.lab.strongswan import list_sas_parsed

pytestmark = pytest.mark.interop

# format -> (customer gateway behind NAT?, what `cgwctl import aws` says it detected)
CASES = {
    "json": (False, "json"),
    "generic": (False, "generic"),
    "yamaha": (True, "yamaha"),
    "cisco-ios": (True, "cisco"),
}


@pytest.mark.parametrize("fmt", list(CASES))
def test_aws_download_imports_and_brings_the_lab_up(lab_factory, fmt):
    nat, detected = CASES[fmt]
    lab = lab_factory(nat=nat)
    src = awsvendor.write_lab(lab, fmt)
    out = os.path.join(lab.workdir, "cgwd.toml")
    args = ["import", "aws", src, "--advertise", lab.spec.onprem_cidr, "-o", out]
    if nat:
        args += ["--local-address", lab.cgw_outside]
    r = run(cgwctl_command(*args), check=False)
    assert r.returncode == 0, r.stderr
    assert f"detected: {FORMAT_NAMES[detected]}" in r.stderr
    for t in lab.tunnels:
        assert t.psk not in r.stdout + r.stderr, "a PSK was printed by cgwctl import"
    r = run(cgwctl_command("config", "check", out), check=False)
    assert r.returncode == 0 and r.stdout.startswith("OK: 1 VPN connection(s), 2 tunnel(s)"), r.stdout + r.stderr

    # The imported config says what the download says, and what this box is.
    cfg = load_config(out)
    assert [str(t.remote_address) for t in cfg.tunnels] == [t.aws_outside for t in lab.tunnels]
    assert [str(t.inside_cidr) for t in cfg.tunnels] == [str(t.inside) for t in lab.tunnels]
    assert [t.psk.decode() for t in cfg.tunnels] == [t.psk for t in lab.tunnels]
    assert {(t.local_asn, t.remote_asn) for t in cfg.tunnels} == {(lab.spec.cgw_asn, lab.spec.aws_asn)}
    assert {str(t.local_address) for t in cfg.tunnels} == {lab.cgw_outside}
    assert {str(t.public_address) for t in cfg.tunnels} == {lab.spec.cgw_public}
    assert {(t.dpd_interval, t.dpd_retries, t.hold_time) for t in cfg.tunnels} == {(10, 3, 30)}

    proc = start_cgwd(lab, out)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5,
             what=f"cgwd from the {fmt} import: tunnels + BGP + VPC route")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    st = cgwctl_status(lab, as_json=True)
    assert [t["ike"]["state"] for t in st["tunnels"]] == ["established", "established"]
    assert [t["ipsec"]["state"] for t in st["tunnels"]] == ["installed", "installed"]
    assert [t["bgp"]["state"] for t in st["tunnels"]] == ["established", "established"]
    assert [t["bgp"]["prefixes_received"] for t in st["tunnels"]] == [1, 1]
    assert {r["prefix"] for r in st["routes"]} == {lab.spec.vpc_cidr}
    assert {r["tunnel"] for r in st["routes"]} == {t["name"] for t in st["tunnels"]}
    assert all(t["outside"]["nat"]["local_behind_nat"] == nat for t in st["tunnels"])
    # What the AWS side and the kernel say.
    for t in lab.tunnels:
        sas = list_sas_parsed(t.charon.list_sas())
        assert [sa["state"] for sa in sas] == ["ESTABLISHED"]
        assert sas[0]["children"][0]["state"] == "INSTALLED"
        assert lab.spec.onprem_cidr in t.bird.routes("cgw"), f"aws{t.index} did not learn the on-prem prefix"
    assert re.search(r"10\.100\.0\.0/16 via 169\.254\.(10|20)\.1 dev cgw-\S+ proto 157", lab.cgw_routes())
    lab.wait_ping(30)
    assert lab.ping(3)

    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert proc.returncode == 0
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log
    for t in lab.tunnels:
        assert t.psk not in log


@pytest.mark.parametrize("fmt", awsvendor.FORMATS)
def test_static_and_ikev2_downloads_of_the_lab_import(lab_factory, fmt):
    """The lab's VPN connection written as a static download and as an IKEv2 one imports with
    the operator's command and passes `cgwctl config check`, saying what the lab is.  (Bringing
    such a config up against the lab is the static-routing and IKEv2 engines' interop test,
    with `cgwctl lab up --static` / `--ike 2`.)"""
    lab = lab_factory(up=False)
    out = os.path.join(lab.workdir, "cgwd.toml")
    src = awsvendor.write_lab(lab, fmt, static=True)
    vendor_route = fmt in ("yamaha", "cisco-ios")  # the vendor texts carry the operator's route to the VPC
    r = run(cgwctl_command("import", "aws", src, "-o", out), check=False)
    if not vendor_route:
        assert r.returncode == 1 and "--static-route CIDR" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        r = run(cgwctl_command("import", "aws", src, "--static-route", lab.spec.vpc_cidr, "-o", out), check=False)
    assert r.returncode == 0, r.stderr
    for t in lab.tunnels:
        assert t.psk not in r.stdout + r.stderr
    r = run(cgwctl_command("config", "check", out), check=False)
    assert r.returncode == 0 and r.stdout.startswith("OK: 1 VPN connection(s), 2 tunnel(s)"), r.stdout + r.stderr
    cfg = load_config(out)
    assert cfg.vpns[0].routing == "static" and [str(n) for n in cfg.vpns[0].static_routes] == [lab.spec.vpc_cidr]
    assert [str(t.remote_address) for t in cfg.tunnels] == [t.aws_outside for t in lab.tunnels]
    assert [t.psk.decode() for t in cfg.tunnels] == [t.psk for t in lab.tunnels]
    if fmt == "cisco-ios":
        return  # cgwd reads AWS's IKEv1 Cisco template only
    src = awsvendor.write_lab(lab, fmt, ike_versions=(2,), startup_action="start" if fmt == "json" else None)
    args = ["import", "aws", src, "--advertise", lab.spec.onprem_cidr, "-o", out]
    r = run(cgwctl_command(*args + (["--ike-version", "2"] if fmt == "xml" else [])), check=False)
    assert r.returncode == 0, r.stderr
    cfg = load_config(out)
    assert {t.ike_version for t in cfg.tunnels} == {2}
    assert {t.startup_action for t in cfg.tunnels} == {"start" if fmt == "json" else "add"}
