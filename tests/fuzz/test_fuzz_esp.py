"""Fuzz the userspace ESP receive path (UserspaceDatapath.receive_esp) with hostile packets.

Two kinds of input reach the data path, whose TUN is replaced by a pipe:
  * captured ESP packets from the lab (corpus/esp), mutated, some with their SPI rewritten to
    the installed SA's so they reach the replay and ICV checks;
  * inner IPv4 packets captured in the lab (corpus/ip), encrypted with the installed SA's
    peer keys (valid ESP), then mutated: flipped bits, truncation, extra bytes, replays.

What must hold: nothing escapes (no internal_error drop, no traceback logged); a packet
reaches the TUN only if it is a valid, unmodified, not yet seen encryption of an accepted inner
packet; every other packet is a counted drop (so packets in = delivered + counted drops);
allocation per packet is bounded.

The same for an IPv6 tunnel (::/0 selectors, next header 41), whose inner seeds are the
captured IPv4 packets' payloads behind an IPv6 header; and the IPv6 outbound path (what
the kernel writes into the TUN): every packet is sent, answered with Packet Too Big,
ignored (multicast) or a counted drop.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from fuzzlib import FUZZ, corpus, mutated
from hypothesis import given
from hypothesis import strategies as st

from cgwd.esp.inner import InnerDrop, validate_ipv4
from cgwd.esp.inner6 import validate_ipv6
from cgwd.esp.packet import NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, EspEncoder
from cgwd.esp.sa import SaPair
from cgwd.esp.userspace import UserspaceDatapath
from cgwd.ipsec_sa import IpsecSaPair

SPI_IN, SPI_OUT = 0xC0DE0001, 0xC0DE0002
K_ENC_IN, K_ENC_OUT = bytes(range(16)), bytes(range(16, 32))
K_INT_IN, K_INT_OUT = bytes(range(40, 60)), bytes(range(60, 80))
PEER = ("198.51.100.2", 4500)

ESP_SEEDS = corpus("esp")
IP_SEEDS = corpus("ip")


def _pair(spi_in, spi_out, ek_in, ek_out, ik_in, ik_out, family=4):
    ts = {} if family == 4 else {"local_ts": "::/0", "remote_ts": "::/0"}
    return IpsecSaPair(spi_in, spi_out, "aes128", "sha1", ek_in, ek_out, ik_in, ik_out,
                       local_address="203.0.113.2", remote_address=PEER[0], udp_encap=True, **ts)


def _as_ipv6(pkt: bytes) -> bytes:
    """An IPv4 seed's payload behind an IPv6 header (protocol kept as next header)."""
    ihl = (pkt[0] & 15) * 4 if pkt else 0
    payload = pkt[ihl:]
    return (b"\x60\x00\x00\x00" + len(payload).to_bytes(2, "big") + bytes([pkt[9] if len(pkt) > 9 else 59, 64])
            + ipaddress.IPv6Address("fd00:200::10").packed + ipaddress.IPv6Address("fd00:99::10").packed + payload)


IP6_SEEDS = [_as_ipv6(p) for p in IP_SEEDS if len(p) >= 20]


def _total_drops(dp: UserspaceDatapath) -> int:
    st_ = dp.stats()
    n = sum(st_["drops"].values())
    for sa in st_["sas"]:
        n += sum((sa.get("drops") or {}).values()) + sa.get("replay_drops", 0) + sa.get("auth_failures", 0)
    return n


class Rx:
    def __init__(self, family=4):
        inside = ipaddress.IPv4Interface("169.254.10.2/30") if family == 4 else ipaddress.IPv6Interface("fd00::2/126")
        self.sent = []
        self.dp = UserspaceDatapath(name="fz", ifname="cgw-fz", inside=inside,
                                    mtu=1436, mss=1379, replay_window=64, send_udp=lambda d, a: self.sent.append(d),
                                    on_event=lambda e: None, local_address="203.0.113.2")
        self.dp.install(_pair(SPI_IN, SPI_OUT, K_ENC_IN, K_ENC_OUT, K_INT_IN, K_INT_OUT, family))
        # a datagram socket pair keeps packet boundaries, as a TUN does
        self.r, self.w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.r.setblocking(False)
        self.w.setblocking(False)
        self.dp._tun_fd = self.w.fileno()
        self.got = 0
        # the peer's outbound SA = our inbound SA's keys
        peer = SaPair(_pair(SPI_OUT, SPI_IN, K_ENC_OUT, K_ENC_IN, K_INT_OUT, K_INT_IN, family))
        self.enc = EspEncoder(peer.outbound)

    def delivered(self) -> int:
        while True:
            try:
                self.r.recv(65536)
            except BlockingIOError:
                return self.got
            self.got += 1

    def close(self):
        self.r.close()
        self.w.close()


def _accepted(inner: bytes, family: int = 4) -> bool:
    try:
        (validate_ipv4 if family == 4 else validate_ipv6)(inner)
        return True
    except InnerDrop:
        return False


@st.composite
def esp_input(draw, seeds=IP_SEEDS):
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return ("raw", draw(mutated(ESP_SEEDS)))
    if kind == 1:
        data = bytearray(draw(mutated(ESP_SEEDS, max_ops=2)))
        if len(data) >= 4:
            data[:4] = SPI_IN.to_bytes(4, "big")
        return ("raw", bytes(data))
    inner = draw(mutated(seeds, max_ops=1)) if draw(st.booleans()) else draw(st.sampled_from(seeds))
    return ("valid", inner, draw(st.integers(0, 3)), draw(st.data()))


def _receive_path(alloc_guard, caplog, items, family):
    rx = Rx(family)
    nh = NEXT_HEADER_IPV4 if family == 4 else NEXT_HEADER_IPV6
    sent = expected_delivered = 0
    try:
        with caplog.at_level(logging.DEBUG):
            for item in items:
                if item[0] == "raw":
                    packets = [(item[1], False)]
                else:
                    _, inner, n_mut, data = item
                    esp = rx.enc.encrypt(inner, nh)
                    packets = [(esp, _accepted(inner, family))]
                    if n_mut:
                        packets = [(data.draw(mutated([esp], max_ops=n_mut)), None)]
                    if data.draw(st.booleans()):
                        packets.append((esp, False))  # a replay of the same packet
                for pkt, good in packets:
                    sent += 1
                    with alloc_guard:
                        rx.dp.receive_esp(pkt, PEER)
                    rx.delivered()
                    if good:
                        expected_delivered += 1
        got = rx.delivered()
        drops = _total_drops(rx.dp)
        assert rx.dp.stats()["drops"].get("internal_error", 0) == 0
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert got + drops == sent, f"{sent} packets in, {got} delivered, {drops} counted drops"
        assert got >= expected_delivered
    finally:
        rx.close()


@FUZZ
@given(st.lists(esp_input(), min_size=1, max_size=8))
def test_esp_receive_path_counts_every_bad_packet(alloc_guard, caplog, items):
    _receive_path(alloc_guard, caplog, items, 4)


@FUZZ
@given(st.lists(esp_input(IP6_SEEDS), min_size=1, max_size=8))
def test_esp_receive_path_ipv6_counts_every_bad_packet(alloc_guard, caplog, items):
    _receive_path(alloc_guard, caplog, items, 6)


@FUZZ
@given(st.lists(st.one_of(mutated(IP6_SEEDS, max_ops=2), mutated(IP_SEEDS, max_ops=1), st.binary(max_size=2000)),
                min_size=1, max_size=8))
def test_ipv6_outbound_accounts_for_every_packet(alloc_guard, caplog, packets):
    rx = Rx(6)
    try:
        with caplog.at_level(logging.DEBUG):
            for pkt in packets:
                with alloc_guard:
                    rx.dp.send_inner(pkt)
        st_ = rx.dp.stats()
        sa = st_["sas"][0]
        accounted = (len(rx.sent) + sum(st_["drops"].values()) + sum(st_["ignored"].values())
                     + sum(sa["drops"].values()) - st_["drops"].get("icmp6_rate_limited", 0))
        assert st_["drops"].get("internal_error", 0) == 0
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        assert accounted == len(packets), (len(packets), len(rx.sent), st_["drops"], st_["ignored"], sa["drops"])
    finally:
        rx.close()


def test_replayed_and_bit_flipped_packets_are_counted():
    """Deterministic: the two cases the issue names, with their own counters."""
    rx = Rx()
    try:
        pkt = rx.enc.encrypt(IP_SEEDS[0], NEXT_HEADER_IPV4)
        assert _accepted(IP_SEEDS[0])
        rx.dp.receive_esp(pkt, PEER)
        rx.dp.receive_esp(pkt, PEER)
        flipped = bytearray(rx.enc.encrypt(IP_SEEDS[0], NEXT_HEADER_IPV4))
        flipped[30] ^= 0x01
        rx.dp.receive_esp(bytes(flipped), PEER)
        sa = rx.dp.stats()["sas"][0]
        assert rx.delivered() == 1
        assert sa["replay_drops"] == 1
        assert sa["auth_failures"] == 1
    finally:
        rx.close()
