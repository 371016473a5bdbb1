"""The BGP session's one timer schedule, max-prefix restart delays, bounded peer values."""
import pytest
from hypothesis import given, settings, strategies as st

from cgwd.bgp import message as m
from cgwd.bgp.session import BgpPeerConfig, BgpSession, SessionDown
class State:
    ESTABLISHED = "Established"; IDLE = "Idle"
from test_bgp_session import Net, cfg_a, cfg_b, established_pair

GR_OPEN = m.encode_open(64512, 30, "10.0.0.1", [m.cap_mp(1), m.cap_as4(64512),
                                                 m.cap_graceful_restart(4095, [(1, 1, True)])])


def _drain(s):
    return list(iter(s.next_event, None))


# ---------------------------------------------------------------- the schedule property
OPS = st.one_of(
    st.tuples(st.just("advance"), st.floats(0.01, 400.0)),
    st.tuples(st.just("cut"), st.booleans()),
    st.tuples(st.just("close"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("connect"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("limit"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("reset"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("stop_start"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("garbage"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("refresh"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("restart"), st.sampled_from(["a", "b"])),
)


def _config(side, keepalive, hold, connect_retry, limit_restart, passive_b):
    make = cfg_a if side == "a" else cfg_b
    kw = dict(keepalive=keepalive, hold_time=hold, connect_retry=connect_retry,
              limit_restart=limit_restart)
    if side == "b":
        kw["passive"] = passive_b
    return make(**kw)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(OPS, max_size=40), keepalive=st.sampled_from([None, 0, 1, 4.5, 10]),
       hold=st.sampled_from([0, 3, 9, 30, 90]), connect_retry=st.sampled_from([0.5, 2, 5]),
       limit_restart=st.sampled_from([None, 1.0, 60.0]), passive_b=st.booleans())
def test_after_handle_timer_the_next_deadline_is_none_or_later(ops, keepalive, hold, connect_retry,
                                                              limit_restart, passive_b):
    """Whatever happens (losses, silent peers, collisions, resets, max-prefix teardowns,
    restarts, garbage), a session never asks to be woken for work it then does not do."""
    try:
        a = BgpSession(_config("a", keepalive, hold, connect_retry, limit_restart, passive_b))
        b = BgpSession(_config("b", keepalive, hold, connect_retry, limit_restart, passive_b))
    except ValueError:
        return          # refused at construction (e.g. keepalive 0): it can never spin
    net = Net(a, b)
    sides = {"a": a, "b": b}
    a.start(0)
    b.start(0)

    def run_timers(until):
        while True:
            due = [(s.get_timer(), s) for s in (a, b) if s.get_timer() is not None]
            due = [(t, s) for t, s in due if t <= until]
            if not due:
                break
            t, s = min(due, key=lambda x: x[0])
            net.now = max(net.now, t)
            s.handle_timer(net.now)
            nxt = s.get_timer()
            assert nxt is None or nxt > net.now, (s.state, nxt, net.now)
            for x in (a, b):
                if x.wants_connect():
                    net.connect(x)
            net.pump()
        net.now = max(net.now, until)

    for op, arg in ops:
        if op == "advance":
            run_timers(net.now + arg)
        elif op == "cut":
            for w in net.wires:
                w.cut = arg
        elif op == "close":
            for w in net.wires:
                if w.up:
                    w.up = False
                    w.a.connection_lost(net.now, outbound=w.da)
                    w.b.connection_lost(net.now, outbound=w.db)
                    break
        elif op == "connect":
            sides[arg].wants_connect()
            net.connect(sides[arg])
        elif op == "limit":
            sides[arg].reset(net.now, 6, 1, b"\x00\x01\x01\x00\x00\x00\x05", reason="max prefix")
        elif op == "reset":
            sides[arg].reset(net.now)
        elif op == "stop_start":
            sides[arg].stop(net.now, "test")
            sides[arg].start(net.now)
        elif op == "garbage":
            sides[arg].receive_data(b"\x00" * 19, net.now)
        elif op == "refresh":
            sides[arg].request_refresh()
        elif op == "restart":
            sides[arg].restart(net.now)
        net.pump()
        for s in (a, b):
            _drain(s)


def test_a_zero_keepalive_is_refused_not_a_busy_loop():
    """Before: keepalive=0 re-armed the KEEPALIVE at `now` for ever (100 % CPU)."""
    with pytest.raises(ValueError, match="keepalive"):
        cfg_a(keepalive=0)
    with pytest.raises(ValueError, match="connect_retry"):
        cfg_a(connect_retry=0)


# ---------------------------------------------------------------- max-prefix restart delay
def _limit_trip(net, a, b):
    a.reset(net.now, 6, 1, b"\x00\x01\x01\x00\x00\x03\xe8", reason="maximum prefix count 1000 exceeded")
    net.pump()


def _establish_again(net, a, b):
    """Run timers until a is Established again; returns how long it took."""
    t0 = net.now
    while a.state != State.ESTABLISHED:
        t = min(x for x in (a.get_timer(), b.get_timer(), net.now + 1) if x is not None)
        net.advance(t, step=t - net.now if t > net.now else 0.5)
        assert net.now - t0 < 2000
    return net.now - t0


def test_max_prefix_teardown_restarts_after_a_growing_delay_visible_in_status():
    """Before: Cease/1 restarted in connect_retry (2 s) and looped with AWS resending its table."""
    net, a, b = established_pair(a_kw={"connect_retry": 2}, b_kw={"connect_retry": 2})
    delays = []
    for _ in range(5):
        _limit_trip(net, a, b)
        st_ = a.status()
        assert st_["state"] == "Idle" and st_["limit_resets"] == len(delays) + 1
        delays.append(st_["restart_delay"])
        assert st_["restart_at"] == pytest.approx(net.now + st_["restart_delay"])
        # the peer reconnecting during the delay is refused (Idle refuses connections)
        b.wants_connect()
        w = net.connect(b)
        net.pump()
        assert not w.up and a.state == State.IDLE
        took = _establish_again(net, a, b)
        assert took >= delays[-1]
    assert delays == [60, 120, 240, 300, 300]
    assert a.status()["restart_at"] is None and a.status()["restart_delay"] is None


def test_max_prefix_delay_is_forgotten_after_the_session_stayed_up():
    net, a, b = established_pair()
    _limit_trip(net, a, b)
    _establish_again(net, a, b)
    _limit_trip(net, a, b)
    assert a.status()["restart_delay"] == 120
    _establish_again(net, a, b)
    net.advance(net.now + 301, step=5)            # keepalives flow, the session stays up
    assert a.state == State.ESTABLISHED
    _limit_trip(net, a, b)
    assert a.status()["restart_delay"] == 60


def test_max_prefix_teardown_received_from_the_peer_also_waits():
    """AWS resets us with Cease/1 when we announce too much: reconnecting in 2 s would loop."""
    net, a, b = established_pair()
    b.reset(net.now, 6, 1, b"", reason="too many")
    net.pump()
    assert a.state == State.IDLE and a.status()["restart_delay"] == 60
    assert "received: Cease / Maximum Number of Prefixes Reached" in a.status()["last_error"]


def test_max_prefix_without_automatic_restart_stays_down_until_restarted():
    net, a, b = established_pair(a_kw={"limit_restart": None})
    _limit_trip(net, a, b)
    assert a.get_timer() is None and a.status()["held_down"]
    net.advance(net.now + 1000, step=50)
    assert a.state == State.IDLE
    a.restart(net.now)
    assert not a.status()["held_down"]
    _establish_again(net, a, b)


def test_ordinary_errors_keep_the_short_idle_hold():
    net, a, b = established_pair(a_kw={"connect_retry": 2})
    a.reset(net.now)                               # Cease / Administrative Reset
    net.pump()
    assert a.status()["restart_delay"] == 2 and a.status()["limit_resets"] == 0


# ---------------------------------------------------------------- bounded peer values
def test_peer_graceful_restart_time_is_bounded():
    """Before: a peer's 4095 s restart time kept its stale routes for over an hour."""
    a = BgpSession(cfg_a())
    a.start(0)
    a.wants_connect()
    a.connection_made(0, outbound=True)
    a.receive_data(GR_OPEN + m.encode_keepalive(), 1)
    assert a.state == State.ESTABLISHED
    a.connection_lost(2, outbound=True)
    down = [e for e in _drain(a) if isinstance(e, SessionDown)][0]
    assert down.graceful_restart and down.restart_time == 360


def test_config_bounds():
    with pytest.raises(ValueError):
        BgpPeerConfig("169.254.10.2", "169.254.10.1", 65000, 64512, "10.0.0.2", max_peer_restart_time=5000)
    with pytest.raises(ValueError):
        BgpPeerConfig("169.254.10.2", "169.254.10.1", 65000, 64512, "10.0.0.2", limit_restart=500)
    assert not hasattr(BgpSession, "keepalive_due")


def test_set_exports_replaces_the_adj_rib_out():
    net, a, b = established_pair()
    a.set_exports(["192.168.50.0/24", "192.168.51.0/24"])
    net.pump()
    a.set_exports(["192.168.51.0/24", "192.168.52.0/24"])
    net.pump()
    assert sorted(r.prefix for r in a.advertised()) == ["192.168.51.0/24", "192.168.52.0/24"]
    from cgwd.bgp.session import RoutesReceived
    evs = net.ev(b, RoutesReceived)
    assert evs[-1].withdrawn == ["192.168.50.0/24"]
    assert [r.prefix for r in evs[-1].announced] == ["192.168.52.0/24"]


def test_the_restart_delay_is_in_the_tunnels_status_and_metrics():
    import asyncio
    from cgwd.config import parse_config
    from cgwd.metrics import render_metrics
    from cgwd.routing.table import RoutingTable
    from cgwd.tunnel.bgp_part import BgpPart
    from unit_config import BASE

    cfg = parse_config(BASE).tunnels[0]

    async def main():
        rt = RoutingTable(import_policy="any", max_prefix=1, max_prefix_action="reset", threaded=False)
        part = BgpPart(cfg, rt)
        s = part.session
        now = asyncio.get_running_loop().time()
        s.start(now)
        s.wants_connect()
        s.connection_made(now, outbound=True)
        s.receive_data(m.encode_open(64512, 30, "10.0.0.1", [m.cap_as4(64512)]) + m.encode_keepalive(), now)
        assert s.state == State.ESTABLISHED
        # the RIB's limit (1) is exceeded: the table resets the session through the route source
        rt.routes_received(cfg.name, [m.Route("10.1.0.0/16", "169.254.10.1", m.seq(64512)),
                                      m.Route("10.2.0.0/16", "169.254.10.1", m.seq(64512))], [])
        st = part.status()
        assert st["limit_resets"] == 1 and st["restart_delay"] == 60 and 59 <= st["restart_in"] <= 60
        text = render_metrics({"tunnels": [{"name": cfg.name, "vpn": cfg.vpn, "bgp": st}]})
        assert 'cgwd_bgp_max_prefix_resets_total{tunnel="%s"' % cfg.name in text
        assert "cgwd_bgp_restart_delay_seconds" in text
    asyncio.run(main())
