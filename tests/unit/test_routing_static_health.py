"""The static health check's silence handled like DPD: the static part hands the first silence
to the tunnel, the tunnel acts with its ``dpd_action`` through its IKE part (restart: delete
and renegotiate; clear: delete and stay down; hold: keep the SAs, the routes stay withdrawn)."""
from __future__ import annotations

import asyncio

import pytest

from cgwd.config import parse_config
from cgwd.ike.events import IpsecSaUp
from cgwd.routing.table import RoutingSettings, RoutingTable
from cgwd.seams import PartState
from cgwd.tunnel.static_part import StaticPart
from cgwd.tunnel.tunnel import Tunnel, TunnelEvent
from test_routing_static import VPC, FakeProber
from test_routing_table import STATIC
from test_tunnel import _FakeDatapath, _pair


def _config(action: str = "restart", health: str = "health_check = 1\n"):
    text = STATIC.replace("health_check = 5\n", health).replace("ecmp = true\n", "")
    text = text.replace('routing = "static"\n', f'routing = "static"\ndpd_action = "{action}"\n')
    cfg = parse_config(text)
    return cfg, cfg.vpns[0]


class AwsInside(FakeProber):
    """Every prober of a tunnel answers while AWS's inside address does (``AwsInside.up``)."""

    up = True

    def send(self, seq):
        self.answer = AwsInside.up
        super().send(seq)


class FakeEngine:
    """The IKE engine seam, recording what the tunnel's IKE part asks of it."""

    version = 1
    name = "fake"

    def __init__(self):
        self.calls: list[str] = []

    def start(self, now):
        self.calls.append("start")

    def stop(self, now):
        self.calls.append("stop")

    def child_state(self, spi_in):
        return None

    def status(self):
        return {}


class FakeEndpoint:
    def __init__(self):
        self.serviced = 0

    def now(self):
        return asyncio.get_running_loop().time()

    def add_peer(self, peer):
        pass

    def remove_peer(self, peer):
        pass

    def set_enabled(self, peer, enabled):
        pass

    def start_peer(self, peer):
        peer.start(self.now())

    def stop_peer(self, peer):
        peer.stop(self.now())

    def service(self, peer):
        self.serviced += 1

    def send_esp(self, *args):
        pass


def test_static_part_hands_the_first_silence_to_the_tunnel_and_not_a_repeated_one():
    cfg, vpn = _config()
    rt = RoutingTable(RoutingSettings.from_config(cfg, vpn), threaded=False)
    t1 = vpn.tunnels[0]
    FakeProber.instances.clear()
    silent: list[str] = []

    async def main():
        AwsInside.up = True
        part = StaticPart(t1, rt, 0, on_silent=silent.append, prober=AwsInside)
        # 1 s interval is the config's minimum: make the test quick, the logic is the same
        part.source.reconfigure(health_interval=0.02)
        rt.tunnel_up(t1.name, t1.ifname, str(t1.inside_remote), 0)
        await part.start()
        await asyncio.sleep(0.1)
        assert part.static_status()["state"] == "up" and rt.rib.selected[VPC][0].tunnel == "tun1"
        AwsInside.up = False
        for _ in range(100):
            await asyncio.sleep(0.01)
            if silent:
                break
        assert len(silent) == 1 and "no echo reply" in silent[0] and VPC not in rt.rib.selected
        # the tunnel renegotiated (stop, start): still unanswered: the tunnel is not asked again
        rt.tunnel_down(t1.name)
        await part.stop("health check; IKE renegotiated")
        rt.tunnel_up(t1.name, t1.ifname, str(t1.inside_remote), 0)
        await part.start()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if part.static_status()["state"] == "silent":
                break
        assert part.static_status()["state"] == "silent" and len(silent) == 1
        # AWS's inside address answers again: the routes come back, a later silence is new
        AwsInside.up = True
        for _ in range(100):
            await asyncio.sleep(0.01)
            if part.static_status()["state"] in ("hold-down", "up"):
                break
        assert part.static_status()["state"] in ("hold-down", "up")
        AwsInside.up = False
        for _ in range(100):
            await asyncio.sleep(0.01)
            if len(silent) == 2:
                break
        assert len(silent) == 2
        await part.close("test over")

    asyncio.run(main())


@pytest.mark.parametrize("action,ike_calls,state", [
    ("restart", ["stop", "start"], PartState.START),
    ("clear", ["stop"], PartState.START),
    ("hold", [], PartState.UP),
])
def test_a_silent_health_check_acts_on_ike_like_dpd_with_the_dpd_action(action, ike_calls, state):
    cfg, vpn = _config(action)
    rt = RoutingTable(RoutingSettings.from_config(cfg, vpn), threaded=False)
    t1 = vpn.tunnels[0]
    FakeProber.instances.clear()

    async def main():
        tunnel = Tunnel(t1, rt, 0, endpoint=FakeEndpoint(), datapath_kind="userspace")
        engine = tunnel.ike.engine = FakeEngine()
        tunnel.routes = StaticPart(t1, rt, 0, on_silent=tunnel._health_silent, prober=FakeProber)
        tunnel.routes.source.reconfigure(health_interval=0.02)
        tunnel.dp.datapath = dp = _FakeDatapath()
        await tunnel.ike.start()
        assert engine.calls == ["start"]
        tunnel._move(TunnelEvent.START)      # what Tunnel.start does besides opening the data path
        tunnel.on_ike_event(IpsecSaUp(_pair(0x1000), initiator=True))
        await asyncio.sleep(0.1)
        assert tunnel.state is PartState.UP and tunnel.routes.static_status()["state"] == "up"
        assert rt.rib.selected[VPC][0].tunnel == "tun1"
        FakeProber.instances[-1].answer = False
        for _ in range(100):
            await asyncio.sleep(0.01)
            if VPC not in rt.rib.selected:
                break
        await asyncio.sleep(0.05)
        assert VPC not in rt.rib.selected, "a silent health check withdraws the routes (fail closed)"
        assert engine.calls[1:] == ike_calls
        assert tunnel.state is state
        st = tunnel.routes.static_status()
        if action == "hold":
            assert dp.installed == [0x1000] and st["state"] == "silent"
        else:
            assert dp.installed == [] and st["state"] == "down" and f"dpd_action {action}" in st["reason"]
        await tunnel.routes.close("test over")

    asyncio.run(main())
