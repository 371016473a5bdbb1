"""RIB best path / ECMP / max-prefix / graceful restart across tunnels."""
import pytest

from cgwd.bgp.message import Route, seq, AS_SET, AS_SEQUENCE
from cgwd.bgp.policy import ImportPolicy
from cgwd.routing.rib import NextHop, Rib, RibChanges

VPC = "10.100.0.0/16"

def R(prefix=VPC, path=(64512,), med=None, nh="169.254.10.1"):
    return Route(prefix, nh, seq(*path), med=med)


def rib(**kw):
    kw.setdefault("import_policy", ImportPolicy("aws-default", ("192.168.50.0/24",)))
    r = Rib(**kw)
    r.tunnel_up("t1", "tun1", "169.254.10.1", index=0)
    r.tunnel_up("t2", "tun2", "169.254.11.1", index=1)
    return r


NH1 = NextHop("t1", "tun1", "169.254.10.1")
NH2 = NextHop("t2", "tun2", "169.254.11.1")


@pytest.mark.parametrize("r1,r2,ecmp,want", [
    pytest.param(R(path=(64512,)), R(path=(64512, 64512, 64512)), False, (NH1,), id="shorter-as-path"),
    pytest.param(R(path=(64512, 64512)), R(path=(64512,)), False, (NH2,), id="shorter-as-path-2"),
    pytest.param(R(med=200), R(med=100), False, (NH2,), id="lower-med"),
    pytest.param(R(med=100), R(med=200), False, (NH1,), id="lower-med-1"),
    pytest.param(R(path=(64512,), med=500), R(path=(64512, 1), med=1), False, (NH1,), id="path-before-med"),
    pytest.param(R(), R(), False, (NH1,), id="tie-lower-index"),
    pytest.param(R(), R(), True, (NH1, NH2), id="ecmp"),
    pytest.param(R(med=5), R(med=6), True, (NH1,), id="ecmp-needs-equal-med"),
    pytest.param(R(med=None), R(med=1), False, (NH1,), id="missing-med-is-0"),
])
def test_best_path(r1, r2, ecmp, want):
    rb = rib(ecmp=ecmp)
    rb.update("t1", [r1], [])
    rb.update("t2", [r2], [])
    assert rb.selected[VPC] == want


def test_as_set_counts_one():
    rb = rib()
    rb.update("t1", [Route(VPC, "x", ((AS_SEQUENCE, (64512,)), (AS_SET, (1, 2, 3, 4))))], [])
    rb.update("t2", [R(path=(64512, 1, 2))], [])
    assert rb.selected[VPC] == (NH1,)


def test_changes_add_replace_remove_and_failover():
    rb = rib()
    ch, _ = rb.update("t1", [R()], [])
    assert ch.add == {VPC: (NH1,)}
    ch, _ = rb.update("t2", [R(path=(64512, 64512))], [])
    assert not ch                                   # backup path: no FIB change
    ch = rb.tunnel_down("t1")
    assert ch.replace == {VPC: (NH2,)}
    ch, _ = rb.update("t2", [], [VPC])
    assert ch.remove == [VPC]
    assert rb.selected == {}


def test_policy_default_deny_rfc8212():
    rb = Rib(import_policy=None)
    rb.tunnel_up("t1", "tun1", "169.254.10.1")
    ch, _ = rb.update("t1", [R()], [])
    assert not ch and rb.counts("t1")["rejected"] == 1


@pytest.mark.parametrize("action", ["warn", "drop", "reset"])
def test_max_prefix(action):
    rb = rib(max_prefix=10, max_prefix_action=action)
    routes = [R(f"10.{i}.0.0/16") for i in range(11)]
    ch, act = rb.update("t1", routes, [])
    n = rb.counts("t1")["accepted"]
    if action == "warn":
        assert n == 11 and act is None and rb.counts("t1")["max_prefix_hit"]
    elif action == "drop":
        assert n == 10 and act is None and "10.10.0.0/16" not in rb.selected
    else:
        assert act == "reset" and n == 0 and rb.selected == {}


def test_graceful_restart_stale_then_eor_flush():
    rb = rib()
    rb.update("t1", [R(), R("10.101.0.0/16")], [])
    rb.update("t2", [R(path=(64512, 64512))], [])
    ch = rb.session_down("t1", graceful=True, restart_time=120, now=100)
    # stale path loses to a fresh one; a stale-only prefix stays installed
    assert ch.replace == {VPC: (NH2,)} and not ch.remove
    assert rb.selected["10.101.0.0/16"] == (NH1,)
    assert rb.get_timer() == 220
    rb.update("t1", [R()], [])                    # refreshed after restart
    assert rb.selected[VPC] == (NH1,)
    ch = rb.end_of_rib("t1")
    assert ch.remove == ["10.101.0.0/16"]


def test_graceful_restart_timer_expiry():
    rb = rib()
    rb.update("t1", [R()], [])
    rb.session_down("t1", graceful=True, restart_time=120, now=0)
    assert not rb.expire_stale(119)
    assert rb.expire_stale(120).remove == [VPC]


def test_non_graceful_session_down_removes_at_once():
    rb = rib()
    rb.update("t1", [R()], [])
    assert rb.session_down("t1", graceful=False).remove == [VPC]


def test_routes_not_installed_while_tunnel_down():
    rb = Rib(import_policy=ImportPolicy("any"))
    rb.add_tunnel("t1")
    ch, _ = rb.update("t1", [R()], [])
    assert not ch
    assert rb.tunnel_up("t1", "tun1", "169.254.10.1").add == {VPC: (NextHop("t1", "tun1", "169.254.10.1"),)}


def test_changes_merge():
    a = RibChanges(add={"p": 1}, remove=["q"])
    a.merge(RibChanges(add={"q": 2}, remove=["p"]))
    assert a.add == {} and a.replace == {"q": 2} and a.remove == []




# ---------------------------------------------------------------- routes that may not cover the outside
@pytest.mark.parametrize("prefix,covers", [
    ("0.0.0.0/1", False), ("128.0.0.0/1", True), ("198.51.100.0/24", True), ("198.51.100.2/32", True),
    ("198.51.100.4/30", False), ("0.0.0.0/0", True), ("203.0.113.0/30", True), ("10.100.0.0/16", False),
    ("2001:db8::/32", False),
])
def test_default_import_refuses_prefixes_covering_an_outside_address(prefix, covers):
    """Before: aws-default accepted 128.0.0.0/1 or the endpoint's /24; once installed, IKE and
    ESP to the endpoint routed into the tunnel itself."""
    rb = rib(protected=("198.51.100.2", "203.0.113.2"), import_policy=ImportPolicy("aws-default"))
    rb.update("t1", [R(prefix)], [])
    assert (prefix in rb.selected) is (not covers and prefix != "0.0.0.0/0")
    if covers:
        assert rb.counts("t1")["refused"].get("covers_outside_address", 0) + \
            rb.counts("t1")["refused"].get("import_policy", 0) == 1


def test_configured_routes_covering_an_outside_address_are_refused_too():
    from cgwd.routing.static import StaticRoute
    rb = Rib(protected=("198.51.100.2",), fail_closed=True, configured=["0.0.0.0/0", "10.100.0.0/16"])
    assert rb.guarded == {"10.100.0.0/16"}
    rb.tunnel_up("t1", "tun1", "169.254.10.1")
    ch = rb.offer("t1", [StaticRoute("0.0.0.0/0", (0,)), StaticRoute(VPC, (0,))])
    assert ch.add == {VPC: (NH1,)} and rb.counts("t1")["refused"] == {"covers_outside_address": 1}


# ---------------------------------------------------------------- fail-closed guards
def test_learned_prefixes_become_guarded_once_and_stay():
    rb = rib(fail_closed=True)
    ch, _ = rb.update("t1", [R(), R("10.101.0.0/16")], [])
    assert ch.guard_add == {VPC, "10.101.0.0/16"}
    ch, _ = rb.update("t1", [R()], ["10.101.0.0/16"])
    assert not ch.guard_add and not ch.guard_remove
    ch = rb.tunnel_down("t1")
    assert ch.remove and not ch.guard_remove
    assert rb.unreachable() == [VPC, "10.101.0.0/16"]


def test_guards_follow_fail_closed_and_policy_on_reconfigure():
    rb = rib(fail_closed=True, import_policy=ImportPolicy("any"))
    rb.update("t1", [R(), R("10.101.0.0/16")], [])
    ch, _ = rb.reconfigure(ecmp=False, import_policy=ImportPolicy("prefix-list", allow=(VPC,)),
                           max_prefix=1000, max_prefix_action="warn", fail_closed=True)
    assert ch.guard_remove == {"10.101.0.0/16"} and ch.remove == ["10.101.0.0/16"]
    ch, _ = rb.reconfigure(ecmp=False, import_policy=ImportPolicy("any"), max_prefix=1000,
                           max_prefix_action="warn", fail_closed=False)
    assert ch.guard_remove == {VPC} and rb.guarded == set()
    assert "10.101.0.0/16" in rb.selected        # refused routes were kept: back in place


def test_changes_merge_guards():
    a = RibChanges(guard_add={"p"}, guard_remove={"q"})
    a.merge(RibChanges(guard_add={"q"}, guard_remove={"p", "r"}))
    assert a.guard_add == {"q"} and a.guard_remove == {"p", "r"}


# ---------------------------------------------------------------- configured routes (static)
def test_offer_replaces_what_a_tunnel_offers_and_preference_decides():
    from cgwd.routing.static import StaticRoute
    rb = rib(import_policy=ImportPolicy("deny"))          # the import policy is for learned routes
    ch = rb.offer("t2", [StaticRoute(VPC, (1,))])
    assert ch.add == {VPC: (NH2,)}
    ch = rb.offer("t1", [StaticRoute(VPC, (0,))])
    assert ch.replace == {VPC: (NH1,)}
    ch = rb.offer("t1", [StaticRoute(VPC, (2,))])          # demoted (hold-down): the other carries
    assert ch.replace == {VPC: (NH2,)}
    ch = rb.offer("t1", [])
    assert not ch and rb.routes()[0]["source"] == "static"
    rb.ecmp = True
    rb.offer("t1", [StaticRoute(VPC, (1,))])
    assert rb.selected[VPC] == (NH1, NH2)


# ---------------------------------------------------------------- invariant: nothing covers the outside
from hypothesis import given, settings, strategies as st  # noqa: E402
import ipaddress  # noqa: E402

PROTECTED = ("198.51.100.2", "203.0.113.2", "192.168.1.10")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)), max_size=30),
       st.sampled_from(["any", "aws-default"]), st.booleans())
def test_no_selected_or_guarded_prefix_ever_covers_an_outside_address(nets, mode, fail_closed):
    from cgwd.routing.static import StaticRoute
    rb = Rib(import_policy=ImportPolicy(mode), protected=PROTECTED, fail_closed=fail_closed,
             configured=[str(ipaddress.ip_network(n, strict=False)) for n in nets[:3]])
    rb.tunnel_up("t1", "tun1", "169.254.10.1", 0)
    rb.tunnel_up("t2", "tun2", "169.254.11.1", 1)
    prefixes = [str(ipaddress.ip_network(n, strict=False)) for n in nets]
    rb.update("t1", [R(p) for p in prefixes], [])
    rb.offer("t2", [StaticRoute(p) for p in prefixes])
    for p in list(rb.selected) + list(rb.guarded):
        net = ipaddress.ip_network(p)
        assert not any(ipaddress.ip_address(a) in net for a in PROTECTED), p
    refused = rb.counts("t1")["refused"].get("covers_outside_address", 0)
    assert refused == sum(1 for p in prefixes if any(ipaddress.ip_address(a) in ipaddress.ip_network(p)
                                                     for a in PROTECTED) and ImportPolicy(mode).accepts(p))
