"""A tunnel disabled by `cgwctl reload` while AWS's own quick mode is in flight (IKEv1, the
customer gateway behind the lab's NAT router): chaos seed 632506208, fault 102, made
deterministic.

cgwd's reload deletes the pairs and then the ISAKMP SA. strongSwan, receiving the ISAKMP
DELETE while a quick mode it initiated is still unanswered, re-establishes the IKE SA
(isakmp_delete -> ike_sa reestablish: "tasks that recreate children") and sends its main mode
to the NAT's public address at port 500. Here charon's quick mode is a rekey started with
`swanctl --rekey` whose answer the WAN router drops for half a second (in the chaos run it
was the rekey charon starts itself when a NAT flush moves cgwd's port).

- With UDP mapped to another port range (the NAT keeps no mapping at port 500, as real NATs
  do not), that main mode never reaches cgwd: the NAT router counts it on its own address,
  cgwd counts nothing, and AWS holds an IKE SA CONNECTING with responder SPI 0. The chaos
  check forgives exactly that (chaoslib.Undeliverable), and only it.
- With port 500 still mapped to cgwd (MASQUERADE keeps the port), the main mode reaches the
  disabled tunnel: cgwd answers nothing while disabled (drop_tunnel_disabled) and answers
  the retransmission once enabled, and everything settles with nothing forgiven.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from chaoslib import aws_half_open, aws_view, nat_input, sa_problems
from faultlab import log_text, status
from test_chaos import Chaos

from cgwd.lab import faults

pytestmark = [pytest.mark.interop, pytest.mark.slow]

DROP = ["FORWARD", "-o", "aws2", "-p", "udp", "-j", "DROP"]


def _charon_log(lt) -> str:
    with open(lt.charon.log, errors="replace") as f:
        return f.read()


def _disable_during_aws_quick_mode(lab, chaos: Chaos) -> str:
    """Tunnel 2 disabled while charon's quick mode waits for cgwd's answer; returns charon's
    log from then on once it has reacted."""
    lt = lab.tunnels[1]
    mark = len(_charon_log(lt))
    lab.wan.run(["iptables", "-w", "-I", *DROP])
    try:
        threading.Thread(target=lambda: lt.charon.swanctl("--rekey", "--child", "vti", check=False),
                         daemon=True).start()
        time.sleep(0.5)
    finally:
        lab.wan.run(["iptables", "-w", "-D", *DROP])
    assert "generating QUICK_MODE request" in _charon_log(lt)[mark:], _charon_log(lt)[mark:]
    chaos.keys[1]["enabled"] = False
    chaos.reload()
    deadline = time.monotonic() + 10
    while "initiating Main Mode" not in _charon_log(lt)[mark:] and time.monotonic() < deadline:
        time.sleep(0.2)
    return _charon_log(lt)[mark:]


def _settle(lab, chaos: Chaos, timeout: float) -> tuple[list[str], set]:
    deadline = time.monotonic() + timeout
    while True:
        st = status(lab)
        forgiven = chaos.undeliverable.spis(st)
        problems = sa_problems(lab, st, undeliverable=forgiven)
        if not problems or time.monotonic() > deadline:
            return problems, forgiven
        time.sleep(0.5)


def test_aws_main_mode_to_the_nats_port_500_is_told_apart(lab_factory):
    lab = lab_factory(tunnels=2, nat=True, ike_version=1)
    chaos = Chaos(lab, random.Random(1), 1)
    lab.wait_ping(30)
    faults.nat_rebind(lab, (42000, 42999))  # no mapping at the NAT's port 500 from now on
    time.sleep(3)
    before = nat_input(lab)
    log = _disable_during_aws_quick_mode(lab, chaos)
    assert "received DELETE for IKE_SA" in log and "initiating Main Mode" in log, log
    assert f"to {lab.spec.cgw_public}[500]" in log, log
    time.sleep(5)  # disabled; charon retransmits its main mode after 4 s
    chaos.keys[1]["enabled"] = True
    chaos.reload()
    problems, forgiven = _settle(lab, chaos, 30)
    st = status(lab)
    tun = st["tunnels"][1]
    half = aws_half_open(aws_view(lab.tunnels[1]), tun)
    assert half, "AWS's main mode to the NAT's port 500 left no half-open IKE SA"
    assert not problems, problems
    assert forgiven == {(2, sa["spi_i"]) for sa in half}
    assert nat_input(lab)[2] > before.get(2, 0), "the NAT router counted none of AWS's main mode"
    assert st["drops"].get("ike_tunnel_disabled", 0) == 0, st["drops"]  # it never reached cgwd
    # not a blanket forgiveness: the same look without it finds the half-open SA
    assert sa_problems(lab, st), "the half-open AWS SA went unnoticed without the forgiveness"


def test_aws_main_mode_reaching_a_disabled_tunnel_is_answered_once_enabled(lab_factory):
    lab = lab_factory(tunnels=2, nat=True, ike_version=1)
    chaos = Chaos(lab, random.Random(1), 1)
    lab.wait_ping(30)  # MASQUERADE kept cgwd's port 500: AWS's main mode reaches cgwd
    log = _disable_during_aws_quick_mode(lab, chaos)
    assert "initiating Main Mode" in log, log
    time.sleep(5)
    st = status(lab)
    assert st["drops"].get("ike_tunnel_disabled", 0) >= 1, st["drops"]
    assert not any(sa["children"] for sa in aws_view(lab.tunnels[1])), "a pair came up at a disabled tunnel"
    chaos.keys[1]["enabled"] = True
    chaos.reload()
    problems, forgiven = _settle(lab, chaos, 40)
    assert not problems, (problems, log_text(lab)[-3000:], _charon_log(lab.tunnels[1])[-4000:])
    assert not forgiven
