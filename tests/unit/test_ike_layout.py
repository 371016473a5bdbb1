"""The layout of cgwd/ike (issue 13): what both versions share, IKEv1 in cgwd/ike/v1, the
endpoint that demultiplexes by IKE version, the exchanges' transition tables, and the old
import paths kept for their callers."""

from __future__ import annotations

import random

from cgwd.ike.endpoint import IkeEndpoint
from cgwd.ike.liveness import Liveness, Probe
from cgwd.ike.v1 import IkePeer, IkePeerConfig
from cgwd.ike.v1.main_mode import TRANSITIONS as MM, Mm
from cgwd.ike.v1.quick_mode import TRANSITIONS as QM, Qm
from cgwd.ike.v2.peer import Ikev2Peer, Ikev2PeerConfig

US, V1_PEER, V2_PEER = "192.0.2.1", "192.0.2.2", "192.0.2.3"
PSK = b"layout-test-psk"


def _rand(seed):
    rng = random.Random(seed)
    return lambda n: bytes(rng.getrandbits(8) for _ in range(n))


def test_the_endpoint_demultiplexes_by_ike_version():
    ep = IkeEndpoint(US)
    ep.now = lambda: 10.0
    sent: list = []
    ep._send = sent.append
    v1 = IkePeer(IkePeerConfig(US, V1_PEER, PSK, initiator=False), random_bytes=_rand(1), name="v1")
    v2 = Ikev2Peer(Ikev2PeerConfig(US, V2_PEER, PSK, initiator=False), random_bytes=_rand(2), name="v2")
    ep.add_peer(v1)
    ep.add_peer(v2)
    a1 = IkePeer(IkePeerConfig(V1_PEER, US, PSK), random_bytes=_rand(3), name="a1")
    a1.start(0.0)
    mm1 = a1.datagrams_to_send()[0].data
    a2 = Ikev2Peer(Ikev2PeerConfig(V2_PEER, US, PSK), random_bytes=_rand(4), name="a2")
    a2.start(0.0)
    sa_init = a2.datagrams_to_send()[0].data
    assert mm1[17] == 0x10 and sa_init[17] == 0x20
    # each version reaches the engine of its version
    ep._dispatch(mm1, (V1_PEER, 500), False)
    ep._dispatch(sa_init, (V2_PEER, 500), False)
    assert [d.remote[0] for d in sent] == [V1_PEER, V2_PEER]  # both answered
    # the other version is a counted drop at the endpoint, never the engine's
    n1, n2 = dict(v1.counters), dict(v2.counters)
    ep._dispatch(sa_init, (V1_PEER, 500), False)
    ep._dispatch(b"\x00\x00\x00\x00" + mm1, (V2_PEER, 4500), True)
    assert ep.counters["drop_wrong_ike_version"] == 2
    assert v1.counters == n1 and v2.counters == n2 and len(sent) == 2
    # what is no IKE of either version is the engine's to count as malformed
    junk = bytearray(mm1)
    junk[17] = 0x70
    ep._dispatch(bytes(junk), (V1_PEER, 500), False)
    assert v1.counters["drop_malformed_bad_version"] == 1


def test_main_mode_steps_are_fixed_per_role():
    initiator = {s: n for (role, s), (_, n) in MM.items() if role}
    responder = {s: n for (role, s), (_, n) in MM.items() if not role}
    assert initiator == {Mm.I1: Mm.I3, Mm.I3: Mm.I5, Mm.I5: Mm.ESTABLISHED}
    assert responder == {Mm.R2: Mm.R4, Mm.R4: Mm.ESTABLISHED}
    assert (True, Mm.ESTABLISHED) not in MM and (False, Mm.ESTABLISHED) not in MM


def test_quick_mode_steps_are_fixed_per_role():
    assert {k: v for k, (_, v) in QM.items()} == {
        (True, Qm.I1): frozenset({Qm.DONE, Qm.WAIT_CONNECTED}),
        (False, Qm.R2): frozenset({Qm.DONE}),
    }


def test_a_main_mode_message_out_of_turn_is_a_counted_drop():
    from test_ike_session import established, make_pair

    net = make_pair()
    established(net)
    a, b = net.a.peer, net.b.peer
    mm = [d for s, d in net.log if s == "a" and d.data[18] == 2]  # A's main-mode messages
    b._rx_cache.clear()
    b.receive_datagram(mm[-1].data, ("192.0.2.1", 500), 500, net.now)  # MM5 again, now ESTABLISHED
    assert b.counters["drop_unexpected_main_mode"] == 1
    assert b.status()["state"] == "established"


def test_liveness_probes_only_when_idle_and_counts_unanswered_probes():
    live = Liveness(seq=7)
    live.heard(100.0)
    assert live.check(105.0, 10, 3) == (Probe.WAIT, 110.0)
    assert live.check(110.0, 10, 3) == (Probe.SEND, 120.0)
    assert live.probe(110.0) == 8 and live.outstanding == 1
    for t in (120.0, 130.0):
        assert live.check(t, 10, 3)[0] is Probe.SEND
        live.probe(t)
    assert live.check(140.0, 10, 3) == (Probe.DEAD, None)
    live.heard(141.0)
    assert live.outstanding == 0 and live.check(141.5, 10, 3) == (Probe.WAIT, 151.0)


def test_old_import_paths_still_work():
    from cgwd.ike import IkeEndpoint as E
    from cgwd.ike import codec, constants, session
    from cgwd.ike.crypto import DiffieHellman, ke_length  # noqa: F401 (the IKEv2 engine's)
    from cgwd.ike.v1 import codec as codec1
    from cgwd.ike.v1 import constants as constants1

    assert session.IkePeer is IkePeer and session.IkePeerConfig is IkePeerConfig
    assert codec.Header is codec1.Header and constants.GROUP_NAMES is constants1.GROUP_NAMES
    assert E is IkeEndpoint
