"""Hypothesis fuzzing: the decoder raises nothing but IkeDecodeError, the engine nothing at all."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cgwd.ike.v1 import constants as C
from cgwd.ike.v1.codec import Header, IkeDecodeError, decode_message, decode_payloads
from cgwd.ike.v1 import IkePeer, IkePeerConfig


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_decode_message_only_raises_decode_error(data):
    try:
        decode_message(data)
    except IkeDecodeError:
        pass


PTYPES = [0, 1, 2, 3, 4, 5, 8, 10, 11, 12, 13, 20, 21, 130, 131, 99]


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(PTYPES), st.binary(max_size=400), st.booleans())
def test_decode_payloads_only_raises_decode_error(first, data, padding):
    try:
        decode_payloads(first, data, allow_padding=padding)
    except IkeDecodeError:
        pass


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PTYPES), st.sampled_from([2, 5, 32, 4, 1]), st.integers(0, 7), st.binary(max_size=300),
       st.booleans())
def test_engine_never_raises(first, exch, flags, body, known_cookie):
    peer = IkePeer(IkePeerConfig("192.0.2.1", "192.0.2.2", b"k"), name="fuzz")
    peer.start(0.0)
    sent = peer.datagrams_to_send()
    ic = sent[0].data[:8] if known_cookie else b"\x01" * 8
    rc = b"\x02" * 8 if known_cookie else b"\0" * 8
    msg = Header(ic, rc, first, exch, flags, 0).encode(len(body)) + body
    peer.receive_datagram(msg, ("192.0.2.2", 500), 500, 1.0)
    peer.handle_timer(3.0)
    assert sum(v for k, v in peer.counters.items() if k.startswith("drop_")) <= 1
