"""A Transit Gateway VPN connection holding more than 1,500 prefixes (issue 12, item 1).

AWS's side (BIRD on both endpoints) announces the VPC and 1,600 more prefixes to a TGW-type
VPN connection imported from the lab's XML (gateway_type "tgw": up to 5,000 prefixes from
AWS, ECMP over both tunnels). The sessions stay Established past the hold time (a VGW's
1,000 limit, where a swallowed max_prefix once put every VPN, would have reset them over and
over) and every prefix is in the kernel through both tunnels.
"""

from __future__ import annotations

import os
import time

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for

pytestmark = pytest.mark.interop

EXTRA = 1600


def _kernel_routes(lab) -> list[str]:
    out = lab.cgw.ip("route show proto 157", check=False).stdout
    return [line for line in out.splitlines() if line and not line[0].isspace() and not line.startswith("unreachable")]


def _since(bird) -> str:
    line = next((l for l in bird.birdc("show", "protocols", "cgw").splitlines() if l.startswith("cgw")), "")
    return " ".join(line.split()[3:5])          # "Established"'s "since" column


def test_tgw_vpn_keeps_1601_prefixes_past_the_hold_time(lab_factory):
    lab = lab_factory(gateway="tgw", vpc_extra_prefixes=EXTRA)
    config = import_config(lab)
    text = open(config).read()
    assert 'gateway_type = "tgw"' in text and "max_prefix" not in text   # the TGW default, 5,000
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 90, interval=1, what="tunnels + BGP")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    want = EXTRA + 1
    wait_for(lambda: len(_kernel_routes(lab)) == want, 120, interval=1, what=f"{want} routes in the kernel")
    st = cgwctl_status(lab, as_json=True)
    assert st["vpns"][0]["max_prefix"] == 5000 and st["vpns"][0]["ecmp"] is True
    since = [_since(t.bird) for t in lab.tunnels]
    hold = max(t.spec.hold_time for t in lab.tunnels)
    time.sleep(hold + 10)                        # past the hold time: no reset, no flap
    assert [_since(t.bird) for t in lab.tunnels] == since
    assert all(lab.aws_bgp_established(t.index) for t in lab.tunnels)
    st = cgwctl_status(lab, as_json=True)
    assert [t["bgp"]["state"] for t in st["tunnels"]] == ["established", "established"]
    assert [t["bgp"]["prefixes_received"] for t in st["tunnels"]] == [want, want]
    routes = _kernel_routes(lab)
    assert len(routes) == want
    # ECMP: the prefixes go through both tunnels (multipath routes)
    multipath = lab.cgw.ip("route show 10.128.5.0/24", check=False).stdout
    assert "nexthop via 169.254.10.1" in multipath and "nexthop via 169.254.20.1" in multipath
    unreachable = [l for l in lab.cgw.ip("route show proto 157", check=False).stdout.splitlines()
                   if l.startswith("unreachable")]
    assert len(unreachable) == want              # every learned prefix fails closed too
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "event=bgp-down" not in log and "maximum prefix count" not in log
    assert proc.poll() is None
