"""Fuzz the BGP decoder and the BGP session core with mutated real messages.

Seeds: BGP messages captured between cgwd and BIRD in the lab (corpus/bgp: OPEN, UPDATE with
the VPC prefix, KEEPALIVE, NOTIFICATION) plus what an in-memory established pair exchanged.

What must hold: the decoders raise only BgpError; an established session fed hostile bytes
raises nothing, logs no traceback and no "internal error", either stays Established or goes
down the RFC way (a NOTIFICATION to the peer), never buffers more than one maximum-size
message, and allocates a bounded amount per input.
"""

from __future__ import annotations

import logging

from fuzzlib import FUZZ, corpus, inputs
from hypothesis import given
from hypothesis import strategies as st

from cgwd.bgp import message as m
from cgwd.bgp.message import BgpError
from cgwd.bgp.session import BgpPeerConfig, BgpSession

SEEDS = corpus("bgp")


def _pair():
    a = BgpSession(BgpPeerConfig(local_address="169.254.10.2", remote_address="169.254.10.1",
                                 local_asn=65000, remote_asn=64512, router_id="203.0.113.2"))
    b = BgpSession(BgpPeerConfig(local_address="169.254.10.1", remote_address="169.254.10.2",
                                 local_asn=64512, remote_asn=65000, router_id="198.51.100.2", passive=True))
    a.announce([m.Route("10.200.0.0/24")])
    b.announce([m.Route("10.100.0.0/16")])
    a.start(0.0)
    b.start(0.0)
    a.connection_made(0.0, outbound=True)
    b.connection_made(0.0, outbound=False)
    sent = []
    for _ in range(10):
        x, y = a.data_to_send(True), b.data_to_send(False)
        if y:
            sent.append(y)
            a.receive_data(y, 0.0, outbound=True)
        if x:
            b.receive_data(x, 0.0, outbound=False)
        if not x and not y:
            break
    assert a.state == "Established", a.state
    while a.next_event() is not None:
        pass
    return a, b, sent


def _split(stream: bytes) -> list[bytes]:
    msgs, off = [], 0
    while off + 19 <= len(stream):
        n = max(int.from_bytes(stream[off + 16:off + 18], "big"), 19)
        msgs.append(stream[off:off + n])
        off += n
    return msgs


_, _, RECORDED = _pair()
ALL_SEEDS = SEEDS + [msg for blob in RECORDED for msg in _split(blob)]


@FUZZ
@given(inputs(ALL_SEEDS))
def test_bgp_decoders_raise_only_bgp_error(alloc_guard, data):
    with alloc_guard:
        try:
            hdr = m.check_header(data)
            if hdr is not None and len(data) >= hdr[0]:
                length, mtype = hdr
                m.decode_message(mtype, data[m.HEADER_LEN:length], as4=True)
                if mtype == m.UPDATE:
                    m.decode_update(data[m.HEADER_LEN:length], as4=False)
        except BgpError:
            pass


@FUZZ
@given(st.lists(inputs(ALL_SEEDS), min_size=1, max_size=4), st.integers(1, 64))
def test_established_session_survives_hostile_bytes(alloc_guard, caplog, datas, chunk):
    a, b, _ = _pair()
    stream = b"".join(datas)
    out = b""
    with caplog.at_level(logging.DEBUG, logger="cgwd"):
        for i in range(0, len(stream), chunk * 16):
            with alloc_guard:
                a.receive_data(stream[i:i + chunk * 16], 1.0, outbound=True)
            out += a.data_to_send(True)
            conn = a._conns.get(True)
            assert conn is None or len(conn.buf) <= m.MAX_MESSAGE_LEN
    assert "internal error" not in (a.last_error or "")
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    if a.state != "Established":
        # went down the RFC 4271 way: a NOTIFICATION told the peer why, or the peer sent one
        assert m.NOTIFICATION in _types(out) or (a.last_error or "").startswith("received:"), \
            (a.last_error, out[:64])


def _types(stream: bytes) -> list[int]:
    return [msg[18] for msg in _split(stream)]
