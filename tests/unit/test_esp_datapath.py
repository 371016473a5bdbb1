"""UserspaceDatapath without a real network: a pipe stands in for the TUN."""

import asyncio
import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgwd.esp.datapath import Datapath, choose_datapath, make_datapath
from cgwd.esp.espsock import EspSockets
from cgwd.esp.events import SaExpiring, SequenceExhausted
from cgwd.esp.mtu import conservative_mtu
from cgwd.esp.sa import SEQ_HARD_LIMIT
from cgwd.esp.tun import interface_exists
from cgwd.esp.userspace import UserspaceDatapath
from cgwd.ipsec_sa import ENC_KEY_BYTES, INTEG_KEY_BYTES, IpsecSaPair

pytest.importorskip("scapy")
from scapy.layers.inet import ICMP, IP, TCP  # noqa: E402

INSIDE = ipaddress.IPv4Interface("169.254.10.2/30")


def keys(n):
    return os.urandom(n)


def pair_mirror(spi_a, spi_b, enc="aes128", integ="sha1", *, a_addr="192.0.2.2", b_addr="198.51.100.1",
                ts=None, udp_encap=True, **kw):
    """Mirrored pairs for a (a_addr) and b (b_addr); ``ts``: both selectors (e.g. "::/0")."""
    if integ:
        k1, k2 = keys(ENC_KEY_BYTES[enc]), keys(ENC_KEY_BYTES[enc])
        i1, i2 = keys(INTEG_KEY_BYTES[integ]), keys(INTEG_KEY_BYTES[integ])
    else:
        k1, k2, i1, i2 = keys(ENC_KEY_BYTES[enc] + 4), keys(ENC_KEY_BYTES[enc] + 4), b"", b""
    common = dict(udp_encap=udp_encap, **kw)
    if ts is not None:
        common.update(local_ts=ipaddress.ip_network(ts), remote_ts=ipaddress.ip_network(ts))
    a = IpsecSaPair(spi_a, spi_b, enc, integ, k1, k2, i1, i2, local_address=a_addr,
                    remote_address=b_addr, **common)
    b = IpsecSaPair(spi_b, spi_a, enc, integ, k2, k1, i2, i1, local_address=b_addr,
                    remote_address=a_addr, **common)
    return a, b


class CaptureSock:
    """Stands in for the shared raw ESP socket (test_esp_sockets.py opens real ones)."""

    def __init__(self, addr, sent):
        self.local_address = str(ipaddress.ip_address(addr))
        self.sent = sent
        self._spis = {}

    def register(self, spi, handler):
        if self._spis.get(spi, handler) != handler:
            return False
        self._spis[spi] = handler
        return True

    def unregister(self, spi, handler=None):
        self._spis.pop(spi, None)

    def spis(self):
        return list(self._spis)

    def sendto(self, data, address):
        self.sent.append((data, address))

    def close(self):
        pass


class Harness:
    """Two datapaths wired back to back, TUN replaced by pipes; plain ESP is captured in
    ``raw_sent`` (each harness has its own raw ESP socket owner)."""

    def __init__(self, inside=INSIDE, inside_b=None, a_addr="192.0.2.2", b_addr="198.51.100.1", **kw):
        self.events_a, self.events_b = [], []
        self.wire_ab, self.wire_ba = [], []
        self.raw_sent = []
        kw.setdefault("esp_sockets", EspSockets(opener=lambda addr: CaptureSock(addr, self.raw_sent)))
        self.a = make_datapath("userspace", name="a", ifname="cgw-a", inside=inside,
                               send_udp=lambda d, addr: self.wire_ab.append((d, addr)),
                               on_event=self.events_a.append, local_address=a_addr, **kw)
        self.b = make_datapath("userspace", name="b", ifname="cgw-b", inside=inside_b or inside,
                               send_udp=lambda d, addr: self.wire_ba.append((d, addr)),
                               on_event=self.events_b.append, local_address=b_addr, **kw)
        self.ra, self.wa = os.pipe()
        self.rb, self.wb = os.pipe()
        os.set_blocking(self.ra, False)
        os.set_blocking(self.rb, False)
        self.a._tun_fd = self.wa  # what a decrypts is written here
        self.b._tun_fd = self.wb

    def tun_a(self):
        return self._drain(self.ra)

    def tun_b(self):
        return self._drain(self.rb)

    @staticmethod
    def _drain(fd):
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return b""

    def deliver_ab(self):
        for d, _ in self.wire_ab:
            self.b.receive_esp(d, ("192.0.2.2", 4500))
        self.wire_ab.clear()

    def deliver_ba(self):
        for d, _ in self.wire_ba:
            self.a.receive_esp(d, ("198.51.100.1", 4500))
        self.wire_ba.clear()

    def close(self):
        for fd in (self.ra, self.wa, self.rb, self.wb):
            os.close(fd)


@pytest.fixture
def h():
    h = Harness()
    yield h
    h.close()


def ping(size=56, src="169.254.10.2", dst="169.254.10.1"):
    return bytes(IP(src=src, dst=dst) / ICMP() / (b"p" * size))


def test_is_a_datapath():
    h = Harness()
    assert isinstance(h.a, Datapath) and isinstance(h.a, UserspaceDatapath)
    assert h.a.kind == "userspace"
    h.close()


def test_unknown_kind_rejected():
    with pytest.raises(ValueError):
        make_datapath("dpdk", name="x", ifname="x", inside=INSIDE, send_udp=None,
                      on_event=print, local_address="192.0.2.1")


def test_choose_userspace_explicit():
    assert choose_datapath("userspace")[0] == "userspace"
    with pytest.raises(ValueError):
        choose_datapath("fast")


def test_end_to_end_and_stats(h):
    a, b = pair_mirror(0xC0000001, 0xC0000002)
    h.a.install(a)
    h.b.install(b)
    h.a.send_inner(ping())
    assert len(h.wire_ab) == 1
    data, addr = h.wire_ab[0]
    assert addr == ("198.51.100.1", 4500)
    assert data[:4] == (0xC0000002).to_bytes(4, "big")
    h.deliver_ab()
    assert h.tun_b() == ping()
    st = h.b.stats()
    assert st["kind"] == "userspace" and st["ifname"] == "cgw-b"
    (sa,) = st["sas"]
    assert sa["spi_in"] == 0xC0000002 and sa["packets_in"] == 1 and sa["bytes_in"] == len(ping())
    # the cheap per-second look agrees with the counters stats() shows (Datapath's own derivation)
    assert h.b.inbound_packets() == Datapath.inbound_packets(h.b) == {0xC0000002: 1}
    assert h.a.inbound_packets() == Datapath.inbound_packets(h.a) == {0xC0000001: 0}
    sa_a = h.a.stats()["sas"][0]
    assert sa_a["packets_out"] == 1 and sa_a["udp_encap"] is True
    text = repr(st) + repr(h.a.stats())
    for k in (a.enc_key_in, a.enc_key_out, a.integ_key_in, a.integ_key_out):
        assert k.hex() not in text


def test_mss_clamped_both_directions(h):
    a, b = pair_mirror(0x1001, 0x2002)
    h.a.install(a)
    h.b.install(b)
    s = bytes(IP(src="169.254.10.2", dst="169.254.10.1") / TCP(flags="S", options=[("MSS", 1460)]))
    h.a.send_inner(s)
    h.deliver_ab()
    got = IP(h.tun_b())
    # the MSS follows the pair's MTU: AES-CBC/SHA-1 over NAT-T: 1422 - 40
    assert h.a.mtu == 1422 and h.a.mss == 1382
    assert dict(o for o in got[TCP].options if o[0] == "MSS")["MSS"] == 1382


def test_oversized_fragmented(h):
    a, b = pair_mirror(0x1001, 0x2002)
    h.a.install(a)
    h.b.install(b)
    big = bytes(IP(src="169.254.10.2", dst="169.254.10.1", flags="DF") / ICMP() / (b"b" * 3000))
    h.a.send_inner(big)
    assert len(h.wire_ab) == 3
    h.deliver_ab()


def test_unknown_spi_and_garbage_counted(h):
    a, b = pair_mirror(0x1001, 0x2002)
    h.b.install(b)
    h.b.receive_esp(b"\x00\x00\x99\x99" + bytes(60), ("x", 1))
    h.b.receive_esp(b"\x01", ("x", 1))
    st = h.b.stats()
    assert st["drops"] == {"unknown_spi": 1, "truncated": 1}


def test_no_sa_and_wrong_family_counted(h):
    h.a.send_inner(ping())
    assert h.a.stats()["drops"] == {"no_sa": 1}
    a, b = pair_mirror(0x1001, 0x2002)
    h.a.install(a)
    h.a.send_inner(b"\x60" + bytes(5) + b"\x3b" + bytes(33))  # IPv6 into an IPv4 tunnel
    h.a.send_inner(b"\x10" + bytes(47))
    assert h.a.stats()["drops"]["wrong_family"] == 1 and h.a.stats()["drops"]["not_ip"] == 1


def test_traffic_selectors_enforced():
    h = Harness()
    a, b = pair_mirror(0x1001, 0x2002, local_ts=ipaddress.IPv4Network("10.1.0.0/16"),
                       remote_ts=ipaddress.IPv4Network("10.2.0.0/16"))
    h.a.install(a)
    h.a.send_inner(ping(src="10.9.0.1", dst="10.2.0.1"))
    assert h.wire_ab == []
    assert h.a.stats()["sas"][0]["drops"] == {"ts_mismatch": 1}
    h.a.send_inner(ping(src="10.1.0.1", dst="10.2.0.1"))
    assert len(h.wire_ab) == 1
    # inbound: b must see src in a's local_ts -> b's remote_ts
    b2 = IpsecSaPair(0x2002, 0x1001, "aes128", "sha1", b.enc_key_in, b.enc_key_out, b.integ_key_in,
                     b.integ_key_out, udp_encap=True, remote_address="192.0.2.2",
                     local_ts=ipaddress.IPv4Network("10.2.0.0/16"), remote_ts=ipaddress.IPv4Network("10.1.0.0/16"))
    h.b.install(b2)
    h.deliver_ab()
    assert h.tun_b() == ping(src="10.1.0.1", dst="10.2.0.1")
    h.close()


def test_inbound_selector_drop():
    h = Harness()
    a, b = pair_mirror(0x1001, 0x2002)
    h.a.install(a)  # a sends anything
    b2 = IpsecSaPair(0x2002, 0x1001, "aes128", "sha1", b.enc_key_in, b.enc_key_out, b.integ_key_in,
                     b.integ_key_out, udp_encap=True, remote_address="192.0.2.2",
                     remote_ts=ipaddress.IPv4Network("10.1.0.0/16"))
    h.b.install(b2)
    h.a.send_inner(ping(src="10.7.0.1"))
    h.deliver_ab()
    assert h.tun_b() == b""
    assert h.b.stats()["sas"][0]["drops"] == {"ts_mismatch": 1}
    h.close()


def test_make_before_break(h):
    a1, b1 = pair_mirror(0x1001, 0x2002)
    a2, b2 = pair_mirror(0x1003, 0x2004)
    h.a.install(a1)
    h.b.install(b1)
    h.a.send_inner(ping(1))
    old_pkt = h.wire_ab[:]
    # rekey: b (responder) installs first, then a
    h.b.install(b2)
    h.a.install(a2)
    h.a.send_inner(ping(2))
    assert h.wire_ab[-1][0][:4] == (0x2004).to_bytes(4, "big")  # outbound switched at once
    h.deliver_ab()
    st = {s["spi_in"]: s for s in h.b.stats()["sas"]}
    assert st[0x2002]["packets_in"] == 1 and st[0x2004]["packets_in"] == 1
    # old inbound still valid until removed
    h.b.remove(0x2002)
    for d, addr in old_pkt:
        h.b.receive_esp(d, addr)
    assert h.b.stats()["drops"]["unknown_spi"] == 1
    # removing the active outbound falls back to the remaining pair
    h.a.remove(0x1003)
    assert h.a.stats()["active_spi_out"] == 0x00002002
    h.a.remove(0x1001)
    assert h.a.stats()["active_spi_out"] is None
    # counters survive the pairs that carried them (the tunnel's totals, for metrics)
    assert h.a.stats()["totals"]["packets_out"] == 2 and h.a.stats()["sas"] == []
    assert h.b.stats()["totals"]["packets_in"] == 2  # one on the removed pair, one on the current
    h.a.remove(0xDEAD)  # unknown: no error
    with pytest.raises(ValueError):
        h.b.install(b2)  # duplicate inbound SPI


def test_pending_outbound_switches_when_the_peer_uses_the_new_pair(h):
    """Our rekey: the new pair receives at once, outbound stays on the old pair until the
    peer's first authenticated packet on the new one (or activate_outbound)."""
    assert h.a.pending_outbound
    a1, b1 = pair_mirror(0x1001, 0x2002)
    a2, b2 = pair_mirror(0x1003, 0x2004)
    h.a.install(a1)
    h.b.install(b1)
    h.a.install(a2, outbound=False)
    h.a.send_inner(ping(1))
    assert h.wire_ab[-1][0][:4] == (0x2002).to_bytes(4, "big")  # still the old pair
    assert h.a.stats()["active_spi_out"] == 0x00002002
    # a forged packet on the new SPI fails authentication: no switch
    h.a.receive_esp((0x1003).to_bytes(4, "big") + (1).to_bytes(4, "big") + os.urandom(64), ("198.51.100.1", 4500))
    assert h.a.stats()["active_spi_out"] == 0x00002002
    # the peer installs the new pair and sends on it: a switches
    h.b.install(b2)
    h.b.send_inner(ping(2, src="169.254.10.1", dst="169.254.10.2"))
    for d, addr in h.wire_ba:
        h.a.receive_esp(d, addr)
    assert h.tun_a() == ping(2, src="169.254.10.1", dst="169.254.10.2")
    assert h.a.stats()["active_spi_out"] == 0x00002004
    h.a.send_inner(ping(3))
    assert h.wire_ab[-1][0][:4] == (0x2004).to_bytes(4, "big")
    # explicit activation, unknown SPI, and fall-back to a pending pair when the active goes
    a3, _ = pair_mirror(0x1005, 0x2006)
    h.a.install(a3, outbound=False)
    assert h.a.activate_outbound(0xDEAD) is False
    assert h.a.activate_outbound(0x1001, "test") is True
    assert h.a.stats()["active_spi_out"] == 0x00002002
    h.a.remove(0x1001)
    assert h.a.stats()["active_spi_out"] == 0x00002006  # newest remaining, pending or not


def test_lifetime_events_and_hard_removal():
    h = Harness(clock=lambda: 1000.0)  # the data path's clock is injected
    a, b = pair_mirror(0x1001, 0x2002, lifetime_seconds=900)
    h.a.install(a)
    created = h.a.sa_pair(0x1001).created
    assert created == 1000.0
    h.a.check_lifetimes(created + 100)
    assert h.events_a == []
    h.a.check_lifetimes(created + 721)
    assert h.events_a == [SaExpiring(0x1001, False)]
    h.a.check_lifetimes(created + 900)
    assert h.events_a[-1] == SaExpiring(0x1001, True)
    assert h.a.stats()["sas"] == []
    h.close()


def test_byte_lifetime_soft_from_hot_path():
    h = Harness()
    a, b = pair_mirror(0x1001, 0x2002, lifetime_seconds=0, lifetime_kilobytes=1)
    h.a.install(a)
    for _ in range(14):
        h.a.send_inner(ping(56))  # 84 bytes each -> soft at 921 bytes, hard at 1024
    assert SaExpiring(0x1001, False) in h.events_a
    assert SaExpiring(0x1001, True) in h.events_a
    assert h.a.stats()["sas"] == []
    h.close()


def test_sequence_exhausted_event(h):
    a, b = pair_mirror(0x1001, 0x2002, lifetime_seconds=0)
    h.a.install(a)
    h.a.sa_pair(0x1001).outbound.seq = SEQ_HARD_LIMIT - 1
    h.a.send_inner(ping())
    h.a.send_inner(ping())
    h.a.send_inner(ping())
    assert len(h.wire_ab) == 1
    assert h.events_a == [SequenceExhausted(0x1001)]
    assert h.a.stats()["sas"][0]["drops"] == {"seq_exhausted": 2}


def test_event_handler_exception_contained():
    def boom(ev):
        raise RuntimeError("handler bug")

    dp = make_datapath("userspace", name="a", ifname="cgw-a", inside=INSIDE, send_udp=lambda d, a: None,
                       on_event=boom, local_address="192.0.2.2")
    a, _ = pair_mirror(0x1001, 0x2002, lifetime_seconds=900)
    dp.install(a)
    dp.check_lifetimes(dp.sa_pair(0x1001).created + 1000)  # must not raise


def test_send_failure_counted():
    def fail(d, addr):
        raise OSError(101, "Network is unreachable")

    dp = make_datapath("userspace", name="a", ifname="cgw-a", inside=INSIDE, send_udp=fail,
                       on_event=print, local_address="192.0.2.2")
    a, _ = pair_mirror(0x1001, 0x2002)
    dp.install(a)
    dp.send_inner(ping())
    assert dp.stats()["sas"][0]["drops"] == {"send_failed": 1}


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_fuzz_receive_never_raises(data):
    h = Harness()
    a, b = pair_mirror(0x1001, 0x2002)
    h.b.install(b)
    h.b.receive_esp(data, ("192.0.2.2", 4500))
    h.b.receive_esp((0x2002).to_bytes(4, "big") + data, ("192.0.2.2", 4500))
    h.a.install(a)
    h.a.send_inner(data)
    h.close()


def test_validation_of_parameters():
    for kw in (dict(replay_window=32), dict(replay_window=4096), dict(mtu=100), dict(mss=2000)):
        with pytest.raises(ValueError):
            make_datapath("userspace", name="a", ifname="cgw-a", inside=INSIDE, send_udp=None,
                          on_event=print, local_address="192.0.2.2", **kw)


def test_udp_pair_needs_sender():
    dp = make_datapath("userspace", name="a", ifname="cgw-a", inside=INSIDE, send_udp=None,
                       on_event=print, local_address="192.0.2.2")
    a, _ = pair_mirror(0x1001, 0x2002)
    with pytest.raises(ValueError):
        dp.install(a)


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                    reason="needs root and /dev/net/tun to create a TUN interface")
def test_tun_open_close_leaves_nothing():
    name = f"cgwt{os.getpid() % 100000}"

    async def run():
        dp = make_datapath("userspace", name="t", ifname=name,
                           inside=ipaddress.IPv4Interface("169.254.251.2/30"),
                           send_udp=lambda d, a: None, on_event=print, local_address="192.0.2.2")
        await dp.open()
        assert interface_exists(name)
        with open(f"/sys/class/net/{name}/mtu") as f:  # fits any transform until a pair is installed
            assert f.read().strip() == str(conservative_mtu(4)) == "1406"
        with open(f"/sys/class/net/{name}/operstate") as f:
            assert f.read().strip() in ("up", "unknown")
        v6 = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
        if os.path.exists(v6):  # IPv4-only tunnel: no router solicitations into the data path
            with open(v6) as f:
                assert f.read().strip() == "1"
        await dp.close()
        assert not interface_exists(name)

    asyncio.run(run())


@settings(max_examples=80, deadline=None)
@given(start=st.integers(SEQ_HARD_LIMIT - 2**24 - 40, SEQ_HARD_LIMIT),
       actions=st.lists(st.one_of(st.integers(1, 30), st.just("tick"), st.just("rekey"), st.just("rekey_pending")),
                        max_size=12))
def test_property_outbound_sequence_never_wraps(start, actions):
    """Whatever happens near the end of the 32-bit sequence number: every packet on the wire
    carries a sequence number its SA has not used, in 1..2**32-1 (never 0, never again);
    the rekey request (soft) comes before the pair runs out; running out is reported once;
    a newer pair, once installed, carries the traffic from sequence number 1."""
    h = Harness(clock=lambda: 0.0)
    a, _ = pair_mirror(0x1001, 0x2002, lifetime_seconds=0)
    h.a.install(a)
    h.a.sa_pair(0x1001).outbound.seq = start
    spi_n = [0x3000]
    soft_due_at = None  # len(events) when a tick saw the old pair past the soft limit
    for act in actions:
        if act == "tick":
            old = h.a.sa_pair(0x1001).outbound
            if soft_due_at is None and old.seq >= SEQ_HARD_LIMIT - 2**24:
                soft_due_at = len(h.events_a)
            h.a.check_lifetimes(0.0)
        elif act in ("rekey", "rekey_pending"):
            spi_n[0] += 2
            nxt, _ = pair_mirror(spi_n[0], spi_n[0] + 1, lifetime_seconds=0)
            h.a.install(nxt, outbound=act == "rekey")
        else:
            for _ in range(act):
                h.a.send_inner(ping())
    seen: dict[int, list[int]] = {}
    for data, _ in h.wire_ab:
        seen.setdefault(int.from_bytes(data[:4], "big"), []).append(int.from_bytes(data[4:8], "big"))
    for spi, seqs in seen.items():
        assert all(1 <= s <= SEQ_HARD_LIMIT for s in seqs)
        assert seqs == sorted(set(seqs)), "a sequence number was used twice or out of order"
        if spi != 0x2002:
            assert seqs[0] == 1
    evs = h.events_a
    exhausted = [e for e in evs if isinstance(e, SequenceExhausted)]
    assert len(exhausted) <= 1
    soft = [i for i, e in enumerate(evs) if e == SaExpiring(0x1001, False)]
    assert len(soft) <= 1
    if soft_due_at is not None:  # the tick asked for the rekey, once
        assert soft and soft[0] >= soft_due_at
        if exhausted and evs.index(exhausted[0]) >= soft_due_at:
            assert soft[0] < evs.index(exhausted[0])
    if exhausted:
        old_seqs = seen.get(0x2002, [])
        assert not old_seqs or old_seqs[-1] == SEQ_HARD_LIMIT
    h.close()
