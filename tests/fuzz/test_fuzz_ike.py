"""Fuzz the IKE decoder and the IKE engine with mutated real messages.

Seeds: ISAKMP messages captured between cgwd and strongSwan (corpus/ike) plus the messages an
in-memory responder sent during a negotiation, a DPD exchange and a phase-2 rekey (so that
mutations carry the live cookies and message ids and reach the decrypt and HASH checks).

What must hold for every input: the decoder raises only IkeDecodeError; the engine raises
nothing, logs no traceback, keeps its established ISAKMP and IPsec SAs (no event takes the
tunnel down), keeps at most UNVERIFIED_LIMIT + HALF_OPEN_LIMIT half-open SAs, and allocates a
bounded amount.
"""

from __future__ import annotations

import copy
import logging
import random

from fuzzlib import FUZZ, corpus, inputs
from hypothesis import given
from hypothesis import strategies as st

from cgwd.ike.v1.codec import IkeDecodeError, decode_message
from cgwd.ike.events import IpsecSaDown, IpsecSaUp, PeerDead, Phase1Down
from cgwd.ike.v1 import IkePeer, IkePeerConfig
from cgwd.ike.v1.main_mode import HALF_OPEN_LIMIT, UNVERIFIED_LIMIT

PSK = b"fuzz-psk-never-printed"
A, B = "192.0.2.1", "192.0.2.2"


def _rand(seed):
    rng = random.Random(seed)
    return lambda n: bytes(rng.getrandbits(8) for _ in range(n))


class Pair:
    """cgwd's engine (A, initiator) against a responder (B), in memory, fake clock."""

    def __init__(self, seed=1):
        self.a = IkePeer(IkePeerConfig(A, B, PSK, dpd_interval=10), random_bytes=_rand(seed), name="A")
        self.b = IkePeer(IkePeerConfig(B, A, PSK, initiator=False, dpd_interval=10),
                         random_bytes=_rand(seed + 7), name="B")
        self.now = 0.0
        self.from_b: list[tuple[bytes, int]] = []
        self.a_events: list = []

    def pump(self):
        for _ in range(50):
            moved = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                for d in src.datagrams_to_send():
                    if d.raw:
                        continue
                    moved = True
                    if src is self.b:
                        self.from_b.append((d.data, d.local_port))
                    dst.receive_datagram(d.data, (src.config.local_address, d.local_port), d.remote[1], self.now)
            while (e := self.a.next_event()) is not None:
                self.a_events.append(e)
            while self.b.next_event() is not None:
                pass
            if not moved:
                return

    def establish(self):
        self.a.start(self.now)
        self.pump()
        assert any(isinstance(e, IpsecSaUp) for e in self.a_events)
        # a DPD round trip and a phase-2 rekey, so the seeds hold informational and quick mode
        self.now = 15.0
        self.a.handle_timer(self.now)
        self.b.handle_timer(self.now)
        self.pump()
        self.a.rekey_ipsec(self.now)
        self.pump()
        self.a_events.clear()
        return self


_TEMPLATE = Pair().establish()
SEEDS = corpus("ike") + [d for d, _ in _TEMPLATE.from_b]


@FUZZ
@given(inputs(SEEDS))
def test_ike_decoder_raises_only_decode_error(alloc_guard, data):
    with alloc_guard:
        try:
            decode_message(data)
        except IkeDecodeError:
            pass


@FUZZ
@given(st.lists(inputs(SEEDS), min_size=1, max_size=4), st.sampled_from([500, 4500]))
def test_established_engine_survives_hostile_datagrams(alloc_guard, caplog, datas, port):
    p = copy.deepcopy(_TEMPLATE)  # an established pair (0.2 s to build, <1 ms to copy)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="cgwd"):
        for data in datas:
            with alloc_guard:
                p.a.receive_datagram(data, (B, port), port, p.now + 1)
            p.pump()
    down = [e for e in p.a_events if isinstance(e, (IpsecSaDown, PeerDead, Phase1Down))]
    assert not down, f"hostile input took the tunnel down: {down}"
    st_ = p.a.status()
    assert st_["state"] == "established" and st_["ipsec_sas"], st_
    half_open = [s for s in p.a.sas if not s.established]
    assert len(half_open) <= UNVERIFIED_LIMIT + HALF_OPEN_LIMIT
    assert p.a.counters.get("drop_internal_error", 0) == 0, p.a.last_error
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert PSK.decode() not in caplog.text


def test_unauthenticated_main_mode_1_does_not_move_an_established_tunnel():
    """A spoofed MM1 from the peer's address but another port must not redirect our IKE
    traffic (DPD would go unanswered and the tunnel be declared dead)."""
    p = copy.deepcopy(_TEMPLATE)
    port = p.a.remote_port
    attacker = IkePeer(IkePeerConfig(B, A, b"other"), random_bytes=_rand(99), name="X")
    attacker.start(0.0)
    mm1 = attacker.datagrams_to_send()[0].data
    p.a.receive_datagram(mm1, (B, 31337), 500, p.now + 1)
    assert p.a.remote_port == port
    assert p.a.status()["state"] == "established"


def test_initiation_flood_is_bounded_and_cannot_lock_out_the_peer():
    """A flood of spoofed MM1s from the peer's address through the endpoint: the engine keeps
    at most UNVERIFIED_LIMIT unverified exchanges (the oldest give way, none is refused), does
    no DH work for them, and the real peer's exchange started after the flood completes."""
    from cgwd.ike.endpoint import IkeEndpoint
    from cgwd.ike.events import Phase1Up

    ep = IkeEndpoint(A)
    clock = [100.0]
    ep.now = lambda: clock[0]
    peer = IkePeer(IkePeerConfig(A, B, PSK, initiator=False), random_bytes=_rand(5), name="R")
    ep.add_peer(peer)
    sent: list = []
    ep._send = sent.append
    attacker = IkePeer(IkePeerConfig(B, A, b"other"), random_bytes=_rand(6), name="X")
    attacker.start(0.0)
    mm1 = bytearray(attacker.datagrams_to_send()[0].data)
    for i in range(1, 1001):
        mm1[:8] = i.to_bytes(8, "big")
        ep._dispatch(bytes(mm1), (B, 500), False)
    assert len([s for s in peer.sas if not s.established]) == UNVERIFIED_LIMIT
    assert peer.counters["half_open_evicted"] == 1000 - UNVERIFIED_LIMIT
    assert "drop_half_open_limit" not in peer.counters and "drop_dh_rate_limit" not in peer.counters
    real = IkePeer(IkePeerConfig(B, A, PSK, initiator=True), random_bytes=_rand(8), name="B")
    real.start(clock[0])
    sent.clear()
    for _ in range(10):
        for d in real.datagrams_to_send():
            ep._dispatch(d.data, (B, 500), False)
        for d in sent:
            real.receive_datagram(d.data, (A, 500), 500, clock[0])
        sent.clear()
    assert any(isinstance(e, Phase1Up) for e in iter(real.next_event, None))
    assert peer.status()["state"] == "established"
