"""Static routing: the sans-IO per-tunnel core, its route source, the ICMP health check."""
import asyncio
import os

import pytest
from hypothesis import given, settings, strategies as st

from cgwd.routing.icmp import (IcmpEcho, checksum, echo6_request, echo_request, icmp6_checksum,
                               parse_echo6_reply, parse_echo_reply)
from cgwd.routing.rib import NextHop, Rib
from cgwd.routing.static import (Carry, HealthLost, HealthRestored, RoutesChanged, StaticConfig,
                                 StaticRoute, StaticRouteSource, StaticRoutes)
from cgwd.routing.table import RoutingTable

VPC = "10.100.0.0/16"
VPC2 = "10.101.0.0/16"
NH1 = NextHop("t1", "tun1", "169.254.10.1")
NH2 = NextHop("t2", "tun2", "169.254.11.1")


def events(core):
    return list(iter(core.next_event, None))


def offered(core):
    return [(r.prefix, r.pref) for r in core.offered()]


class Pair:
    """Two tunnels' cores feeding one RIB, as the route sources do."""

    def __init__(self, ecmp=False, hold_down=60.0, health=None):
        self.rib = Rib(ecmp=ecmp)
        self.cores = {
            "t1": StaticRoutes(StaticConfig((VPC, VPC2), primary=True, ecmp=ecmp, hold_down=hold_down,
                                            health_interval=health)),
            "t2": StaticRoutes(StaticConfig((VPC, VPC2), primary=False, ecmp=ecmp, hold_down=hold_down,
                                            health_interval=health)),
        }
        self.rib.add_tunnel("t1", 0)
        self.rib.add_tunnel("t2", 1)
        self.now = 0.0
        self.moves = 0
        self._last = {}

    def sync(self):
        for name, core in self.cores.items():
            for ev in events(core):
                if isinstance(ev, RoutesChanged):
                    self.rib.offer(name, ev.routes)
        if self.rib.selected != self._last:
            self.moves += 1
            self._last = dict(self.rib.selected)

    def up(self, name):
        gw = {"t1": "169.254.10.1", "t2": "169.254.11.1"}[name]
        self.rib.tunnel_up(name, "tun" + name[1], gw)
        self.cores[name].tunnel_up(self.now)
        self.sync()

    def down(self, name):
        self.rib.tunnel_down(name)
        self.cores[name].tunnel_down(self.now, "DPD: peer dead")
        self.sync()

    def advance(self, until):
        while True:
            due = [c.get_timer() for c in self.cores.values() if c.get_timer() is not None]
            due = [t for t in due if t <= until]
            if not due:
                break
            self.now = max(self.now, min(due))
            for c in self.cores.values():
                t = c.get_timer()
                if t is not None and t <= self.now:
                    c.handle_timer(self.now)
            self.sync()
        self.now = until

    def carrier(self, prefix=VPC):
        return self.rib.selected.get(prefix)


# ---------------------------------------------------------------- carrying, failover, hold-down
def test_tunnel_1_carries_when_both_are_up_and_the_routes_move_at_once_on_its_death():
    p = Pair()
    p.up("t2")
    assert p.carrier() == (NH2,)
    p.up("t1")                                   # first bring-up: no hold-down
    assert p.carrier() == (NH1,) and p.carrier(VPC2) == (NH1,)
    p.down("t1")
    assert p.carrier() == (NH2,) and p.carrier(VPC2) == (NH2,)


def test_returning_tunnel_takes_the_routes_back_only_after_the_hold_down():
    p = Pair(hold_down=60)
    p.up("t1")
    p.up("t2")
    p.down("t1")
    p.advance(100)
    p.up("t1")
    assert p.cores["t1"].state == Carry.HOLD_DOWN and p.carrier() == (NH2,)
    assert p.cores["t1"].status()["hold_down_until"] == 160
    p.advance(159.9)
    assert p.carrier() == (NH2,)
    p.advance(160)
    assert p.carrier() == (NH1,) and p.cores["t1"].state == Carry.UP


def test_a_returning_tunnel_that_is_the_only_one_alive_carries_at_once():
    p = Pair(hold_down=60)
    p.up("t1")
    p.down("t1")
    p.up("t1")
    assert p.cores["t1"].state == Carry.HOLD_DOWN and p.carrier() == (NH1,)


def test_twenty_short_outages_move_the_routes_once():
    """A flapping primary does not flap the routes: they leave at its first death and stay
    on the backup while it comes and goes faster than the hold-down."""
    p = Pair(hold_down=30)
    p.up("t1")
    p.up("t2")
    p.moves = 0
    for i in range(20):
        p.down("t1")
        assert p.carrier() == (NH2,)
        p.advance(p.now + 5)
        p.up("t1")
        assert p.carrier() == (NH2,)
        p.advance(p.now + 10)
    assert p.moves == 1
    p.advance(p.now + 30)
    assert p.carrier() == (NH1,) and p.moves == 2


def test_ecmp_both_tunnels_carry_and_a_returning_one_joins_after_the_hold_down():
    p = Pair(ecmp=True, hold_down=20)
    p.up("t1")
    p.up("t2")
    assert p.carrier() == (NH1, NH2)
    p.down("t2")
    assert p.carrier() == (NH1,)
    p.up("t2")
    assert p.carrier() == (NH1,)
    p.advance(p.now + 20)
    assert p.carrier() == (NH1, NH2)


# ---------------------------------------------------------------- health check
def test_health_check_silence_counts_like_dpd_and_a_reply_returns_through_the_hold_down():
    c = StaticRoutes(StaticConfig((VPC,), health_interval=2, health_misses=3, hold_down=10))
    c.tunnel_up(0)
    assert c.probes_to_send() == [1] and offered(c) == [(VPC, (0,))]
    c.echo_reply(1, 0.05)
    for _ in range(3):                           # probes at 2, 4, 6, answered
        now = c.get_timer()
        c.handle_timer(now)
        (seq,) = c.probes_to_send()
        c.echo_reply(seq, now + 0.05)
    assert c.state == Carry.UP and c.status()["health_check"]["rtt"] == pytest.approx(0.05)
    events(c)
    # silence from now on: dead three intervals after the last reply (6.05 + 6)
    while c.state == Carry.UP:
        now = c.get_timer()
        c.handle_timer(now)
        c.probes_to_send()
    assert now == pytest.approx(12.05) and c.state == Carry.SILENT and offered(c) == []
    evs = events(c)
    assert any(isinstance(e, HealthLost) for e in evs) and RoutesChanged([]) in evs
    # probes go on while silent; a reply brings the tunnel back, as a backup first
    now = c.get_timer()
    c.handle_timer(now)
    seq = c.probes_to_send()[-1]
    c.echo_reply(seq, now + 0.05)
    assert c.state == Carry.HOLD_DOWN and offered(c) == [(VPC, (2,))]
    assert any(isinstance(e, HealthRestored) for e in events(c))
    while c.state == Carry.HOLD_DOWN:
        now = c.get_timer()
        c.handle_timer(now)
        for seq in c.probes_to_send():
            c.echo_reply(seq, now + 0.01)
    assert c.state == Carry.UP and offered(c) == [(VPC, (0,))]


def _silence(c):
    """Run the core's timers (probes unanswered) until the check goes silent."""
    while c.state != Carry.SILENT:
        c.handle_timer(c.get_timer())
        c.probes_to_send()
    return [e for e in events(c) if isinstance(e, HealthLost)]


def test_the_first_silence_since_a_reply_asks_for_the_ike_action_a_repeated_one_does_not():
    c = StaticRoutes(StaticConfig((VPC,), health_interval=1, health_misses=3, hold_down=5))
    c.tunnel_up(0)
    (lost,) = _silence(c)
    assert lost.first and c.status()["health_check"]["silences_since_reply"] == 1
    # the tunnel renegotiated IKE (dpd_action restart): down, then up again with a new SA
    c.tunnel_down(c.get_timer() or 4, "health check; IKE renegotiated")
    c.tunnel_up(10)
    assert c.state == Carry.HOLD_DOWN
    (again,) = _silence(c)                   # still no reply: renegotiating again would not help
    assert not again.first and c.counters["silences"] == 2 and offered(c) == []
    # a reply: back (through the hold-down), and the next silence is a first one again
    c.handle_timer(c.get_timer())
    c.echo_reply(c.probes_to_send()[-1], c.get_timer() - 0.5)
    assert c.state == Carry.HOLD_DOWN and c.status()["health_check"]["silences_since_reply"] == 0
    (fresh,) = _silence(c)
    assert fresh.first


def test_replies_to_unknown_probes_are_counted_not_trusted():
    c = StaticRoutes(StaticConfig((VPC,), health_interval=1))
    c.tunnel_up(0)
    c.echo_reply(999, 0.1)
    assert c.counters["late_replies"] == 1 and c.counters["replies"] == 0


def test_down_cancels_everything():
    c = StaticRoutes(StaticConfig((VPC,), health_interval=1, hold_down=5))
    c.tunnel_up(0)
    c.tunnel_down(1, "last IPsec SA deleted")
    assert c.get_timer() is None and offered(c) == [] and c.status()["reason"] == "last IPsec SA deleted"


OPS = st.lists(st.tuples(st.sampled_from(["up", "down", "reply", "advance", "reconf"]),
                         st.floats(0.01, 120)), max_size=50)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, health=st.sampled_from([None, 0.5, 10]), hold=st.sampled_from([0, 1, 60]),
       misses=st.integers(1, 4), primary=st.booleans(), ecmp=st.booleans())
def test_after_handle_timer_the_next_deadline_is_none_or_later(ops, health, hold, misses, primary, ecmp):
    cfg = StaticConfig((VPC,), primary=primary, ecmp=ecmp, hold_down=hold, health_interval=health,
                       health_misses=misses)
    c = StaticRoutes(cfg)
    now = 0.0
    sent = []
    for op, x in ops:
        if op == "up":
            c.tunnel_up(now)
        elif op == "down":
            c.tunnel_down(now, "x")
        elif op == "reply" and sent:
            c.echo_reply(sent[-1], now)
        elif op == "reconf":
            c.reconfigure(StaticConfig((VPC,), primary=not primary, ecmp=ecmp, hold_down=x,
                                       health_interval=health, health_misses=misses), now)
        elif op == "advance":
            end = now + x
            while (t := c.get_timer()) is not None and t <= end:
                now = max(now, t)
                c.handle_timer(now)
                nxt = c.get_timer()
                assert nxt is None or nxt > now, (c.state, nxt, now)
            now = end
        sent += c.probes_to_send()
        events(c)
        # what is offered always matches the state
        assert bool(c.offered()) == (c.state in (Carry.UP, Carry.HOLD_DOWN))


# ---------------------------------------------------------------- the route source (asyncio)
class FakeProber:
    instances = []

    def __init__(self, local, remote, ifname, on_reply):
        self.args = (local, remote, ifname)
        self.on_reply = on_reply
        self.sent = []
        self.answer = True
        self.closed = False
        FakeProber.instances.append(self)

    def open(self):
        pass

    def send(self, seq):
        self.sent.append(seq)
        if self.answer:
            asyncio.get_running_loop().call_soon(self.on_reply, seq)

    def close(self):
        self.closed = True


def test_route_source_offers_moves_and_withdraws_through_the_routing_table():
    async def main():
        rt = RoutingTable(threaded=False, static_routes=[VPC])
        srcs = {}
        for i, name in enumerate(("t1", "t2")):
            srcs[name] = StaticRouteSource(
                name, rt, StaticConfig((VPC,), primary=i == 0, hold_down=0.2, health_interval=0.05),
                local_address=f"169.254.{10 + i}.2", remote_address=f"169.254.{10 + i}.1",
                ifname=f"tun{i + 1}", index=i, prober=FakeProber)
        seen = []
        srcs["t1"].on_event = seen.append
        rt.tunnel_up("t1", "tun1", "169.254.10.1", 0)
        rt.tunnel_up("t2", "tun2", "169.254.11.1", 1)
        await srcs["t1"].start()
        await srcs["t2"].start()
        assert rt.rib.selected[VPC] == (NH1,)
        assert FakeProber.instances[-2].args == ("169.254.10.2", "169.254.10.1", "tun1")
        await asyncio.sleep(0.3)
        assert srcs["t1"].status()["state"] == "up" and len(FakeProber.instances[-2].sent) >= 3
        # AWS's inside address stops answering on tunnel 1: like DPD, the routes move
        FakeProber.instances[-2].answer = False
        for _ in range(100):
            await asyncio.sleep(0.02)
            if rt.rib.selected[VPC] == (NH2,):
                break
        assert rt.rib.selected[VPC] == (NH2,) and srcs["t1"].status()["state"] == "silent"
        assert any(isinstance(e, HealthLost) for e in seen)
        FakeProber.instances[-2].answer = True
        for _ in range(100):
            await asyncio.sleep(0.02)
            if rt.rib.selected[VPC] == (NH1,):
                break
        assert rt.rib.selected[VPC] == (NH1,)
        rt.tunnel_down("t1")
        await srcs["t1"].stop("DPD: peer dead")
        assert rt.rib.selected[VPC] == (NH2,) and FakeProber.instances[-2].closed
        rt.tunnel_down("t2")
        await srcs["t2"].stop("DPD: peer dead")
        assert rt.rib.selected == {} and rt.status()["unreachable"] == [VPC]
    asyncio.run(main())


def test_a_prober_that_cannot_open_fails_closed_with_a_reason():
    class Broken(FakeProber):
        def open(self):
            raise PermissionError(1, "Operation not permitted")

    async def main():
        rt = RoutingTable(threaded=False)
        src = StaticRouteSource("t1", rt, StaticConfig((VPC,), health_interval=0.05, health_misses=2),
                                local_address="169.254.10.2", remote_address="169.254.10.1",
                                ifname="tun1", prober=Broken)
        rt.tunnel_up("t1", "tun1", "169.254.10.1")
        await src.start()
        assert VPC in rt.rib.selected
        await asyncio.sleep(0.3)
        assert rt.rib.selected == {} and "ICMP socket" in src.status()["health_check_error"]
        await src.stop()
    asyncio.run(main())


# ---------------------------------------------------------------- ICMP adapter
def test_echo_request_decodes_with_an_independent_decoder_and_replies_parse():
    from scapy.layers.inet import ICMP, IP
    req = echo_request(0x1234, 7)
    pkt = ICMP(req)
    assert pkt.type == 8 and pkt.id == 0x1234 and pkt.seq == 7
    assert checksum(req) == 0
    reply = bytes(IP(src="169.254.10.1", dst="169.254.10.2") / ICMP(type=0, id=0x1234, seq=7) / b"x")
    assert parse_echo_reply(reply, 0x1234) == 7
    assert parse_echo_reply(reply, 0x1235) is None
    assert parse_echo_reply(reply[:-1] + b"y", 0x1234) is None      # bad checksum
    assert parse_echo_reply(b"\x45" + b"\x00" * 10, 0x1234) is None


def test_icmpv6_echo_request_decodes_with_an_independent_decoder_and_replies_parse():
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    aws, cgw = "fd00:10::1", "fd00:10::2"
    req = echo6_request(0x4321, 9)
    pkt = ICMPv6EchoRequest(req)
    assert pkt.type == 128 and pkt.id == 0x4321 and pkt.seq == 9 and pkt.cksum == 0  # the kernel's to fill
    # what scapy computes for the request on the wire is what our pseudo-header sum says
    wire = bytes(IPv6(src=cgw, dst=aws) / ICMPv6EchoRequest(id=0x4321, seq=9, data=req[8:]))[40:]
    assert icmp6_checksum(cgw, aws, wire) == 0
    reply = bytes(IPv6(src=aws, dst=cgw) / ICMPv6EchoReply(id=0x4321, seq=9, data=b"x"))[40:]
    assert parse_echo6_reply(reply, 0x4321, aws, cgw) == 9
    assert parse_echo6_reply(reply, 0x4322, aws, cgw) is None
    assert parse_echo6_reply(reply, 0x4321, "fd00:10::5", cgw) is None    # the checksum covers the source
    assert parse_echo6_reply(reply[:-1] + b"y", 0x4321, aws, cgw) is None
    request_back = bytes(IPv6(src=aws, dst=cgw) / ICMPv6EchoRequest(id=0x4321, seq=9))[40:]
    assert parse_echo6_reply(request_back, 0x4321, aws, cgw) is None
    assert parse_echo6_reply(reply[:7], 0x4321, aws, cgw) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need CAP_NET_RAW")
@pytest.mark.parametrize("address", ["127.0.0.1", "::1"], ids=["icmp", "icmpv6"])
def test_icmp_echo_against_the_kernel_on_loopback(address):
    async def main():
        got = []
        e = IcmpEcho(address, address, "lo", got.append)
        e.open()
        try:
            for seq in (1, 2, 3):
                e.send(seq)
            for _ in range(100):
                await asyncio.sleep(0.01)
                if len(got) >= 3:
                    break
        finally:
            e.close()
        assert sorted(set(got)) == [1, 2, 3]
    asyncio.run(main())


def test_static_route_is_an_offered_route():
    from cgwd.routing.source import OfferedRoute
    r = StaticRoute(VPC, (1,))
    assert isinstance(r, OfferedRoute) and r.describe()["source"] == "static"


# ---------------------------------------------------------------- the tunnel's static part
def test_tunnel_static_part_follows_the_vpn_settings_and_reconfigures_in_place():
    from cgwd.config import parse_config
    from cgwd.routing.table import RoutingSettings
    from cgwd.tunnel.static_part import StaticPart, static_config
    from test_routing_table import STATIC

    text = STATIC.replace("health_check = 5\n", "")
    cfg = parse_config(text)
    vpn = cfg.vpns[0]
    rt = RoutingTable(RoutingSettings.from_config(cfg, vpn), threaded=False)
    t1, t2 = vpn.tunnels
    assert static_config(t1, rt.settings).primary is False and static_config(t2, rt.settings).primary
    assert static_config(t1, rt.settings).hold_down == 45 and static_config(t1, rt.settings).ecmp

    async def main():
        parts = [StaticPart(t, rt, i) for i, t in enumerate((t1, t2))]
        for i, (t, p) in enumerate(zip((t1, t2), parts)):
            rt.tunnel_up(t.name, t.ifname, str(t.inside_remote), i)
            await p.start()
        assert [nh.tunnel for nh in rt.rib.selected[VPC]] == ["tun1", "tun2"]      # ECMP
        assert parts[0].status()["state"] == "disabled" and parts[0].up_since is None
        assert parts[0].static_status()["routes"] == [VPC, VPC2]
        # reload: no ECMP, tun1 the primary -> in place, the routes move to tun1 alone
        new = parse_config(text.replace('static_primary = "tun2"', 'static_primary = "tun1"')
                           .replace("ecmp = true\n", ""))
        rt.reconfigure(RoutingSettings.from_config(new, new.vpns[0]))
        for p, t in zip(parts, new.vpns[0].tunnels):
            p.reconfigure(t, frozenset())
        assert [nh.tunnel for nh in rt.rib.selected[VPC]] == ["tun1"]
        assert rt.status()["carriers"] == {VPC: ["tun1"], VPC2: ["tun1"]}
        for p in parts:
            await p.close("test over")
        assert rt.status()["carriers"] == {VPC: [], VPC2: []}
    asyncio.run(main())
