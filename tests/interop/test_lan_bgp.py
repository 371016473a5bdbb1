"""LAN-side BGP (issue 17): cgwd peers with a real BIRD on the on-prem side of the lab.

The on-prem namespace runs BIRD (AS 65010, eBGP with TCP MD5) peering with cgwd's LAN
address 10.200.0.1. BIRD announces 10.201.1.0/24 (cgwd's import filter allows 10.201.0.0/16
le 24) and 10.202.0.0/24 (not allowed). Checked in the real peers and the kernels:

* BIRD learns the VPC prefix with cgwd's LAN address as next hop and the AS path
  ``cgw_asn aws_asn`` (``as_path = "aws"``), no MED (none configured); a reload to
  ``as_path = "originate"`` and ``med = 40`` re-sends it with ``cgw_asn`` alone and
  ``BGP.med`` 40, in place (no new session);
* the allowed prefix reaches AWS's BIRD on both endpoints (and the VPC's), the denied one
  does not; a ping from an address of the allowed prefix reaches the VPC host and returns
  (the VPC's reply goes through a tunnel and cgwd routes it to the router that gave it);
* ``cgwctl status`` (JSON and text) shows the neighbor, what it sent and what it was sent;
* both AWS endpoints die: BIRD loses the VPC prefix.

The FRR variant: FRR (zebra + bgpd, cgwd.lab.frr) as an iBGP router (cgwd's own AS, TCP MD5): it learns the VPC
prefix with LOCAL_PREF 100, AWS's AS path unchanged and cgwd's LAN address as next hop; its allowed
prefix reaches AWS, the denied one does not; cgwd's shutdown takes the VPC prefix away.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from cgwd.lab.bird import BgpNeighbor, Bird, BirdConfig
from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, start_cgwd
from cgwd.lab.faults import kill_endpoint
from cgwd.lab.frr import Frr, FrrConfig, FrrNeighbor, frr_available
from cgwd.lab.netns import run, wait_for
from labenv import lan_config

pytestmark = pytest.mark.interop

ALLOWED, DENIED = "10.201.1.0/24", "10.202.0.0/24"
ROUTER_AS = 65010
MD5 = "lan-md5-Secret.42"
SOURCE = "10.201.1.10"       # an on-prem address inside the allowed prefix


def _lan_config(lab, remote_asn: int = ROUTER_AS) -> str:
    return lan_config(lab, remote_asn=remote_asn, password=MD5)


def _router(lab) -> Bird:
    nb = BgpNeighbor("cgw", lab.spec.onprem_host, ROUTER_AS, "10.200.0.1", lab.spec.cgw_asn,
                     export="where source = RTS_STATIC", import_="all", extra=f'password "{MD5}";')
    bird = Bird(lab.onprem, os.path.join(lab.workdir, "onprem-bird"), BirdConfig(
        router_id=lab.spec.onprem_host, static_routes=[(ALLOWED, "blackhole"), (DENIED, "blackhole")],
        neighbors=[nb]))
    bird.start()
    lab.procs.append(bird.proc)
    return bird


def _route_detail(bird: Bird, prefix: str) -> str:
    return bird.birdc("show", "route", prefix, "all")


def test_lan_bird_learns_the_vpc_prefix_and_its_allowed_prefix_reaches_aws(lab_factory):
    lab = lab_factory()
    lab.onprem.ip(f"addr add {SOURCE}/32 dev lo")
    router = _router(lab)
    config = _lan_config(lab)
    proc = start_cgwd(lab, config)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.3, what="cgwd tunnels + BGP")
    assert proc.poll() is None, open(log_path).read()[-3000:]

    # the router learns the VPC prefix, next hop cgwd's LAN address, AS path cgwd's ASN then
    # AWS's (as_path = "aws", the default: the path cgwd learned from AWS's BIRD)
    wait_for(lambda: lab.spec.vpc_cidr in router.routes("cgw"), 60, interval=0.5, what="BIRD to learn the VPC prefix")
    detail = _route_detail(router, lab.spec.vpc_cidr)
    assert re.search(r"BGP\.next_hop: 10\.200\.0\.1\b", detail), detail
    assert re.search(rf"BGP\.as_path: {lab.spec.cgw_asn} {lab.spec.aws_asn}\s*$", detail, re.M), detail
    assert "BGP.med" not in detail, detail

    # the allowed prefix reaches AWS's BIRD on both tunnels, the denied one never
    for t in lab.tunnels:
        wait_for(lambda: ALLOWED in t.bird.routes("cgw"), 30, interval=0.5, what=f"aws{t.index} to learn {ALLOWED}")
    wait_for(lambda: ALLOWED in lab.vpc_bird.routes(), 30, interval=0.5, what=f"the VPC to learn {ALLOWED}")
    for t in lab.tunnels:
        got = t.bird.routes("cgw")
        assert DENIED not in got and lab.spec.onprem_cidr in got, got

    # traffic from the allowed prefix to the VPC and back (cgwd routes the reply to the router)
    assert re.search(rf"{re.escape(ALLOWED)} via {lab.spec.onprem_host} dev lan0 proto 157",
                     lab.cgw.ip(f"route show {ALLOWED}", check=False).stdout)
    ping = lab.onprem.run(["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-I", SOURCE, lab.spec.vpc_host],
                          check=False, timeout=20)
    assert " 0% packet loss" in ping.stdout, ping.stdout

    st = cgwctl_status(lab, as_json=True)
    (n,) = st["lan"]["neighbors"]
    assert n["state"] == "established" and n["md5"] is True and n["remote_asn"] == ROUTER_AS
    assert n["received"] == [ALLOWED] and list(n["refused"]) == [DENIED]
    assert n["sent"] == [lab.spec.vpc_cidr]
    assert all(st["lan"]["to_aws"][t["name"]]["sent"] == [ALLOWED] for t in st["tunnels"])
    assert n["as_path"] == "aws"
    text = cgwctl_status(lab)
    assert "LAN neighbors (1):" in text and "core1" in text and "Established" in text, text
    assert "as_path aws" in text, text
    assert MD5 not in text and MD5 not in str(st) and MD5 not in open(log_path).read()

    # as_path = "originate" and med = 40 by reload: applied in place (the session stays), the
    # router gets the VPC prefix again with cgwd's ASN alone and MED 40
    opens = n["messages_in"]["open"]
    with open(config) as f:
        text = f.read()
    assert text.count(f'password = "{MD5}"\n') == 1, text
    with open(config, "w") as f:
        f.write(text.replace(f'password = "{MD5}"\n', f'password = "{MD5}"\nas_path = "originate"\nmed = 40\n'))
    r = run(cgwctl_command("reload", "--socket", f"{lab.workdir}/cgwd.sock"), check=False, timeout=30)
    assert r.returncode == 0 and "lan:core1 (as_path, med)" in r.stdout + r.stderr, r.stdout + r.stderr
    wait_for(lambda: re.search(rf"BGP\.as_path: {lab.spec.cgw_asn}\s*$", _route_detail(router, lab.spec.vpc_cidr),
                               re.M), 30, interval=0.5, what="BIRD to get the VPC prefix as originated by cgwd")
    assert re.search(r"BGP\.med: 40\s*$", _route_detail(router, lab.spec.vpc_cidr), re.M)
    (n,) = cgwctl_status(lab, as_json=True)["lan"]["neighbors"]
    assert n["as_path"] == "originate" and n["state"] == "established" and n["messages_in"]["open"] == opens, n
    assert n["med"] == 40
    assert "as_path originate" in cgwctl_status(lab)

    # both AWS endpoints die (charon killed, no DELETE): the router loses the VPC prefix
    for t in lab.tunnels:
        kill_endpoint(lab, t)
    wait_for(lambda: lab.spec.vpc_cidr not in router.routes("cgw"), 120, interval=0.5,
             what="the VPC prefix to be withdrawn from the LAN router")
    assert router.established("cgw"), "the LAN session stays up: only the VPC prefix went"
    st = cgwctl_status(lab, as_json=True)
    assert st["lan"]["neighbors"][0]["sent"] == []

    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    assert lab.cgw.ip("route show proto 157", check=False).stdout.strip() == ""
    assert "Traceback" not in open(log_path).read()


need_frr = pytest.mark.skipif(frr_available() is not None, reason=f"{frr_available()} (optional)")
FRR_ALLOWED, FRR_DENIED = "10.201.2.0/24", "10.203.0.0/24"


def _frr(lab, asn: int) -> Frr:
    """FRR (zebra + bgpd, cgwd.lab.frr) in the on-prem namespace, peering with cgwd's LAN address."""
    frr = Frr(lab.onprem, os.path.join(lab.workdir, "onprem-frr"), FrrConfig(
        router_id=lab.spec.onprem_host, asn=asn, networks=[FRR_ALLOWED, FRR_DENIED],
        neighbors=[FrrNeighbor("10.200.0.1", lab.spec.cgw_asn, password=MD5)]))
    frr.start()
    lab.procs.extend(frr.procs.values())
    return frr


def _frr_path(frr: Frr, prefix: str) -> dict | None:
    paths = frr.paths(prefix)
    return paths[0] if paths else None


@need_frr
def test_lan_frr_ibgp_with_md5(lab_factory):
    lab = lab_factory()
    frr = _frr(lab, lab.spec.cgw_asn)
    config = _lan_config(lab, remote_asn=lab.spec.cgw_asn)
    proc = start_cgwd(lab, config)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.3, what="cgwd tunnels + BGP")
    assert proc.poll() is None, open(log_path).read()[-3000:]
    r = wait_for(lambda: _frr_path(frr, lab.spec.vpc_cidr), 60, interval=0.5, what="FRR to learn the VPC prefix")
    assert r.get("locPrf") == 100, r
    # iBGP: AWS's path as cgwd learned it, no ASN of cgwd's added (as_path = "aws")
    assert (r.get("aspath") or {}).get("string") == str(lab.spec.aws_asn), r
    assert [h.get("ip") for h in r.get("nexthops") or []] == ["10.200.0.1"], r
    for t in lab.tunnels:
        wait_for(lambda: FRR_ALLOWED in t.bird.routes("cgw"), 30, interval=0.5, what=f"aws{t.index} to learn {FRR_ALLOWED}")
        assert FRR_DENIED not in t.bird.routes("cgw")
    (n,) = cgwctl_status(lab, as_json=True)["lan"]["neighbors"]
    assert n["ibgp"] is True and n["state"] == "established" and n["received"] == [FRR_ALLOWED]
    assert list(n["refused"]) == [FRR_DENIED]
    opens = n["messages_in"]["open"]     # the same after the reload: no new session
    # a reload narrows the filter: applied in place (the session stays), AWS loses the prefix
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace('import = ["10.201.0.0/16 le 24"]', 'import = ["10.201.9.0/24"]'))
    r = run(cgwctl_command("reload", "--socket", f"{lab.workdir}/cgwd.sock"), check=False, timeout=30)
    assert r.returncode == 0 and "lan:core1 (import_filter)" in r.stdout + r.stderr, r.stdout + r.stderr
    for t in lab.tunnels:
        wait_for(lambda: FRR_ALLOWED not in t.bird.routes("cgw"), 30, interval=0.5,
                 what=f"aws{t.index} to lose {FRR_ALLOWED} after the reload")
    (n,) = cgwctl_status(lab, as_json=True)["lan"]["neighbors"]
    assert n["state"] == "established" and n["received"] == [] and n["messages_in"]["open"] == opens, n
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    wait_for(lambda: _frr_path(frr, lab.spec.vpc_cidr) is None, 30, interval=0.5,
             what="FRR to lose the VPC prefix when cgwd stops")
    assert "Traceback" not in open(log_path).read()


def test_lan_prefixes_over_the_gateways_limit_are_held_and_the_aws_session_stays_up(lab_factory):
    """max_advertise = 3 with one static prefix: room for two LAN prefixes. BIRD gives three
    the filter allows; AWS's BIRD gets the static one and the first two, the third is held
    (status, metrics), and neither AWS session is reset."""
    lab = lab_factory()
    extra = ["10.201.11.0/24", "10.201.12.0/24", "10.201.13.0/24"]
    nb = BgpNeighbor("cgw", lab.spec.onprem_host, ROUTER_AS, "10.200.0.1", lab.spec.cgw_asn,
                     export="where source = RTS_STATIC", import_="all", extra=f'password "{MD5}";')
    router = Bird(lab.onprem, os.path.join(lab.workdir, "onprem-bird"), BirdConfig(
        router_id=lab.spec.onprem_host, static_routes=[(p, "blackhole") for p in extra[:2]], neighbors=[nb]))
    router.start()
    lab.procs.append(router.proc)
    path = _lan_config(lab)
    text = open(path).read()
    text = re.sub(r"^(advertise = .*)$", r"\1\nmax_advertise = 3", text, count=1, flags=re.M)
    with open(path, "w") as f:
        f.write(text)
    proc = start_cgwd(lab, path)
    log_path = os.path.join(lab.workdir, "cgwd.log")
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.3, what="cgwd tunnels + BGP")
    assert proc.poll() is None, open(log_path).read()[-3000:]
    for t in lab.tunnels:
        wait_for(lambda: set(extra[:2]) <= set(t.bird.routes("cgw")), 60, interval=0.5,
                 what=f"aws{t.index} to learn the first two LAN prefixes")
    router.config.static_routes.append((extra[2], "blackhole"))     # the third arrives last
    router.reconfigure()
    wait_for(lambda: all(cgwctl_status(lab, as_json=True)["lan"]["to_aws"][t]["held"] == [extra[2]]
                         for t in cgwctl_status(lab, as_json=True)["lan"]["to_aws"]), 30, interval=0.5,
             what="the third LAN prefix to be held on both tunnels")
    for t in lab.tunnels:
        got = set(t.bird.routes("cgw"))
        assert got == {lab.spec.onprem_cidr, *extra[:2]}, got
        assert t.bird.established("cgw")
    st = cgwctl_status(lab, as_json=True)
    assert all(t["bgp"]["state"] == "established" and t["bgp"]["limit_resets"] == 0 for t in st["tunnels"])
    assert st["lan"]["held_now"] == 2 and st["lan"]["held_total"] == 2
    assert "held back over the gateway's limit" in cgwctl_status(lab)
    assert "event=lan-prefixes-over-limit" in open(log_path).read()
    # the router withdraws one that AWS has: the held one takes its place
    router.config.static_routes = [r for r in router.config.static_routes if r[0] != extra[0]]
    router.reconfigure()
    for t in lab.tunnels:
        wait_for(lambda: set(t.bird.routes("cgw")) == {lab.spec.onprem_cidr, *extra[1:]}, 30, interval=0.5,
                 what=f"aws{t.index} to get the held prefix once there is room")
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
