"""A gateway pair over LAN BGP (issue 17), with a fake clock and no sockets: two boxes, each
its own VPN connection (two tunnels) and one session with the same on-prem router.

Box 1 is active (no prepend, no MED); box 2 is standby: ``prepend = 2`` on its VPN (towards
AWS) and ``prepend = 2``, ``med = 50`` on its ``[[lan_neighbor]]`` (towards the LAN). Table-
driven: what each box announces to the LAN and to AWS as its tunnels go up and down; then a
reload turns the standby active in place (the session kept, every prefix re-sent)."""
import asyncio
import dataclasses

import pytest

from cgwd.bgp.message import AS_SEQUENCE, Route
from cgwd.config import parse_config
from cgwd.lan.format import format_lan
from cgwd.lan.part import LanBgp, lan_routes
from cgwd.routing.source import LearnedPath
from test_lan_exchange import VPC, Site
from unit_config import BASE

ONPREM = "10.201.1.0/24"          # what the router gives both boxes
STATIC = "10.200.0.0/24"          # both boxes' own advertise
ASN = 65000


def box_config(*, vpn_prepend=0, vpn_med=None, lan_prepend=0, lan_med=None, remote_asn=65010):
    vpn = "".join(f"\n{k} = {v}" for k, v in (("prepend", vpn_prepend), ("med", vpn_med)) if v)
    lan = (f"prepend = {lan_prepend}\n" if lan_prepend else "") + (f"med = {lan_med}\n" if lan_med is not None else "")
    text = BASE.replace('advertise = ["10.200.0.0/24"]', 'advertise = ["10.200.0.0/24"]' + vpn)
    return parse_config(text + f"""
[[lan_neighbor]]
name = "core1"
address = "10.200.0.10"
local_address = "10.200.0.1"
remote_asn = {remote_asn}
import = ["10.201.0.0/16 le 24"]
{lan}""")


def seen(route: Route | None) -> tuple | None:
    """(AS path, MED) as the peer received it; None: not announced."""
    return None if route is None else (tuple(route.as_path_list()), route.med)


def aws_side(site: Site, i: int) -> dict[str, tuple]:
    return {r.prefix: seen(r) for r in site.parts[i].session.advertised()}


AWS = 64512                       # the AS path AWS announces the VPC with (Site.aws_route)
ACTIVE, STANDBY = (ASN, AWS), (ASN, ASN, ASN, AWS)      # to the router: ours (+ prepend), then AWS's
OURS, OURS_STANDBY = (ASN,), (ASN, ASN, ASN)            # to AWS: ours alone

# (step, tunnel, up, the router's view of the VPC prefix on box 1, on box 2)
STEPS = [
    ("no tunnel up yet", None, None, None, None),
    ("tunnel 1 up, AWS announces the VPC", 0, True, (ACTIVE, None), (STANDBY, 50)),
    ("tunnel 2 up too", 1, True, (ACTIVE, None), (STANDBY, 50)),
    ("tunnel 1 down: tunnel 2 still carries it", 0, False, (ACTIVE, None), (STANDBY, 50)),
    ("tunnel 2 down: nothing carries it", 1, False, None, None),
    ("tunnel 2 back", 1, True, (ACTIVE, None), (STANDBY, 50)),
]


@pytest.fixture
def pair():
    b1 = Site(box_config())
    b2 = Site(box_config(vpn_prepend=2, lan_prepend=2, lan_med=50))
    for b in (b1, b2):
        b.router_announces([ONPREM])
    return b1, b2


def test_what_each_box_announces_to_the_lan_and_to_aws_as_tunnels_go_up_and_down(pair):
    b1, b2 = pair
    for step, tunnel, up, want1, want2 in STEPS:
        for b in (b1, b2):
            if tunnel is not None:
                b.tunnel(tunnel, up)
                if up:
                    b.aws_route(tunnel)
                    b.pump()
        assert seen(b1.got.get(VPC)) == want1, f"box 1, {step}"
        assert seen(b2.got.get(VPC)) == want2, f"box 2, {step}"
        # towards AWS the tunnel's own prepend/MED applies to advertise and to the LAN's prefixes alike
        for i in (0, 1):
            assert aws_side(b1, i) == {STATIC: (OURS, None), ONPREM: (OURS, None)}, f"box 1 tun{i + 1}, {step}"
            assert aws_side(b2, i) == {STATIC: (OURS_STANDBY, None), ONPREM: (OURS_STANDBY, None)}, \
                f"box 2 tun{i + 1}, {step}"
    # the on-prem router's choice: the shorter AS path (then the lower MED) is box 1's
    assert min((len(seen(b.got[VPC])[0]), seen(b.got[VPC])[1] or 0, n) for n, b in ((1, b1), (2, b2)))[2] == 1


@pytest.mark.parametrize("prepend, med, ibgp, path, got_med", [
    (0, None, False, (ASN, AWS), None),
    (1, None, False, (ASN, ASN, AWS), None),
    (2, 50, False, (ASN, ASN, ASN, AWS), 50),
    (10, 0, False, (ASN,) * 11 + (AWS,), 0),
    (0, 4294967295, False, (ASN, AWS), 4294967295),
    (0, 50, True, (AWS,), 50),
    (0, None, True, (AWS,), None),
])
def test_the_router_receives_the_configured_prepend_and_med(prepend, med, ibgp, path, got_med):
    cfg = box_config(lan_prepend=prepend, lan_med=med, remote_asn=ASN if ibgp else 65010)
    (n,) = cfg.lan_neighbors
    assert (n.prepend, n.med, n.ibgp) == (prepend, med, ibgp)
    (r,) = lan_routes({VPC: LearnedPath(((AS_SEQUENCE, (AWS,)),))}, n)
    assert r.as_path == ((AS_SEQUENCE, (ASN,) * prepend + (AWS,)),) and r.med == med
    b = Site(cfg)
    b.tunnel(0, True)
    b.aws_route(0)
    b.pump()
    assert seen(b.got[VPC]) == (path, got_med)
    assert b.got[VPC].next_hop == "10.200.0.1"


def test_a_reload_turns_the_standby_active_in_place_and_re_sends_what_it_announced(pair):
    _b1, b2 = pair
    b2.tunnel(0, True)
    b2.aws_route(0)
    b2.pump()
    assert seen(b2.got[VPC]) == (STANDBY, 50)
    st = b2.lan.status()["neighbors"][0]
    assert (st["prepend"], st["med"]) == (2, 50), "read back: config in == status out"
    assert "prepend 2, MED 50" in "\n".join(format_lan(b2.lan.status(), 0.0))
    new = dataclasses.replace(b2.n.cfg, prepend=0, med=None)
    assert b2.n.cfg.changes(new).in_place == {"prepend", "med"} and not b2.n.cfg.changes(new).restart
    out = asyncio.run(b2.lan.reconfigure([new]))
    assert out["applied"] == {"core1": ["med", "prepend"]} and not out["restarted"]
    b2.pump()
    assert b2.lan.neighbors["core1"] is b2.n and b2.n.session.state == "Established", "the session was kept"
    assert seen(b2.got[VPC]) == (ACTIVE, None), "the router got the new attributes"
    st = b2.lan.status()["neighbors"][0]
    assert (st["prepend"], st["med"]) == (0, None)
    back = dataclasses.replace(new, prepend=3, med=7)
    asyncio.run(b2.lan.reconfigure([back]))
    b2.pump()
    assert seen(b2.got[VPC]) == ((ASN,) * 4 + (AWS,), 7)


def test_a_reload_from_the_file_reads_back_prepend_and_med():
    cfg = box_config(lan_prepend=2, lan_med=50)
    lan = LanBgp(lambda: [])
    lan.add(cfg.lan_neighbors[0])
    st = lan.status()["neighbors"][0]
    assert (st["prepend"], st["med"]) == (2, 50)
    new = box_config(lan_prepend=0, lan_med=None)
    out = asyncio.run(lan.reconfigure(new.lan_neighbors))
    assert out["applied"] == {"core1": ["med", "prepend"]}
    st = lan.status()["neighbors"][0]
    assert (st["prepend"], st["med"]) == (0, None)


def test_the_pair_example_configs_parse_with_box_b_prepending_on_both_sides():
    import os
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    got = {}
    for box in ("a", "b"):
        text = open(os.path.join(root, "examples", "lan-bgp-pair", f"cgwd-{box}.toml")).read()
        text = re.sub(r'psk_file = "[^"]*"', 'psk = "Kq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0"', text)
        cfg = parse_config(text)
        (n,) = cfg.lan_neighbors
        got[box] = ({t.prepend for t in cfg.vpns[0].tunnels}, n.prepend, n.med, n.local_asn, n.remote_asn)
    assert got == {"a": ({0}, 0, None, 65000, 65010), "b": ({2}, 2, None, 65000, 65010)}
