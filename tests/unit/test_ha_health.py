"""cgwctl health: the verdict from status dicts (table-driven), its exit status, and
properties: any JSON value gives a verdict (never an exception), and losing a tunnel never
makes the verdict better."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgwd.ha.health import Health, evaluate, exit_code

from sample_status import SAMPLE


def tun(name, vpn="vpn-a", *, ike="established", ipsec="installed", bgp="established", received=1,
        static=None, enabled=True):
    t = {"name": name, "vpn": vpn, "enabled": enabled, "ike": {"state": ike},
         "ipsec": {"state": ipsec, "sas": [{"spi_in": "c0ffee01"}] if ipsec == "installed" else []},
         "bgp": {"state": bgp, "prefixes_received": received}}
    if static is not None:
        t["static"] = {"state": static}
        t["bgp"] = {"state": "disabled", "prefixes_received": 0}
    return t


def route(prefix, tunnel, best=True):
    return {"prefix": prefix, "tunnel": tunnel, "best": best}


def status(tunnels, routes, vpns=None, system=()):
    names = vpns if vpns is not None else sorted({t["vpn"] for t in tunnels})
    return {"tunnels": tunnels, "routes": routes,
            "vpns": [v if isinstance(v, dict) else {"name": v} for v in names],
            "system": [{"name": s} for s in system]}


VPC = "10.100.0.0/16"
BOTH_UP = status([tun("t1"), tun("t2")], [route(VPC, "t1"), route(VPC, "t2", best=False)])

CASES = [
    ("all up", BOTH_UP, Health.UP, "2/2 tunnels up"),
    ("one tunnel's IKE down", status([tun("t1"), tun("t2", ike="connecting", ipsec="none", bgp="idle")],
                                      [route(VPC, "t1")]), Health.DEGRADED, "t2 IKE connecting"),
    ("SA not installed", status([tun("t1"), tun("t2", ipsec="none")], [route(VPC, "t1")]),
     Health.DEGRADED, "t2 no SA installed"),
    ("BGP not established on one", status([tun("t1"), tun("t2", bgp="active", received=0)], [route(VPC, "t1")]),
     Health.DEGRADED, "t2 BGP active"),
    ("established but learned nothing", status([tun("t1"), tun("t2", received=0)], [route(VPC, "t1")]),
     Health.DEGRADED, "t2 BGP established, nothing learned"),
    ("disabled by the operator", status([tun("t1"), tun("t2", enabled=False)], [route(VPC, "t1")]),
     Health.DEGRADED, "t2 disabled"),
    ("no tunnel up", status([tun("t1", ike="idle", ipsec="none", bgp="idle"),
                             tun("t2", ike="connecting", ipsec="none", bgp="idle")], []),
     Health.DOWN, "no tunnel up"),
    ("tunnels up, nothing carried", status([tun("t1", received=0), tun("t2", received=0)], []),
     Health.DOWN, "no tunnel up"),
    ("a prefix unreachable while another is carried",
     status([tun("t1"), tun("t2")], [route(VPC, "t1"), route(VPC, "t2", best=False)],
            vpns=[{"name": "vpn-a", "unreachable": ["10.101.0.0/16"]}]), Health.DEGRADED, "unreachable 10.101.0.0/16"),
    ("static: both carrying", status([tun("s1", static="up"), tun("s2", static="hold-down")], [],
                                     vpns=[{"name": "vpn-a", "carriers": {VPC: ["s1"]}}]), Health.UP, "2/2"),
    ("static: one silent", status([tun("s1", static="up"), tun("s2", static="silent")], [],
                                  vpns=[{"name": "vpn-a", "carriers": {VPC: ["s1"]}}]),
     Health.DEGRADED, "s2 static routes silent"),
    ("static: none carries", status([tun("s1", static="down"), tun("s2", static="silent")], [],
                                    vpns=[{"name": "vpn-a", "carriers": {VPC: []}}]), Health.DOWN, "no tunnel up"),
    ("static: up but no carrier listed", status([tun("s1", static="up")], [],
                                                vpns=[{"name": "vpn-a", "carriers": {VPC: []}}]),
     Health.DOWN, "no prefix carried"),
    ("two VPNs, one down", status([tun("t1"), tun("t2"), tun("u1", "vpn-b", ike="idle", ipsec="none", bgp="idle")],
                                  [route(VPC, "t1")]), Health.DOWN, "vpn-b: no tunnel up"),
    ("a VPN without tunnels", status([tun("t1"), tun("t2")], [route(VPC, "t1")], vpns=["vpn-a", "vpn-empty"]),
     Health.DOWN, "vpn-empty: no tunnels"),
    ("no VPN at all", status([], [], vpns=[]), Health.DOWN, "no VPN connection configured"),
    ("forwarding off", status([tun("t1"), tun("t2")], [route(VPC, "t1")], system=["ip_forward_off"]),
     Health.DOWN, "does not forward (ip_forward_off)"),
    ("not a status", {"ok": True}, Health.UNAVAILABLE, "no tunnels list"),
    ("BGP states as the daemon prints them (capitalised elsewhere)",
     status([tun("t1", bgp="Established"), tun("t2", bgp="ESTABLISHED")], [route(VPC, "t1")]), Health.UP, "2/2"),
]


@pytest.mark.parametrize(("name", "st_", "want", "why"), CASES, ids=[c[0] for c in CASES])
def test_verdicts(name, st_, want, why):
    r = evaluate(st_)
    assert r.health == want, r.line
    assert why in r.reason, r.line
    assert "\n" not in r.line


@pytest.mark.parametrize(("health", "strict", "code"), [
    (Health.UP, False, 0), (Health.UP, True, 0),
    (Health.DEGRADED, False, 0), (Health.DEGRADED, True, 1),
    (Health.DOWN, False, 1), (Health.DOWN, True, 1),
    (Health.UNAVAILABLE, False, 2), (Health.UNAVAILABLE, True, 2),
])
def test_exit_codes(health, strict, code):
    assert exit_code(health, strict) == code


def test_sample_status_of_the_status_screen():
    """The status the screen tests use: vpn-1 has one tunnel of two, vpn-2 none carrying."""
    r = evaluate(SAMPLE)
    assert r.health == Health.DOWN
    assert "vpn-2" in r.reason and "tun3 no SA installed" in r.reason
    assert "vpn-1 degraded" in r.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["tunnels", "routes", "vpns", "system", "name", "vpn", "state", "ike", "ipsec", "bgp",
                         "static", "sas", "enabled", "prefix", "tunnel", "best", "carriers", "unreachable",
                         "prefixes_received"]), inner, max_size=6),
    max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_any_json_gives_a_verdict(value):
    r = evaluate(value)
    assert isinstance(r.health, Health)
    assert r.exit_code() in (0, 1, 2)
    assert "\n" not in r.line


tunnel_states = st.fixed_dictionaries({
    "ike": st.sampled_from(["established", "connecting", "idle", "down"]),
    "ipsec": st.sampled_from(["installed", "none"]),
    "bgp": st.sampled_from(["established", "idle", "active"]),
    "received": st.integers(0, 3),
})


@settings(max_examples=100, deadline=None)
@given(st.lists(tunnel_states, min_size=1, max_size=4), st.data())
def test_losing_a_tunnel_never_improves_the_verdict(states, data):
    tunnels = [tun(f"t{i}", ike=s["ike"], ipsec=s["ipsec"], bgp=s["bgp"], received=s["received"])
               for i, s in enumerate(states)]
    routes = [route(VPC, t["name"], best=(i == 0)) for i, t in enumerate(tunnels) if t["bgp"]["prefixes_received"]]
    before = evaluate(status(tunnels, routes)).health
    i = data.draw(st.integers(0, len(tunnels) - 1))
    worse = copy.deepcopy(tunnels)
    worse[i]["ike"]["state"] = "connecting"
    after = evaluate(status(worse, routes)).health
    assert after >= before


@pytest.mark.parametrize("value", [
    {"tunnels": [], "routes": True},
    {"tunnels": [{"name": ["x"], "vpn": "v"}], "routes": [{"tunnel": {}}]},
    {"tunnels": [{"vpn": "v"}], "vpns": [{"name": "v", "carriers": True, "unreachable": 5}]},
    {"tunnels": [], "system": True, "vpns": True},
    {"tunnels": [{"name": "a", "vpn": "v"}], "routes": [{"tunnel": ["a"], "prefix": "10.0.0.0/8"}]},
])
def test_fields_of_the_wrong_type_give_a_verdict(value):
    """Shapes hypothesis found (a bool where a list is due, a list where a name is): a verdict,
    never a TypeError out of cgwctl health."""
    r = evaluate(value)
    assert isinstance(r.health, Health) and r.exit_code() in (0, 1, 2)
