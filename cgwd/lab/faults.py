"""Faults the lab can inflict on a running VPN, from outside the customer gateway.

Each acts where the fault happens in real life: an AWS endpoint replaced during maintenance
(its charon gone with every IKE and ESP SA, a new one on the same address), an endpoint that
goes silent (the WAN router drops its packets), loss on the WAN, the customer's NAT router
forgetting its mappings, a BGP session reset by AWS's side. Every fault that stays in place
returns its undo; rules carry the comment ``cgwd-lab-fault`` so that :func:`clear` finds them.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Callable

from .netns import Netns, wait_for

MARK = "cgwd-lab-fault"
Undo = Callable[[], None]


def kill_endpoint(lab, t) -> None:
    """The AWS endpoint of tunnel ``t`` dies: its charon is killed (no DELETE is sent), its
    IKE and ESP state is gone, libipsec's ``ipsec0`` with it. BIRD keeps running."""
    if t.charon.proc is not None and t.charon.proc.poll() is None:
        os.killpg(t.charon.proc.pid, signal.SIGKILL)
        t.charon.proc.wait(10)
    if not lab.spec.aws_kernel_ipsec:
        wait_for(lambda: "ipsec0" not in t.ns.ip("-o link show", check=False).stdout, 10, what="ipsec0 to go")


def start_endpoint(lab, t) -> None:
    """A new charon for tunnel ``t``'s endpoint: same address, same configuration, no memory
    of any SA (with start_action "start" it initiates at once, as AWS does)."""
    t.charon.start()
    t.ns.ip(f"addr replace {t.aws_inside}/{t.inside.prefixlen} dev ipsec0")
    t.ns.ip("link set ipsec0 up")
    if lab.spec.static:
        t.ns.ip(f"route replace {lab.spec.onprem_cidr} dev ipsec0")
    t.charon.load()


def replace_endpoint(lab, t, outage: float = 0.0) -> float:
    """AWS maintenance: the endpoint of tunnel ``t`` is replaced, its state lost, the same
    outside address back after ``outage`` seconds. Returns the monotonic time the old
    endpoint died."""
    kill_endpoint(lab, t)
    died = time.monotonic()
    if outage > 0:
        time.sleep(outage)
    start_endpoint(lab, t)
    return died


def _iptables(ns: Netns, *args: str, table: str = "filter") -> None:
    ns.run(["iptables", "-w", "-t", table, *args])


def silence_endpoint(lab, t) -> Undo:
    """Tunnel ``t``'s endpoint drops everything, both ways (it died silently, or the path to it
    did): the WAN router drops what goes to and comes from it."""
    rules = [["FORWARD", "-i", f"aws{t.index}"], ["FORWARD", "-o", f"aws{t.index}"]]
    for r in rules:
        _iptables(lab.wan, "-I", *r, "-m", "comment", "--comment", MARK, "-j", "DROP")

    def undo() -> None:
        for r in rules:
            lab.wan.run(["iptables", "-w", "-D", *r, "-m", "comment", "--comment", MARK, "-j", "DROP"], check=False)
    return undo


def wan_loss(lab, probability: float) -> Undo:
    """Random loss of ``probability`` (0..1) on every packet the WAN router forwards."""
    rule = ["FORWARD", "-m", "statistic", "--mode", "random", "--probability", f"{probability:.3f}",
            "-m", "comment", "--comment", MARK, "-j", "DROP"]
    _iptables(lab.wan, "-I", *rule)

    def undo() -> None:
        lab.wan.run(["iptables", "-w", "-D", *rule], check=False)
    return undo


def flush_conntrack(ns: Netns) -> None:
    code = "from pyroute2 import Conntrack\nwith Conntrack() as c: c.flush()\n"
    ns.run([sys.executable, "-c", code], timeout=30)


def nat_rebind(lab, ports: tuple[int, int] | None = None) -> None:
    """The customer's NAT router forgets its mappings (conntrack flushed) and, with
    ``ports``, maps UDP to that source port range from now on: the gateway's IKE and ESP
    appear at AWS from a new public port."""
    if lab.nat is None:
        raise ValueError("nat_rebind needs a lab with nat=True")
    if ports is not None:
        _iptables(lab.nat, "-F", "POSTROUTING", table="nat")
        _iptables(lab.nat, "-A", "POSTROUTING", "-o", "wan0", "-p", "udp", "-j", "MASQUERADE", "--to-ports",
                  f"{ports[0]}-{ports[1]}", table="nat")
        _iptables(lab.nat, "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE", table="nat")
    flush_conntrack(lab.nat)


def bgp_reset(t) -> None:
    """AWS's side resets the BGP session of tunnel ``t`` (BIRD restarts the protocol: a
    NOTIFICATION Cease, then a new session)."""
    t.bird.birdc("restart", "cgw")


def clear(lab) -> int:
    """Remove every fault rule still in place (after a failed test); returns how many."""
    n = 0
    for ns in (lab.wan,):
        out = ns.run(["iptables", "-w", "-S", "FORWARD"], check=False).stdout
        for line in out.splitlines():
            if MARK in line and line.startswith("-A "):
                ns.run(["iptables", "-w", "-D", *line.split()[1:]], check=False)
                n += 1
    return n
