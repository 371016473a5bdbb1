"""BFD core (cgwd.bfd): codec round trips and fuzz, every transition of RFC 5880 6.8.6, the
timer schedule, and the interval negotiation (6.8.2-6.8.4, 6.8.7)."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgwd.bfd.codec import DROP_REASONS, BfdDrop, BfdState, ControlPacket, Diag, decode, encode
from cgwd.bfd.session import (SLOW_TX_US, TRANSITIONS, BfdDown, BfdParams, BfdSession, BfdUp, Deadline,
                              Ev)

A, D, I, U = BfdState.ADMIN_DOWN, BfdState.DOWN, BfdState.INIT, BfdState.UP
FAST = BfdParams(300_000, 300_000, 3)


# ------------------------------------------------------------------ codec
def test_encode_known_bytes():
    p = ControlPacket(state=U, my_disc=0x01020304, your_disc=0x0A0B0C0D, diag=3, detect_mult=5,
                      desired_min_tx=300_000, required_min_rx=200_000, required_min_echo_rx=0, poll=True)
    b = encode(p)
    assert b[:4] == bytes([0x23, 0xE0, 5, 24])
    assert struct.unpack("!IIIII", b[4:]) == (0x01020304, 0x0A0B0C0D, 300_000, 200_000, 0)
    assert decode(b) == p


@given(st.sampled_from(list(BfdState)), st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.integers(0, 31), st.integers(1, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.sampled_from([(False, False), (True, False), (False, True)]),
       st.booleans(), st.booleans())
def test_round_trip(state, my, your, diag, mult, tx, rx, echo, pf, cpi, demand):
    if state not in (D, A) and your == 0:
        your = 1
    p = ControlPacket(state=state, my_disc=my, your_disc=your, diag=diag, detect_mult=mult, desired_min_tx=tx,
                      required_min_rx=rx, required_min_echo_rx=echo, poll=pf[0], final=pf[1], cpi=cpi,
                      demand=demand)
    assert decode(encode(p)) == p


def _good(**kw) -> ControlPacket:
    base = {"state": D, "my_disc": 7, "your_disc": 0}
    base.update(kw)
    return ControlPacket(**base)


# Length 25 is more than the datagram; with the A bit the Length must be at least 26
@pytest.mark.parametrize("data,reason", [
    (b"\x20\x40\x03", "truncated"),
    (encode(_good(version=2)), "version"),
    (encode(_good(version=0)), "version"),
    (encode(_good(length=23)), "length"),
    (encode(_good(length=25)), "length"),
    (encode(_good(detect_mult=0)), "detect_mult_zero"),
    (encode(_good(multipoint=True)), "multipoint"),
    (encode(_good(my_disc=0)), "my_discriminator_zero"),
    (encode(_good(state=U)), "your_discriminator_zero"),
    (encode(_good(state=I)), "your_discriminator_zero"),
    (encode(_good(auth=True, length=24)), "length"),
    (encode(_good(auth=True, length=26)) + b"\x01\x02", "auth_not_configured"),
    (encode(_good(poll=True, final=True)), "poll_and_final"),
])
def test_every_receive_check_is_a_named_drop(data, reason):
    with pytest.raises(BfdDrop) as e:
        decode(data)
    assert e.value.reason == reason


def test_accepted_edge_cases():
    assert decode(encode(_good(state=A))).state is A                  # your disc 0 in AdminDown
    assert decode(encode(_good(length=24)) + b"trailing").length == 24  # Length < datagram: fine
    assert decode(encode(_good(state=U, your_disc=9))).your_disc == 9


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64))
def test_decoder_raises_only_the_drop_error(data):
    try:
        p = decode(data)
    except BfdDrop as e:
        assert e.reason in DROP_REASONS
    else:
        assert p.version == 1 and p.detect_mult and p.my_disc and not p.multipoint and not p.auth


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.binary(min_size=20, max_size=40), max_size=20), st.floats(0, 5))
def test_session_never_raises_on_garbage(datagrams, step):
    s = BfdSession(FAST, local_disc=1, rand=lambda: 0.5, now=0.0)
    now = 0.0
    for d in datagrams:
        now += step
        s.receive(d, now)
        s.timer(now)
    assert sum(s.drops.values()) + s.packets_in == len(datagrams)


# ------------------------------------------------------------------ the transition table
def test_the_table_lists_every_state_and_event():
    assert set(TRANSITIONS) == {(s, e) for s in BfdState for e in Ev}


def _pkt(state: BfdState, your: int = 1, **kw) -> bytes:
    return encode(ControlPacket(state=state, my_disc=99, your_disc=your, **kw))


def _session_in(state: BfdState, now: float = 10.0) -> BfdSession:
    """A session driven into ``state`` by real inputs (not by assignment)."""
    s = BfdSession(FAST, local_disc=1, rand=lambda: 0.5, now=0.0)
    if state is A:
        s.admin_down(now)
    elif state is I:
        s.receive(_pkt(D, your=0), now)
    elif state is U:
        s.receive(_pkt(D, your=0), now)
        s.receive(_pkt(U), now)
    assert s.state is state
    return s


# (state before, input, state after, diag after or None (unchanged), event expected)
CASES = [
    (D, "recv AdminDown", D, None, None),
    (D, "recv Down", I, None, None),
    (D, "recv Init", U, Diag.NONE, BfdUp),
    (D, "recv Up", D, None, None),
    (D, "timeout", D, None, None),
    (D, "admin down", A, Diag.ADMIN_DOWN, None),
    (D, "admin up", D, None, None),
    (I, "recv AdminDown", D, Diag.NEIGHBOR_DOWN, BfdDown),
    (I, "recv Down", I, None, None),
    (I, "recv Init", U, Diag.NONE, BfdUp),
    (I, "recv Up", U, Diag.NONE, BfdUp),
    (I, "timeout", D, Diag.DETECT_EXPIRED, BfdDown),
    (I, "admin down", A, Diag.ADMIN_DOWN, BfdDown),
    (I, "admin up", I, None, None),
    (U, "recv AdminDown", D, Diag.NEIGHBOR_DOWN, BfdDown),
    (U, "recv Down", D, Diag.NEIGHBOR_DOWN, BfdDown),
    (U, "recv Init", U, None, None),
    (U, "recv Up", U, None, None),
    (U, "timeout", D, Diag.DETECT_EXPIRED, BfdDown),
    (U, "admin down", A, Diag.ADMIN_DOWN, BfdDown),
    (U, "admin up", U, None, None),
    (A, "recv AdminDown", A, None, None),
    (A, "recv Down", A, None, None),
    (A, "recv Init", A, None, None),
    (A, "recv Up", A, None, None),
    (A, "timeout", A, None, None),
    (A, "admin down", A, None, None),
    (A, "admin up", D, Diag.NONE, None),
]


def test_cases_cover_the_table():
    assert len(CASES) == len(TRANSITIONS)
    assert {(c[0], c[1]) for c in CASES} == {(s, e.value.replace("received", "recv").replace(
        "detection time expired", "timeout")) for s, e in TRANSITIONS}


@pytest.mark.parametrize("before,what,after,diag,event", CASES, ids=[f"{c[0].label}-{c[1]}" for c in CASES])
def test_transition(before, what, after, diag, event):
    s = _session_in(before)
    while s.next_event():
        pass
    diag0 = s.local_diag
    now = 11.0
    if what.startswith("recv "):
        st_ = {"AdminDown": A, "Down": D, "Init": I, "Up": U}[what[5:]]
        s.receive(_pkt(st_, your=0 if st_ in (A, D) else 1), now)
    elif what == "timeout":
        now = 100.0
        s.timer(now)
    elif what == "admin down":
        s.admin_down(now)
    else:
        s.admin_up(now)
    assert s.state is after
    assert s.local_diag is (diag if diag is not None else diag0)
    ev = s.next_event()
    assert (type(ev) if ev else None) is event
    if after is A or before is A:
        assert s.drops.get("admin_down", 0) == (1 if before is A and what.startswith("recv") else 0)


def test_down_event_kinds():
    s = _session_in(U)
    s.next_event()
    s.receive(_pkt(A, your=0), 11.0)
    ev = s.next_event()
    assert isinstance(ev, BfdDown) and ev.was_up and ev.remote_admin_down and not ev.path_failure
    s = _session_in(U)
    s.next_event()
    s.timer(100.0)
    ev = s.next_event()
    assert ev.diag is Diag.DETECT_EXPIRED and ev.path_failure and s.remote_disc == 0 and s.downs == 1
    s = _session_in(I)
    s.timer(100.0)
    ev = s.next_event()
    assert isinstance(ev, BfdDown) and not ev.was_up and not ev.path_failure


def test_wrong_your_discriminator_is_dropped():
    s = _session_in(U)
    s.receive(_pkt(U, your=2), 11.0)
    assert s.drops["your_discriminator_unknown"] == 1 and s.state is U


# ------------------------------------------------------------------ timers
def _run(s: BfdSession, until: float):
    """Run the schedule until ``until``; returns the (time, packet) pairs sent."""
    sent = []
    while True:
        t = s.next_deadline()
        if t is None or t > until:
            return sent
        s.timer(t)
        assert s.next_deadline() is None or s.next_deadline() > t
        sent += [(t, decode(d)) for d in s.datagrams_to_send()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 2.0), st.sampled_from(["timer", "down", "init", "up", "poll"]),
                          st.floats(0, 0.999)), max_size=40),
       st.integers(50, 2000), st.integers(1, 10))
def test_timer_property_no_past_deadlines(steps, interval_ms, mult):
    r = [0.3]
    s = BfdSession(BfdParams.from_ms(interval_ms, mult), local_disc=5, rand=lambda: r[0], now=0.0)
    now = 0.0
    for dt, what, rnd in steps:
        now += dt
        r[0] = rnd
        if what == "timer":
            t = s.next_deadline()
            if t is not None:
                now = max(now, t)
            s.timer(now)
        else:
            st_ = {"down": D, "init": I, "up": U, "poll": U}[what]
            s.receive(_pkt(st_, your=5 if st_ is not D else 0, poll=what == "poll", detect_mult=mult,
                           desired_min_tx=interval_ms * 1000, required_min_rx=interval_ms * 1000), now)
            s.timer(now)
        nd = s.next_deadline()
        assert nd is None or nd > now
        assert all(t > now for t in s._deadlines.values())


def test_slow_tx_while_down_and_jitter_range():
    s = BfdSession(FAST, local_disc=1, rand=lambda: 0.0, now=0.0)
    sent = _run(s, 10.0)
    times = [t for t, _ in sent]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(p.desired_min_tx == SLOW_TX_US and p.state is D and p.your_disc == 0 for _, p in sent)
    assert gaps and all(abs(g - 0.75) < 1e-9 for g in gaps)     # 1 s (peer's RX 1 us) less 25 %
    times = [t for t, _ in _run(BfdSession(FAST, local_disc=1, rand=lambda: 0.999999, now=0.0), 10.0)]
    assert all(0.999 < b - a <= 1.0 for a, b in zip(times, times[1:]))
    one = BfdSession(BfdParams(300_000, 300_000, 1), local_disc=1, rand=lambda: 0.999999, now=0.0)
    times = [t for t, _ in _run(one, 10.0)]
    assert all(0.89 < b - a <= 0.9 for a, b in zip(times, times[1:]))   # detect mult 1: at most 90 %


def _pair(pa: BfdParams = FAST, pb: BfdParams = FAST):
    a = BfdSession(pa, local_disc=0xA, rand=lambda: 0.5, now=0.0)
    b = BfdSession(pb, local_disc=0xB, rand=lambda: 0.5, now=0.0)
    return a, b


def _exchange(a: BfdSession, b: BfdSession, until: float, now: float = 0.0, *, drop_a=False, drop_b=False):
    """Run both schedules with instant delivery until ``until``; returns the last time."""
    while True:
        ts = [t for t in (a.next_deadline(), b.next_deadline()) if t is not None]
        if not ts or min(ts) > until:
            return now
        now = min(ts)
        for x, y, drop in ((a, b, drop_a), (b, a, drop_b)):
            if x.next_deadline() is not None and x.next_deadline() <= now:
                x.timer(now)
            for _ in range(10):
                out = x.datagrams_to_send()
                if not out:
                    break
                for d in out:
                    if not drop:
                        y.receive(d, now)
                for d in y.datagrams_to_send():
                    if not (drop_b if y is b else drop_a):
                        x.receive(d, now)


def test_negotiation_two_sessions_come_up_fast_then_poll():
    a, b = _pair(BfdParams(300_000, 300_000, 3), BfdParams(100_000, 500_000, 5))
    _exchange(a, b, 3.0)
    assert a.state is U and b.state is U
    assert not a.polling and not b.polling          # both polls answered with F
    # a sends at max(its 300 ms, b's RX 500 ms); b at max(100 ms, a's RX 300 ms)
    assert a.tx_interval == 500_000 and b.tx_interval == 300_000
    # a's detection: b's mult 5 x max(a's RX 300 ms, b's TX 100 ms); b's: 3 x max(500, 300)
    assert a.detection_time == 5 * 300_000 and b.detection_time == 3 * 500_000
    assert a.status()["tx_interval_ms"] == 500 and a.status()["detection_time_ms"] == 1500
    assert a.status()["remote_discriminator"] == 0xB and b.status()["remote_discriminator"] == 0xA


def test_detection_after_peer_silence():
    a, b = _pair()
    now = _exchange(a, b, 3.0)
    assert a.state is U
    for _ in list(iter(a.next_event, None)):
        pass
    last_rx = now
    now = _exchange(a, b, now + 5.0, now, drop_b=True)    # b's packets lost
    ev = [e for e in iter(a.next_event, None) if isinstance(e, BfdDown)]
    assert len(ev) == 1 and ev[0].diag is Diag.DETECT_EXPIRED
    assert 0.9 - 0.3 <= ev[0].at - last_rx <= 0.9 + 1e-9     # 3 x 300 ms after b's last packet
    # b hears a's Down (diag 1) and goes Down with "neighbor signalled session down"
    assert b.state in (D, I)


def test_poll_on_reload_keeps_old_tx_until_final():
    a, b = _pair()
    now = _exchange(a, b, 3.0)
    assert a.state is U and a.tx_interval == 300_000
    a.set_params(BfdParams(1_000_000, 1_000_000, 3), now)
    assert a.polling and a.adv_tx == 1_000_000
    assert a.use_tx == 300_000 and a.use_rx == 1_000_000      # not slower, detection not shorter
    sent = [decode(d) for d in a.datagrams_to_send()]
    assert sent and sent[-1].poll and sent[-1].desired_min_tx == 1_000_000
    for d in sent:
        b.receive(encode(d), now)
    reply = [decode(d) for d in b.datagrams_to_send()]
    assert any(p.final and not p.poll for p in reply)
    for p in reply:
        a.receive(encode(p), now)
    assert not a.polling and a.use_tx == 1_000_000 and a.tx_interval == 1_000_000
    # b now detects a with a's 1 s TX: 3 x max(300 ms, 1 s)
    assert b.detection_time == 3_000_000


def test_no_periodic_tx_when_peer_rx_zero():
    s = _session_in(U)
    s.receive(_pkt(U, required_min_rx=0), 11.0)
    assert Deadline.TX not in s._deadlines and s.tx_interval is None
    s.receive(_pkt(U, required_min_rx=300_000), 11.1)
    assert Deadline.TX in s._deadlines


def test_poll_is_answered_at_once_with_final_and_no_poll():
    s = _session_in(U)
    s.datagrams_to_send()
    s.receive(_pkt(U, poll=True), 11.0)
    (p,) = [decode(d) for d in s.datagrams_to_send()]
    assert p.final and not p.poll and p.state is U and p.your_disc == 99


def test_set_params_same_is_a_noop():
    s = _session_in(U)
    assert s.set_params(dataclasses.replace(FAST), 11.0) is False
