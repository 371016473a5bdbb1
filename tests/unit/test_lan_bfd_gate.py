"""BFD's gate on a LAN BGP session: BgpSession.hold_down (Cease / BFD Down, RFC 9384, then Idle
refusing connections until restart) and cgwd.lan.bfd.LanBfd's reaction to BFD events."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

import pytest

from cgwd.bfd.codec import BfdState, Diag
from cgwd.bfd.session import BfdDown, BfdUp
from cgwd.bgp.session import SessionDown
from cgwd.lan.bfd import LanBfd
from cgwd.lan.config import LanNeighborConfig
from cgwd.lan.format import format_bfd
from cgwd.metrics import _lan_bfd_metrics, _Out
from test_bgp_session import established_pair


def test_hold_down_sends_cease_10_and_refuses_until_restart():
    net, a, b = established_pair()
    assert a.state == "Established"
    a.hold_down(net.now, 6, 10, "BFD Down (control detection time expired)")
    net.pump()
    down_b = net.ev(b, SessionDown)[0]
    down_a = net.ev(a, SessionDown)[0]
    assert down_b.notification[:2] == (6, 10) and down_a.notification[:2] == (6, 10)
    assert "BFD Down" in b.status()["last_error"]
    assert a.state == "Idle" and a.get_timer() is None
    net.advance(60)                       # no automatic restart while held
    assert a.state == "Idle" and not a.wants_connect()
    a.connection_made(net.now, outbound=False)      # the router's connection is refused
    assert a.connections_to_close() == [False] and a.state == "Idle"
    a.restart(net.now)                    # BFD Up again
    assert a.wants_connect()
    net.connect(a)
    net.pump()
    assert a.state == "Established"


class _Session:
    def __init__(self):
        self.calls = []

    def hold_down(self, now, code, subcode, reason):
        self.calls.append(("hold_down", code, subcode, reason))

    def restart(self, now):
        self.calls.append(("restart",))


@dataclasses.dataclass
class _Client:
    cfg: LanNeighborConfig
    session: _Session
    speaker: object = None


def _cfg(**kw) -> LanNeighborConfig:
    d = dict(name="core1", address=ipaddress.ip_address("10.200.0.10"),
             local_address=ipaddress.ip_address("10.200.0.1"), remote_asn=65010, local_asn=65000, bfd=True)
    d.update(kw)
    return LanNeighborConfig(**d)


def test_gate_tears_down_on_path_failure_only_and_releases_on_up():
    async def main():
        c = _Client(_cfg(), _Session())
        g = LanBfd(c)
        g._on_event(BfdUp(1.0))                        # Up before any Down: nothing to release
        assert c.session.calls == []
        g._on_event(BfdDown(2.0, Diag.NEIGHBOR_DOWN, True, True))   # router's AdminDown: left alone
        assert c.session.calls == [] and not g.gated
        g._on_event(BfdDown(2.5, Diag.DETECT_EXPIRED, False, False))   # from Init: not a failure
        assert c.session.calls == []
        g._on_event(BfdDown(3.0, Diag.DETECT_EXPIRED, True, False))
        assert c.session.calls == [("hold_down", 6, 10, "BFD Down (control detection time expired)")]
        assert g.gated and g.bgp_teardowns == 1
        g._on_event(BfdUp(4.0))
        assert c.session.calls[-1] == ("restart",) and not g.gated
        g._on_event(BfdDown(5.0, Diag.NEIGHBOR_DOWN, True, False))   # router's Down
        assert g.gated and g.bgp_teardowns == 2
        c.cfg = _cfg(bfd=False)
        g.reconfigure(c.cfg)                           # bfd off at reload lifts the gate
        assert c.session.calls[-1] == ("restart",) and not g.gated
        assert g.status() == {"enabled": False}

    asyncio.run(main())


def test_status_text_and_metrics():
    b = {"enabled": True, "interval_ms": 300, "multiplier": 3, "state": "up", "remote_state": "up",
         "local_discriminator": 7, "remote_discriminator": 9, "tx_interval_ms": 300.0,
         "detection_time_ms": 900.0, "ups": 2, "downs": 1, "last_down_diag": "control detection time expired",
         "drops": {"ttl": 4}, "bgp_gated": False, "gate_expiries": 2}
    text = "\n".join(format_bfd(b))
    assert "BFD Up (remote up): discriminators 7/9, tx 300 ms, detection 900 ms" in text
    assert "ups 2, downs 1" in text and "last down: control detection time expired" in text and "ttl=4" in text
    assert "BGP let up without BFD 2x" in text
    assert format_bfd({"enabled": False}) == []
    o = _Out()
    _lan_bfd_metrics(o, {"neighbor": "core1"}, b)
    out = o.text()
    assert 'cgwd_lan_bfd_state{neighbor="core1",state="up"} 1' in out
    assert 'cgwd_lan_bfd_drops_total{neighbor="core1",reason="ttl"} 4' in out
    assert 'cgwd_lan_bfd_gate_expiries_total{neighbor="core1"} 2' in out
    assert 'cgwd_lan_bfd_detection_time_seconds{neighbor="core1"} 0.9' in out
    assert BfdState.UP.label == "Up"


class _Timers:
    """call_later for LanBfd: what was scheduled, fired by the test."""

    def __init__(self):
        self.pending = []

    def __call__(self, delay, callback):
        h = _Handle(self, delay, callback)
        self.pending.append(h)
        return h

    def fire(self):
        (h,) = self.pending
        self.pending.remove(h)
        h.callback()


@dataclasses.dataclass(eq=False)
class _Handle:
    timers: _Timers
    delay: float
    callback: object

    def cancel(self):
        if self in self.timers.pending:
            self.timers.pending.remove(self)


@pytest.mark.parametrize("hold, limit", [(30, 30.0), (9, 9.0), (0, 90.0)])
def test_gate_is_lifted_after_the_hold_time_when_bfd_never_returns(hold, limit):
    """FRR 8.4: `no neighbor X bfd` deletes bfdd's session without an AdminDown, so cgwd sees a
    detection-time expiry from Up (a path failure). Before: BGP held Idle for good, since BFD is
    never Up again. Now: after the hold time BGP is let up without BFD; a later Up, then Down,
    gates it again."""
    async def main():
        timers = _Timers()
        c = _Client(_cfg(hold_time=hold), _Session())
        g = LanBfd(c, call_later=timers)
        g._on_event(BfdUp(1.0))
        g._on_event(BfdDown(2.0, Diag.DETECT_EXPIRED, True, False))
        assert g.gated and [h.delay for h in timers.pending] == [limit]
        assert c.session.calls == [("hold_down", 6, 10, "BFD Down (control detection time expired)")]
        timers.fire()                                   # BFD still down after the limit
        assert not g.gated and c.session.calls[-1] == ("restart",) and g.gate_expiries == 1
        assert timers.pending == []
        g._on_event(BfdDown(3.0, Diag.DETECT_EXPIRED, False, False))   # Init -> Down: no gate
        assert not g.gated and len(c.session.calls) == 2
        g._on_event(BfdUp(4.0))                         # BFD back: nothing held, nothing to do
        assert len(c.session.calls) == 2
        g._on_event(BfdDown(5.0, Diag.NEIGHBOR_DOWN, True, False))
        assert g.gated and g.bgp_teardowns == 2 and len(timers.pending) == 1
        g._on_event(BfdUp(6.0))                         # Up within the limit: released, timer gone
        assert not g.gated and c.session.calls[-1] == ("restart",) and timers.pending == []
        assert g.gate_expiries == 1 and g.status()["gate_expiries"] == 1

    asyncio.run(main())


def test_gate_timer_goes_with_bfd_off_and_stop():
    async def main():
        timers = _Timers()
        c = _Client(_cfg(), _Session())
        g = LanBfd(c, call_later=timers)
        g._on_event(BfdUp(1.0))
        g._on_event(BfdDown(2.0, Diag.DETECT_EXPIRED, True, False))
        assert len(timers.pending) == 1
        c.cfg = _cfg(bfd=False)
        g.reconfigure(c.cfg)
        assert timers.pending == [] and not g.gated and c.session.calls[-1] == ("restart",)
        assert g.gate_expiries == 0

    asyncio.run(main())
