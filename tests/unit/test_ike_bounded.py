"""What an IKE engine holds stays bounded however long it runs (issue 18: the soak's RSS creep).

Both engines of each version run in memory with a fake clock through phase-2 / Child SA rekeys
every minute (from either side), phase-1 re-authentications / IKE SA rekeys every few minutes
from alternating sides and DPD. After N minutes and after 2N minutes the objects reachable from
each engine (walked through references, as the garbage collector sees them) are counted by
type: the SAs and pairs an engine can reach must be the same few, not one more per rekey. A
pair that kept a reference to the pair it replaced (IKEv1 ``ChildSa.displaced``, IKEv2
``ChildSa.rekeys``), or an ISAKMP SA to the one it re-authenticated (``IsakmpSa.replaces``),
once held every SA of the tunnel's life, keys included. After every timer the engine ran, its
next deadline lies in the future.
"""

from __future__ import annotations

import collections
import gc
import types

import pytest

from cgwd.ike.v1 import IkePeer, IkePeerConfig
from test_ike_session import PSK, Net as Net1, seeded_random
from test_ikev2_harness import Net as Net2

# no PFS: the runs stay fast (phase 1 still does its DH every re-authentication)
TIMERS = {"ipsec_lifetime": 120, "rekey_margin": 40, "rekey_fuzz": 50, "ike_lifetime": 900, "dpd_interval": 10}
KINDS = ("ChildSa", "IpsecSaPair", "IsakmpSa", "QuickMode", "IkeSa", "Phase1Keys", "IkeKeys", "DiffieHellman")
# at most this many of each kind reachable at any time (a rekey in flight, a collision's pair,
# the SA being replaced and its successor)
BOUND = 6

_OPAQUE = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType,
           types.FrameType)


def reachable(root: object) -> collections.Counter:
    """Objects reachable from ``root`` by type name (modules, classes and functions are not
    followed: they lead to everything; a bound method leads to its object only)."""
    seen = {id(root)}
    todo = [root]
    counts: collections.Counter = collections.Counter()
    while todo:
        obj = todo.pop()
        counts[type(obj).__name__] += 1
        refs = [obj.__self__] if isinstance(obj, types.MethodType) else gc.get_referents(obj)
        for r in refs:
            if id(r) not in seen and not isinstance(r, _OPAQUE):
                seen.add(id(r))
                todo.append(r)
    return counts


def make_v1() -> Net1:
    common = {"ike_proposals": ["aes128-sha1-modp2048"], "esp_proposals": ["aes128-sha1"], **TIMERS}
    a = IkePeer(IkePeerConfig("192.0.2.1", "192.0.2.2", PSK, **common), random_bytes=seeded_random(7), name="A")
    b = IkePeer(IkePeerConfig("192.0.2.2", "192.0.2.1", PSK, **{**common, "rekey_margin": 45}),
                random_bytes=seeded_random(8), name="B")
    return Net1(a, b)


def make_v2() -> Net2:
    common = {"ike_proposals": ["aes128-sha256-modp2048"], "esp_proposals": ["aes128-sha1"], **TIMERS}
    return Net2(common, {**common, "rekey_margin": 45}, b_initiator=True, seed=7)


class Runner:
    """One minute at a time: the engines' own timers, and now and then a forced renewal."""

    def __init__(self, net, a, b, pump) -> None:
        self.net, self.a, self.b, self.pump = net, a, b, pump
        self.minute = 0

    def step_to(self, until: float) -> None:
        net = self.net
        while True:
            self.pump()
            ts = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            if not ts or min(ts) > until:
                net.now = until
                self.pump()
                return
            net.now = max(net.now, min(ts))
            for p in (self.a, self.b):
                t = p.get_timer()
                if t is not None and t <= net.now:
                    p.handle_timer(net.now)
                    nxt = p.get_timer()
                    assert nxt is None or nxt > net.now, f"{p.name}: deadline {nxt} not after {net.now}"

    def run(self, minutes: int) -> None:
        for _ in range(minutes):
            self.minute += 1
            m = self.minute
            self.step_to(m * 60 + 30)
            if m % 5 == 0:  # phase 1 / the IKE SA renewed from alternating sides
                (self.a if (m // 5) % 2 else self.b).rekey_ike(self.net.now)
            if m % 7 == 0:  # a phase-2 rekey of the peer's on top of the lifetime ones
                self.b.rekey_ipsec(self.net.now)
            self.step_to(m * 60 + 60)
            for p in (self.a, self.b):
                assert not dead_owners(p), (p.name, m, dead_owners(p))


def dead_owners(peer) -> list:
    """Schedule entries whose owner (an SA, a pair, an exchange) the engine no longer has."""
    if isinstance(peer, IkePeer):
        sched = peer.sched
        live = [*peer.sas, *peer.children, *(q for sa in peer.sas for q in sa.qm.values())]
    else:
        sched = peer._schedule
        live = [*peer._sas, *peer._children]
    return [(action, owner) for _at, action, owner in sched
            if owner is not None and not any(owner is x for x in live)]


def _runner(version: int) -> Runner:
    if version == 1:
        net = make_v1()
        r = Runner(net, net.a.peer, net.b.peer, net.pump)
    else:
        net = make_v2()
        r = Runner(net, net.a.peer, net.b.peer, net.pump)
        net.b.peer.start(0.0)
    net.a.peer.start(0.0)
    net.pump()
    return r


def _kinds(peer) -> dict[str, int]:
    c = reachable(peer)
    return {k: c[k] for k in KINDS}


@pytest.mark.parametrize("version", [1, 2])
def test_an_engine_holds_the_same_few_sas_after_n_and_2n_rekeys(version):
    r = _runner(version)
    n = 30
    r.run(n)
    first = {p.name: _kinds(p) for p in (r.a, r.b)}
    rekeys = r.a.counters["rekeys_ipsec"]
    r.run(n)
    second = {p.name: _kinds(p) for p in (r.a, r.b)}
    assert r.a.counters["rekeys_ipsec"] >= rekeys + n // 2  # it did rekey (each side counts its own)
    assert r.a.counters["rekeys_ike"] >= 3 and not r.a.counters.get("dpd_dead")
    for name in first:
        for kind in KINDS:
            assert second[name][kind] <= BOUND, (name, kind, first[name], second[name])
            assert second[name][kind] <= first[name][kind] + 2, (name, kind, first[name], second[name])
    # the tunnel still works at both ends: one pair each, the same one
    assert len(r.a.status()["ipsec_sas"]) >= 1 and len(r.b.status()["ipsec_sas"]) >= 1


def test_ikev1_own_reauthentications_do_not_hold_the_sas_they_replaced():
    # cgwd re-authenticating on its own lifetime time after time (the peer never does)
    net = make_v1()
    a, b = net.a.peer, net.b.peer
    a.config.ike_lifetime = 120  # re-authentication every 60-80 s
    b.config.initiator = False
    r = Runner(net, a, b, net.pump)
    a.start(0.0)
    net.pump()
    r.step_to(20 * 60)
    first = _kinds(a)
    reauths = a.counters["rekeys_ike"]
    r.step_to(40 * 60)
    second = _kinds(a)
    assert a.counters["rekeys_ike"] >= reauths + 12 and not a.counters.get("dpd_dead")
    assert second["IsakmpSa"] <= 3 and second["Phase1Keys"] <= 3, (first, second)
    assert second["IsakmpSa"] <= first["IsakmpSa"] + 1, (first, second)


def test_reachable_counts_what_a_chain_holds():
    # the walk itself: a chain of records through a list attribute is counted whole
    class Rec:
        def __init__(self, prev):
            self.prev = [prev] if prev else []

    head = None
    for _ in range(50):
        head = Rec(head)
    assert reachable(head)["Rec"] == 50
