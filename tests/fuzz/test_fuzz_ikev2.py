"""Fuzz the IKEv2 decoder and the IKEv2 engine with mutated real messages.

Seeds: IKEv2 messages captured between charon and cgwd (corpus/ikev2, written by
tests/interop/test_ikev2_kat_live.py: IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA for a Child SA and
for the IKE SA, INFORMATIONAL) plus the messages an in-memory peer sent to an established
engine during a liveness check, a Child SA rekey and an IKE SA rekey (so that mutations carry
live SPIs and message IDs and reach the window, integrity and decryption checks).

What must hold for every input: the decoder raises only Ikev2DecodeError; the engine raises
nothing, logs no traceback, keeps its established IKE SA and Child SA (no event takes the
tunnel down), keeps at most half_open_limit half-open SAs, its next deadline is later than now,
and it allocates a bounded amount.
"""

from __future__ import annotations

import copy
import logging
import random
import sys
from pathlib import Path

from fuzzlib import FUZZ, corpus, inputs
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from cgwd.ike.events import IpsecSaDown, PeerDead, Phase1Down  # noqa: E402
from cgwd.ike.v2.codec import Ikev2DecodeError, decode_message  # noqa: E402

from test_ikev2_harness import PSK, Net  # noqa: E402


def _template() -> Net:
    net = Net({"dpd_interval": 10}, {"dpd_interval": 10}, seed=11).up()
    net.advance(11)  # liveness both ways
    net.b.peer.rekey_ipsec(net.now)
    net.pump()
    net.b.peer.rekey_ike(net.now)
    net.pump()
    net.advance(6)
    net.a.events.clear()
    net.wire.clear()
    return net


def _from_b(net: Net) -> list[bytes]:
    # what B sends while A is established: a fresh recording on a copy
    n = copy.deepcopy(net)
    n.b.peer.rekey_ipsec(n.now)
    n.pump()
    n.advance(11)
    return [d.data for src, d in n.wire if src == "B" and not d.raw]


_TEMPLATE = _template()
SEEDS = corpus("ikev2") + _from_b(_TEMPLATE)


@FUZZ
@given(inputs(SEEDS))
def test_ikev2_decoder_raises_only_decode_error(alloc_guard, data):
    with alloc_guard:
        try:
            hdr, payloads = decode_message(data)
        except Ikev2DecodeError:
            return
    assert hdr.length == len(data)


@FUZZ
@given(st.lists(inputs(SEEDS), min_size=1, max_size=4), st.sampled_from([500, 4500]), st.integers(1, 65535))
def test_established_ikev2_engine_survives_hostile_datagrams(alloc_guard, caplog, datas, port, sport):
    net = copy.deepcopy(_TEMPLATE)
    a = net.a.peer
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="cgwd"):
        for data in datas:
            with alloc_guard:
                a.receive_datagram(data, ("192.0.2.2", sport), port, net.now + 1)
            t = a.get_timer()
            assert t is None or t > net.now + 1
            a.datagrams_to_send()
    while (e := a.next_event()) is not None:
        net.a.events.append(e)
    down = [e for e in net.a.events if isinstance(e, (IpsecSaDown, PeerDead, Phase1Down))]
    assert not down, f"hostile input took the tunnel down: {down}"
    st_ = a.status()
    assert st_["state"] == "established" and st_["ipsec_sas"], st_
    assert len([s for s in st_["ike_sas"] if s["state"] == "init_done"]) <= a.config.half_open_limit
    assert not any("internal_error" in k for k in a.counters), a.counters
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert PSK.decode() not in caplog.text


def test_a_replayed_request_is_answered_from_the_cache_not_processed_again():
    net = copy.deepcopy(_TEMPLATE)
    n = copy.deepcopy(net)
    n.b.peer.rekey_ipsec(n.now)
    req = [d for d in n.b.peer.datagrams_to_send()]
    assert req
    a = net.a.peer
    a.receive_datagram(req[0].data, ("192.0.2.2", req[0].local_port), req[0].remote[1], net.now)
    first = a.datagrams_to_send()
    ups = [e for e in iter(a.next_event, None)]
    a.receive_datagram(req[0].data, ("192.0.2.2", req[0].local_port), req[0].remote[1], net.now)
    again = a.datagrams_to_send()
    assert [d.data for d in again] == [d.data for d in first]
    assert list(iter(a.next_event, None)) == [] and ups
    assert a.counters["retransmits_answered"] >= 1


def test_bit_flips_of_protected_messages_fail_integrity_not_parsing_deeper():
    net = copy.deepcopy(_TEMPLATE)
    n = copy.deepcopy(net)
    n.b.peer.rekey_ipsec(n.now)
    msg = bytearray(n.b.peer.datagrams_to_send()[0].data)
    rng = random.Random(3)
    a = net.a.peer
    for _ in range(50):
        bad = bytearray(msg)
        i = rng.randrange(32, len(bad))
        bad[i] ^= 1 << rng.randrange(8)
        a.receive_datagram(bytes(bad), ("192.0.2.2", 500), 500, net.now)
    assert a.counters["drop_integrity"] == 50
    assert a.status()["state"] == "established"
