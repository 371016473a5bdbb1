"""IPv6 on the userspace data path: inner IPv6 (next header 41), ESP over IPv6 outside
addresses (raw and UDP-encapsulated), IPv6 MSS clamping, ICMPv6 Packet Too Big.

scapy is the independent implementation: it decrypts what we send (its own ESP code,
tunnel mode, both outer families, NAT-T) and encrypts what we must accept, and it
checks every checksum we write.
"""

from __future__ import annotations

import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgwd.esp.datapath import SaInstallError
from cgwd.esp.inner6 import TokenBucket, clamp_mss6, packet_too_big, upper_layer, validate_ipv6
from cgwd.esp.inner import InnerDrop
from cgwd.esp.mtu import max_inner
from cgwd.esp.packet import NEXT_HEADER_IPV6

pytest.importorskip("scapy")
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6MLReport2,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.inet import TCP  # noqa: E402
from scapy.layers.ipsec import ESP, SecurityAssociation  # noqa: E402

from test_esp_datapath import Harness, pair_mirror  # noqa: E402

INSIDE6_A = ipaddress.IPv6Interface("fd00:10::2/126")
INSIDE6_B = ipaddress.IPv6Interface("fd00:10::1/126")
SCAPY_AUTH = {"sha1": "HMAC-SHA1-96", "sha256": "SHA2-256-128", "sha384": "SHA2-384-192",
              "sha512": "SHA2-512-256", None: "NULL"}


def v6(size=56, src="fd00:10::2", dst="fd00:10::1", **kw):
    return bytes(IPv6(src=src, dst=dst, **kw) / ICMPv6EchoRequest(data=b"p" * size))


def scapy_sa(pair, direction, udp=False, outer6=False):
    """scapy's SA for the direction of ``pair`` we send ("out") or receive ("in")."""
    spi = pair.spi_out if direction == "out" else pair.spi_in
    key = pair.enc_key_out if direction == "out" else pair.enc_key_in
    ikey = pair.integ_key_out if direction == "out" else pair.integ_key_in
    src, dst = ((pair.local_address, pair.remote_address) if direction == "out"
                else (pair.remote_address, pair.local_address))
    th = IPv6(src=src, dst=dst) if outer6 else IP(src=src, dst=dst)
    return SecurityAssociation(ESP, spi=spi, crypt_algo="AES-GCM" if pair.integrity is None else "AES-CBC",
                               crypt_key=key, auth_algo=SCAPY_AUTH[pair.integrity], auth_key=ikey or None,
                               tunnel_header=th, nat_t_header=UDP(sport=4500, dport=4500) if udp else None)


def h6(**kw):
    kw.setdefault("inside", INSIDE6_A)
    kw.setdefault("inside_b", INSIDE6_B)
    return Harness(**kw)


TRANSFORMS = [("aes128", "sha1"), ("aes256", "sha256"), ("aes128", "sha512"), ("aes128gcm16", None),
              ("aes256gcm16", None)]
OUTERS = [("192.0.2.2", "198.51.100.1"), ("2001:db8::2", "2001:db8:1::1")]


@pytest.mark.parametrize("enc,integ", TRANSFORMS)
@pytest.mark.parametrize("udp", [True, False], ids=["udp-encap", "raw"])
@pytest.mark.parametrize("outer", OUTERS, ids=["outer4", "outer6"])
def test_scapy_decrypts_our_ipv6_inner(enc, integ, udp, outer):
    """What we send for an inner IPv6 packet is ESP tunnel mode with next header 41, as an
    independent implementation reads it, over either outer family, with or without NAT-T."""
    h = h6(a_addr=outer[0], b_addr=outer[1])
    sent = h.raw_sent
    a, _ = pair_mirror(0x1001, 0x2002, enc, integ, a_addr=outer[0], b_addr=outer[1], ts="::/0", udp_encap=udp)
    h.a.install(a)
    pkt = v6(100)
    h.a.send_inner(pkt)
    if udp:
        (esp, dest), = h.wire_ab
        assert dest == (outer[1], 4500)
    else:
        (esp, dest), = sent
        assert dest == outer[1]
    sa = scapy_sa(a, "out", udp=udp, outer6=":" in outer[0])
    wire = sa.tunnel_header.copy()
    if udp:
        wire = wire / UDP(sport=4500, dport=4500)
    got = sa.decrypt(wire.__class__(bytes(wire / ESP(esp))))
    assert bytes(got) == pkt
    assert esp[:4] == (0x2002).to_bytes(4, "big")
    h.close()


@pytest.mark.parametrize("enc,integ", TRANSFORMS)
@pytest.mark.parametrize("outer", OUTERS, ids=["outer4", "outer6"])
def test_we_decrypt_scapys_ipv6_inner(enc, integ, outer):
    h = h6(a_addr=outer[0], b_addr=outer[1])
    a, _ = pair_mirror(0x1001, 0x2002, enc, integ, a_addr=outer[0], b_addr=outer[1], ts="::/0")
    h.a.install(a)
    sa = scapy_sa(a, "in", udp=True, outer6=":" in outer[0])
    for i in range(3):
        pkt = v6(20 + i, src="fd00:10::1", dst="fd00:10::2")
        enc_pkt = sa.encrypt(IPv6(pkt))
        h.a.receive_esp(bytes(enc_pkt[ESP]), (outer[1], 4500))
        assert h.tun_a() == pkt
    st_ = h.a.stats()["sas"][0]
    assert st_["packets_in"] == 3 and not st_["drops"] and st_["auth_failures"] == 0
    h.close()


def test_round_trip_and_mss_clamp_ipv6():
    h = h6()
    a, b = pair_mirror(0x1001, 0x2002, ts="::/0")
    h.a.install(a)
    h.b.install(b)
    assert h.a.mtu == 1422 and h.a.mss6 == 1362  # AES-CBC/SHA-1 over NAT-T, IPv4 outside
    syn = bytes(IPv6(src="fd00:10::2", dst="fd00:99::5") / TCP(flags="S", options=[("MSS", 1440), ("SAckOK", b"")]))
    h.a.send_inner(syn)
    h.deliver_ab()
    got = IPv6(h.tun_b())
    assert dict(o for o in got[TCP].options if o[0] == "MSS")["MSS"] == 1362
    want = got[TCP].chksum
    del got[TCP].chksum
    assert IPv6(bytes(got))[TCP].chksum == want  # scapy agrees with our incremental checksum
    # and the other way (SYN-ACK from the VPC side clamped on the way in)
    sa = bytes(IPv6(src="fd00:99::5", dst="fd00:10::2") / TCP(flags="SA", options=[("MSS", 8940)]))
    h.b.send_inner(sa)
    h.deliver_ba()
    got = IPv6(h.tun_a())
    assert dict(o for o in got[TCP].options if o[0] == "MSS")["MSS"] == 1362
    h.close()


def test_mss_clamp_behind_extension_headers_and_not_on_later_fragments():
    pkt = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                / TCP(flags="S", options=[("MSS", 1460)]))
    got = IPv6(clamp_mss6(pkt, 1300))
    assert dict(o for o in got[TCP].options if o[0] == "MSS")["MSS"] == 1300
    want = got[TCP].chksum
    del got[TCP].chksum
    assert IPv6(bytes(got))[TCP].chksum == want
    later = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(offset=10, nh=6) / (b"\x02" * 40))
    assert clamp_mss6(later, 1300) == later and upper_layer(later) is None
    first = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(offset=0, m=1)
                  / TCP(flags="S", options=[("MSS", 1460)]))
    assert clamp_mss6(first, 1300) != first


def test_too_big_answered_with_packet_too_big_rate_limited():
    """An IPv6 packet above the tunnel MTU is not fragmented and not dropped in silence: an
    ICMPv6 Packet Too Big with the tunnel MTU goes back into the TUN, at most PTB_BURST at
    once and PTB_RATE per second of the (injected) clock."""
    now = [1000.0]
    h = h6(clock=lambda: now[0])
    a, _ = pair_mirror(0x1001, 0x2002, ts="::/0")
    h.a.install(a)
    mtu = h.a.mtu
    assert mtu == max_inner("aes128", "sha1", udp_encap=True)
    fits = v6(mtu - 48, src="fd00:200::10", dst="fd00:99::5")
    assert len(fits) == mtu
    h.a.send_inner(fits)
    assert len(h.wire_ab) == 1
    big = v6(mtu - 47, src="fd00:200::10", dst="fd00:99::5")
    h.a.send_inner(big)
    assert len(h.wire_ab) == 1  # not sent
    ptb = IPv6(h.tun_a())
    assert ptb.src == "fd00:10::2" and ptb.dst == "fd00:200::10" and ptb.hlim == 255
    assert ptb[ICMPv6PacketTooBig].mtu == mtu and len(bytes(ptb)) <= 1280
    want = ptb[ICMPv6PacketTooBig].cksum
    del ptb[ICMPv6PacketTooBig].cksum
    assert IPv6(bytes(ptb))[ICMPv6PacketTooBig].cksum == want
    assert bytes(ptb[ICMPv6PacketTooBig].payload)[:40] == big[:40]
    for _ in range(30):
        h.a.send_inner(big)
    st_ = h.a.stats()
    assert st_["icmp6_packet_too_big"] == 10  # the burst
    assert st_["drops"]["icmp6_rate_limited"] == 21
    assert st_["sas"][0]["drops"]["too_big"] == 31
    now[0] += 1.0
    for _ in range(30):
        h.a.send_inner(big)
    assert h.a.stats()["icmp6_packet_too_big"] == 20  # PTB_RATE more after one second
    h.close()


def test_no_packet_too_big_for_errors_or_unspecified_sources():
    src = ipaddress.IPv6Address("fd00:10::2").packed
    err = bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6DestUnreach() / (b"x" * 1500))
    assert packet_too_big(err, 1400, src) is None
    unspec = bytes(IPv6(src="::", dst="fd00::2") / (b"x" * 1500))
    assert packet_too_big(unspec, 1400, src) is None
    echo = bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest(data=b"x" * 1500))
    assert packet_too_big(echo, 1400, src) is not None


def test_token_bucket():
    tb = TokenBucket(2.0, 3)
    assert [tb.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert tb.take(0.4) is False and tb.take(0.5) is True
    assert tb.take(100.0) and tb.take(100.0) and tb.take(100.0) and not tb.take(100.0)


def test_multicast_is_ignored_not_dropped_and_wrong_family_counted():
    """MLD reports (and router solicitations, should the kernel send any) are multicast:
    they are not tunnelled and do not show up as drops."""
    h = h6()
    a, _ = pair_mirror(0x1001, 0x2002, ts="::/0")
    h.a.install(a)
    h.a.send_inner(bytes(IPv6(src="fe80::1", dst="ff02::16", hlim=1) / ICMPv6MLReport2()))
    h.a.send_inner(bytes(IPv6(src="fe80::1", dst="ff02::2", hlim=255) / b"\x85\x00\x00\x00\x00\x00\x00\x00"))
    h.a.send_inner(bytes(IP(src="169.254.10.2", dst="169.254.10.1") / UDP()))
    st_ = h.a.stats()
    assert h.wire_ab == []
    assert st_["ignored"] == {"ipv6_multicast": 2}
    assert st_["drops"] == {"wrong_family": 1}
    h.close()


def test_inbound_selectors_ipv6():
    """b accepts from a only what its selectors say: src in its remote_ts, dst in its local_ts."""
    from cgwd.ipsec_sa import IpsecSaPair

    h = h6()
    a, b = pair_mirror(0x1001, 0x2002, ts="::/0")  # a sends anything
    h.a.install(a)
    h.b.install(IpsecSaPair(b.spi_in, b.spi_out, b.encryption, b.integrity, b.enc_key_in, b.enc_key_out,
                            b.integ_key_in, b.integ_key_out, local_address=b.local_address,
                            remote_address=b.remote_address, udp_encap=True,
                            local_ts=ipaddress.ip_network("fd00:99::/64"),
                            remote_ts=ipaddress.ip_network("fd00:200::/64")))
    h.a.send_inner(v6(10, src="fd00:200::7", dst="fd00:99::5"))
    h.a.send_inner(v6(10, src="fd00:300::7", dst="fd00:99::5"))
    h.a.send_inner(v6(10, src="fd00:200::7", dst="fd00:98::5"))
    h.deliver_ab()
    assert h.tun_b() == v6(10, src="fd00:200::7", dst="fd00:99::5")
    assert h.tun_b() == b""
    assert h.b.stats()["sas"][0]["drops"] == {"ts_mismatch": 2}
    h.close()


def test_ipv4_in_an_ipv6_pair_is_counted():
    """An authenticated IPv4 packet on an IPv6 SA pair (next header 4) is refused."""
    from cgwd.esp.packet import EspEncoder
    from cgwd.esp.sa import SaPair

    h = h6()
    a, b = pair_mirror(0x1001, 0x2002, ts="::/0")
    h.b.install(b)
    enc = EspEncoder(SaPair(a).outbound)
    h.b.receive_esp(enc.encrypt(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP()), 4), ("192.0.2.2", 4500))
    h.b.receive_esp(enc.encrypt(v6(5, src="fd00:10::2"), NEXT_HEADER_IPV6), ("192.0.2.2", 4500))
    assert h.b.stats()["sas"][0]["drops"] == {"wrong_family": 1}
    assert h.b.stats()["sas"][0]["packets_in"] == 2
    h.close()


def test_pair_of_the_other_inner_family_is_refused():
    """The interface carries one inner family (AWS: one per VPN connection): a pair whose
    selectors are of the other family is refused with a reason, never half-installed."""
    h = Harness()  # IPv4 inside
    a, _ = pair_mirror(0x1001, 0x2002, ts="::/0")
    with pytest.raises(SaInstallError) as ei:
        h.a.install(a)
    assert ei.value.reason == "wrong_inner_family" and ei.value.spi_in == 0x1001
    assert h.a.stats()["sas"] == []
    h6_ = h6()
    a4, _ = pair_mirror(0x1001, 0x2002)
    with pytest.raises(SaInstallError) as ei:
        h6_.a.install(a4)
    assert ei.value.reason == "wrong_inner_family"
    h.close()
    h6_.close()


def test_validate_ipv6():
    p = v6(10)
    assert validate_ipv6(p + b"\0" * 7) == p  # TFC padding trimmed
    for bad in (p[:39], b"\x40" + p[1:], p[:-1]):
        with pytest.raises(InnerDrop):
            validate_ipv6(bad)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(min_size=0, max_size=1300), nh=st.sampled_from([17, 58, 59, 6]),
       hlim=st.integers(0, 255), tc=st.integers(0, 255))
def test_property_ipv6_round_trip(payload, nh, hlim, tc):
    """Whatever IPv6 packet fits the tunnel comes out of the other end as it went in
    (TCP SYNs aside, whose MSS may be lowered)."""
    h = h6()
    a, b = pair_mirror(0x1001, 0x2002, "aes128gcm16", None, ts="::/0")
    h.a.install(a)
    h.b.install(b)
    pkt = bytes(IPv6(src="fd00:200::1", dst="fd00:99::1", nh=nh, hlim=hlim, tc=tc) / payload)
    h.a.send_inner(pkt)
    h.deliver_ab()
    out = h.tun_b()
    if len(pkt) > h.a.mtu:
        assert out == b"" and h.a.stats()["sas"][0]["drops"] == {"too_big": 1}
    elif nh == 6 and len(payload) >= 14 and payload[13] & 2:
        assert len(out) == len(pkt)
    else:
        assert out == pkt
    h.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=1500))
def test_fuzz_ipv6_outbound_never_raises(data):
    h = h6()
    a, _ = pair_mirror(0x1001, 0x2002, ts="::/0")
    h.a.install(a)
    for pkt in (data, b"\x60" + data, bytes(IPv6(src="fd00::1", dst="fd00::2")) + data):
        h.a.send_inner(pkt)
    st_ = h.a.stats()
    assert "internal_error" not in st_["drops"]
    h.close()


def test_udp_over_ipv6_outside_uses_the_ipv6_peer():
    h = h6(a_addr="2001:db8::2", b_addr="2001:db8:1::1")
    a, b = pair_mirror(0x1001, 0x2002, a_addr="2001:db8::2", b_addr="2001:db8:1::1", ts="::/0")
    h.a.install(a)
    h.b.install(b)
    h.a.send_inner(v6(30))
    assert h.wire_ab[0][1] == ("2001:db8:1::1", 4500)
    assert h.a.mtu == max_inner("aes128", "sha1", udp_encap=True, outer_family=6) == 1406
    h.deliver_ab()
    assert h.tun_b() == v6(30)
    h.close()


def test_raw_esp_between_two_real_sockets_over_ipv6_loopback():
    """Plain ESP (IP protocol 50) over IPv6 through real raw sockets, in a namespace of the
    test's own (``unshare -n``: nothing else's ESP on its loopback)."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1)")
    script = r"""
import ipaddress, json, os, select, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["ip", "-6", "addr", "add", "2001:db8::2/128", "dev", "lo"], check=True)
subprocess.run(["ip", "-6", "addr", "add", "2001:db8::3/128", "dev", "lo"], check=True)
from cgwd.esp.datapath import make_datapath
from cgwd.esp.espsock import EspSockets
from cgwd.ipsec_sa import IpsecSaPair
k = [os.urandom(16) for _ in range(2)] + [os.urandom(20) for _ in range(2)]
ts = dict(local_ts=ipaddress.ip_network("::/0"), remote_ts=ipaddress.ip_network("::/0"))
pa = IpsecSaPair(0x1001, 0x2002, "aes128", "sha1", k[0], k[1], k[2], k[3], local_address="2001:db8::2",
                 remote_address="2001:db8::3", **ts)
pb = IpsecSaPair(0x2002, 0x1001, "aes128", "sha1", k[1], k[0], k[3], k[2], local_address="2001:db8::3",
                 remote_address="2001:db8::2", **ts)
socks = EspSockets()
dps = []
for name, addr, inside, p in (("a", "2001:db8::2", "fd00:10::2/126", pa), ("b", "2001:db8::3", "fd00:10::1/126", pb)):
    dp = make_datapath("userspace", name=name, ifname="cgw-" + name, inside=ipaddress.ip_interface(inside),
                       send_udp=None, on_event=print, local_address=addr, esp_sockets=socks)
    r, w = os.pipe()
    dp._tun_fd = w
    dp.install(p)
    dps.append((dp, r))
from scapy.layers.inet6 import IPv6, ICMPv6EchoRequest
pkt = bytes(IPv6(src="fd00:10::2", dst="fd00:10::1") / ICMPv6EchoRequest(data=b"v6raw"))
dps[0][0].send_inner(pkt)
sb = socks.get("2001:db8::3")
select.select([sb.sock], [], [], 5)
sb.on_readable()
got = os.read(dps[1][1], 65536)
print(json.dumps({"ok": got == pkt, "b": dps[1][0].stats()["sas"][0]["packets_in"], "socks": socks.stats()}))
"""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.run(["unshare", "-n", sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    import json

    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["ok"] and res["b"] == 1
    assert set(res["socks"]) == {"2001:db8::2", "2001:db8::3"}
