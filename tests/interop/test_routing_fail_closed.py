"""Fail closed in the lab: with every tunnel of a VPN down, its prefixes are unreachable, not
sent in cleartext to the default route (issue 12, item 6).

Behind the NAT router, both AWS endpoints vanish (every packet to and from them dropped in
the WAN); iptables counts the packets for the VPC that leave the customer gateway's outside
interface, and the NAT router's, unencrypted. With ``fail_closed = false`` (the old
behaviour, for operators who want it) the same pings do leave in cleartext: the counter
works. After a SIGKILL the fail-closed routes stay (not tied to the dead TUNs) until the next
start, which replaces them with its own.
"""

from __future__ import annotations

import os
import re
import signal

import pytest
from faultlab import ping_async, ping_result

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for
from test_static_lab import count_plaintext, cut, plaintext

pytestmark = pytest.mark.interop


def _bring_up(lab, *, fail_closed: bool = True):
    path = import_config(lab)
    text = re.sub(r"dpd_interval = \d+", "dpd_interval = 2", open(path).read())
    if not fail_closed:
        text = text.replace('gateway_type = "vgw"\n', 'gateway_type = "vgw"\nfail_closed = false\n', 1)
    with open(path, "w") as f:
        f.write(text)
    proc = start_cgwd(lab, path)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5, what="tunnels + BGP + route")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    lab.wait_ping(20)
    return proc, path


@pytest.mark.parametrize("fail_closed", [True, False], ids=["fail-closed", "fail-open"])
def test_no_plaintext_leaves_the_gateway_when_every_tunnel_is_down(lab_factory, fail_closed):
    lab = lab_factory(nat=True)
    count_plaintext(lab)
    proc, _ = _bring_up(lab, fail_closed=fail_closed)
    assert bool(lab.cgw_unreachable()) is fail_closed
    assert plaintext(lab) == 0
    for t in lab.tunnels:
        cut(lab, t)
    wait_for(lambda: lab.cgw_routes() == "", 30, interval=0.2, what="DPD to withdraw both tunnels' routes")
    assert not lab.ping(5, timeout=1)
    if fail_closed:
        assert plaintext(lab) == 0, "plaintext for the VPC left the gateway with every tunnel down"
        assert "unreachable 10.100.0.0/16 proto 157 metric 1100" in lab.cgw_unreachable()
        vpn = cgwctl_status(lab, as_json=True)["vpns"][0]
        assert vpn["fail_closed"] and vpn["unreachable"] == [lab.spec.vpc_cidr]
    else:
        assert plaintext(lab) >= 5, "fail_closed = false: the old behaviour (cleartext to the default route)"
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert lab.cgw.ip("route show proto 157", check=False).stdout.strip() == ""


def test_after_sigkill_the_vpc_stays_unreachable_until_the_next_start(lab_factory):
    lab = lab_factory(nat=True)
    count_plaintext(lab)
    proc, path = _bring_up(lab)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    lab.procs.remove(proc)
    # the TUNs died with the process and took their routes; the unreachable route is no
    # interface's and stays: nothing for the VPC leaves in cleartext
    assert lab.cgw_routes() == "" and lab.cgw_unreachable()
    assert not lab.ping(5, timeout=1)
    assert plaintext(lab) == 0
    # the next start keeps it (the VPC prefix is learned again only once BGP is up over a new
    # tunnel) and adopts it; meanwhile pings for the VPC go on: none leaves in cleartext (found by
    # test_chaos.py: the start-up cleanup used to delete it, and the pings went out by the default route)
    pinger = ping_async(lab, 100, 0.1)
    proc2 = start_cgwd(lab, path)
    wait_for(lambda: proc2.poll() is not None or cgwd_ready(lab), 60, interval=0.5, what="cgwd back")
    lab.wait_ping(20)
    pinger.send_signal(signal.SIGINT)
    ping_result(pinger)
    assert plaintext(lab) == 0, "plaintext for the VPC left the gateway while cgwd started again"
    assert len(lab.cgw_unreachable().splitlines()) == 1
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "left by a previous run" in log
    proc2.send_signal(signal.SIGTERM)
    proc2.wait(20)
    assert lab.cgw.ip("route show proto 157", check=False).stdout.strip() == ""
