"""The next hop a LAN router is sent on an IPv6 session (RFC 2545 3): a router on a shared link
gets cgwd's LAN address followed by the link-local address of the interface towards it (32
octets); one reached through a gateway gets the global address alone. The router's side is a
real BgpSession wired in memory; the UPDATEs are decoded from the bytes cgwd's session sends."""
import asyncio
import dataclasses
import ipaddress
import struct

import pytest

import cgwd.lan.part as part
from cgwd.bgp import message as m
from cgwd.bgp.session import BgpPeerConfig, BgpSession
from cgwd.config import parse_config
from cgwd.lan.format import format_lan
from cgwd.lan.part import LanBgp
from cgwd.routing.source import ORIGINATED
from unit_config import BASE

ROUTER, OURS, LL = "2001:db8:200::10", "2001:db8:200::1", "fe80::1c:2ff:fe03:405"
VPC6 = "2001:db8:100::/56"


class _Speaker:
    """BgpSpeaker's surface for LanNeighbor.start, no sockets."""

    listen_error = None

    def __init__(self, session, **_kw):
        self.session = session

    async def start(self):
        return None

    async def stop(self, reason):
        return None

    def announce(self, routes):
        return None

    def status(self):
        return self.session.status()


def _cfg6():
    cfg = parse_config(BASE + """
[[lan_neighbor]]
name = "core1"
address = "10.200.0.10"
local_address = "10.200.0.1"
remote_asn = 65010
import = ["2001:db8:201::/48 le 64"]
""").lan_neighbors[0]
    return dataclasses.replace(cfg, address=ipaddress.ip_address(ROUTER), local_address=ipaddress.ip_address(OURS))


def _updates(data: bytes) -> list[m.UpdateResult]:
    out = []
    while data:
        length, kind = struct.unpack_from("!HB", data, 16)
        if kind == 2:
            out.append(m.decode_update(data[19:length], as4=True, mp_nlri=True))
        data = data[length:]
    return out


def _sent_to_router(lookup) -> tuple[list, list[str]]:
    """cgwd's neighbor (next hop found by ``lookup``) established with an in-memory router and
    given the VPC's IPv6 prefix: the UPDATEs the router got, and the addresses looked up."""
    asked: list[str] = []

    def ll(addr):
        asked.append(addr)
        return lookup(addr)

    lan = LanBgp(lambda: [], link_local=ll)
    n = lan.add(_cfg6())
    asyncio.run(n.start())
    router = BgpSession(BgpPeerConfig(ROUTER, OURS, 65010, 65000, "10.200.0.10", hold_time=90,
                                      ipv4=False, ipv6=True))
    n.session.start(0.0)
    router.start(0.0)
    n.session.connection_made(0.0, outbound=True)
    router.connection_made(0.0, outbound=False)
    lan.exchange.set_carried("vpn-0123456789abcdef0", {VPC6: ORIGINATED, "10.100.0.0/16": ORIGINATED})
    got = []
    for i in range(50):
        if i == 5:
            lan.refresh_lan()
        a, b = n.session.data_to_send(True), router.data_to_send(False)
        got += _updates(a)
        if a:
            router.receive_data(a, 0.0, outbound=False)
        if b:
            n.session.receive_data(b, 0.0, outbound=True)
        while router.next_event() is not None or n.session.next_event() is not None:
            pass
    assert n.session.state == "Established" == router.state
    return [u for u in got if u.announced], asked


@pytest.fixture(autouse=True)
def _no_sockets(monkeypatch):
    monkeypatch.setattr(part, "BgpSpeaker", _Speaker)


def test_a_router_on_the_shared_link_gets_the_global_then_the_link_local_next_hop():
    [u], asked = _sent_to_router({ROUTER: LL}.get)
    assert asked == [ROUTER]
    assert [r.prefix for r in u.announced] == [VPC6]
    assert u.announced[0].next_hop == OURS and u.link_local == LL


def test_a_router_behind_a_gateway_gets_the_global_next_hop_alone():
    [u], _ = _sent_to_router(lambda addr: None)
    assert u.announced[0].next_hop == OURS and u.link_local is None


def test_status_shows_both_halves_of_the_next_hop():
    lan = LanBgp(lambda: [], link_local={ROUTER: LL}.get)
    n = lan.add(_cfg6())
    asyncio.run(n.start())
    assert n.status()["next_hop"] == [OURS, LL]
    text = "\n".join(format_lan({"neighbors": [{**n.status(), "sent": [VPC6]}]}, 0.0))
    assert f"we sent 1 (next hop {OURS} {LL}): {VPC6}" in text, text


def test_an_ipv4_router_is_never_looked_up():
    def boom(addr):
        raise AssertionError(f"looked up {addr}")

    cfg = dataclasses.replace(_cfg6(), address=ipaddress.ip_address("10.200.0.10"),
                              local_address=ipaddress.ip_address("10.200.0.1"))
    n = LanBgp(lambda: [], link_local=boom).add(cfg)
    asyncio.run(n.start())
    assert n.session.config.link_local_next_hop is None and n.status()["next_hop"] == ["10.200.0.1"]

