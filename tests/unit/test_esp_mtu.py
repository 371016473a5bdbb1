"""Tunnel MTU and MSS follow the negotiated transform and encapsulation: the largest inner
packet leaves as an outer packet of at most 1500 bytes, for every algorithm, encapsulation
and outer family (before: a fixed 1436, which with NAT-T and AES-CBC/SHA-1 gives
1504-byte outer packets)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgwd.esp.mtu import (
    LINK_MTU,
    OUTER_IP_HEADER,
    UDP_HEADER,
    conservative_mtu,
    max_inner,
    mss_for,
    outer_packet_size,
    transforms,
)
from cgwd.esp.packet import EspEncoder
from cgwd.esp.sa import SaPair

pytest.importorskip("scapy")
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402

from test_esp_datapath import Harness, pair_mirror  # noqa: E402

# AWS's published table (IPv4 outside): MTU without / with NAT-T
AWS_TABLE = {
    ("aes128gcm16", None): (1446, 1438),
    ("aes256gcm16", None): (1446, 1438),
    ("aes128", "sha1"): (1438, 1422),
    ("aes256", "sha256"): (1438, 1422),
    ("aes128", "sha512"): (1422, 1406),
    ("aes256", "sha512"): (1422, 1406),
}
ALL = list(transforms())


def test_aws_table():
    for (enc, integ), (plain, natt) in AWS_TABLE.items():
        assert max_inner(enc, integ, udp_encap=False) == plain
        assert max_inner(enc, integ, udp_encap=True) == natt
    # AWS's IPv4 MSS is the MTU minus 40, the IPv6 one 20 bytes less
    assert mss_for(1446, 4) == 1406 and mss_for(1446, 6) == 1386
    assert mss_for(1438, 4) == 1398 and mss_for(1422, 4) == 1382 and mss_for(1406, 4) == 1366


@pytest.mark.parametrize("enc,integ", ALL, ids=[f"{e}-{i}" for e, i in ALL])
@pytest.mark.parametrize("udp", [False, True], ids=["raw", "natt"])
@pytest.mark.parametrize("family", [4, 6], ids=["outer4", "outer6"])
def test_largest_inner_packet_fits_1500_with_the_real_encoder(enc, integ, udp, family):
    """The MTU is the largest inner packet whose outer packet (measured on what the encoder
    really emits, plus outer IP and UDP headers) is at most 1500 bytes: one more byte does
    not fit."""
    mtu = max_inner(enc, integ, udp_encap=udp, outer_family=family)
    a, _ = pair_mirror(0x1001, 0x2002, enc, integ)
    e = EspEncoder(SaPair(a).outbound)
    hdr = OUTER_IP_HEADER[family] + (UDP_HEADER if udp else 0)
    assert hdr + len(e.encrypt(bytes(mtu))) <= LINK_MTU
    assert hdr + len(e.encrypt(bytes(mtu + 1))) > LINK_MTU
    assert outer_packet_size(mtu, enc, integ, udp_encap=udp, outer_family=family) == hdr + len(e.encrypt(bytes(mtu)))


@pytest.mark.parametrize("enc,integ", ALL, ids=[f"{e}-{i}" for e, i in ALL])
@pytest.mark.parametrize("udp", [False, True], ids=["raw", "natt"])
@pytest.mark.parametrize("outer", [("192.0.2.2", "198.51.100.1"), ("2001:db8::2", "2001:db8::1")],
                         ids=["outer4", "outer6"])
def test_datapath_never_sends_an_outer_packet_above_1500(enc, integ, udp, outer):
    """Through the data path with the MTU left to it: IPv4 packets up to 1500 bytes (DF set)
    are fragmented before encryption so that every outer packet fits 1500."""
    h = Harness(a_addr=outer[0], b_addr=outer[1])
    sent = h.raw_sent
    a, _ = pair_mirror(0x1001, 0x2002, enc, integ, a_addr=outer[0], b_addr=outer[1], udp_encap=udp)
    h.a.install(a)
    fam = 6 if ":" in outer[0] else 4
    assert h.a.mtu == max_inner(enc, integ, udp_encap=udp, outer_family=fam)
    assert h.a.mss == h.a.mtu - 40 and h.a.mss6 == h.a.mtu - 60
    hdr = OUTER_IP_HEADER[fam] + (UDP_HEADER if udp else 0)
    for size in (h.a.mtu - 28, h.a.mtu - 27, 1472):
        h.a.send_inner(bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / UDP() / (b"x" * size)))
    wire = [d for d, _ in (h.wire_ab if udp else sent)]
    assert len(wire) == 1 + 2 + 2
    assert max(hdr + len(w) for w in wire) <= LINK_MTU
    h.close()


def test_mtu_follows_the_pair_that_sends_and_a_configured_one_stays():
    h = Harness()
    assert h.a.mtu == conservative_mtu(4) == 1406  # before any pair: fits any transform
    gcm, _ = pair_mirror(0x1001, 0x2002, "aes128gcm16", None, udp_encap=False)
    h.a.install(gcm)
    assert (h.a.mtu, h.a.mss, h.a.mss6) == (1446, 1406, 1386)
    cbc, _ = pair_mirror(0x1003, 0x2004, "aes256", "sha512", udp_encap=True)
    h.a.install(cbc, outbound=False)
    assert h.a.mtu == 1446  # receive-only: the GCM pair still sends
    h.a.activate_outbound(0x1003)
    assert (h.a.mtu, h.a.mss) == (1406, 1366)
    h.a.remove(0x1003)
    assert h.a.mtu == 1446  # back on the GCM pair
    h.close()
    fixed = Harness(mtu=1400, mss=1300)
    fixed.a.install(gcm)
    assert (fixed.a.mtu, fixed.a.mss, fixed.a.mss6) == (1400, 1300, 1280)
    fixed.close()
    capped = Harness(mss=1379)  # a configured MSS is an upper bound
    capped.a.install(cbc)
    assert (capped.a.mtu, capped.a.mss, capped.a.mss6) == (1406, 1366, 1346)
    capped.close()
    v6 = Harness(inside=ipaddress.IPv6Interface("fd00::2/126"), inside_b=ipaddress.IPv6Interface("fd00::1/126"),
                 mss=1359)  # an IPv6 tunnel's configured MSS is the IPv6 one (AWS: 20 below IPv4)
    v6.a.install(pair_mirror(0x1001, 0x2002, "aes128gcm16", None, ts="::/0", udp_encap=False)[0])
    assert (v6.a.mtu, v6.a.mss6, v6.a.mss) == (1446, 1359, 1379)
    v6.close()
    off = Harness(mss=0)
    off.a.install(gcm)
    assert (off.a.mss, off.a.mss6) == (0, 0)
    off.close()


def test_ipv6_inside_never_below_1280():
    h = Harness(inside=ipaddress.IPv6Interface("fd00::2/126"), inside_b=ipaddress.IPv6Interface("fd00::1/126"))
    a, _ = pair_mirror(0x1001, 0x2002, "aes128", "sha512", ts="::/0", a_addr="2001:db8::2", b_addr="2001:db8::1")
    h.a.install(a)
    assert h.a.mtu == 1390 >= 1280
    with pytest.raises(ValueError):
        Harness(inside=ipaddress.IPv6Interface("fd00::2/126"), mtu=1200)
    h.close()


@settings(max_examples=200, deadline=None)
@given(size=st.integers(20, 8000), t=st.sampled_from(ALL), udp=st.booleans(), df=st.booleans())
def test_property_no_outer_packet_above_1500(size, t, udp, df):
    """Any IPv4 packet up to 8000 bytes, any transform, with or without NAT-T: every ESP
    packet fits 1500 bytes outside."""
    h = Harness()
    sent = h.raw_sent
    a, _ = pair_mirror(0x1001, 0x2002, *t, udp_encap=udp)
    h.a.install(a)
    h.a.send_inner(bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="DF" if df else 0) / (b"z" * (size - 20))))
    wire = [d for d, _ in (h.wire_ab if udp else sent)]
    assert wire and max(20 + (8 if udp else 0) + len(d) for d in wire) <= LINK_MTU
    h.close()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or not os.path.exists("/dev/net/tun"),
                    reason="needs root, unshare(1) and /dev/net/tun")
def test_interface_mtu_follows_in_a_namespace():
    """The TUN's MTU (what the kernel uses for PMTU and ICMP) follows the pair."""
    script = r"""
import asyncio, ipaddress, json, os, subprocess
from cgwd.esp.datapath import make_datapath
from cgwd.ipsec_sa import IpsecSaPair
def mtu():  # (sysfs shows the namespace it was mounted in: ask rtnetlink)
    return json.loads(subprocess.run(["ip", "-j", "link", "show", "cgw-m"], capture_output=True).stdout)[0]["mtu"]
async def main():
    dp = make_datapath("userspace", name="m", ifname="cgw-m", inside=ipaddress.IPv4Interface("169.254.10.2/30"),
                       send_udp=lambda d, a: None, on_event=print, local_address="192.0.2.2")
    await dp.open()
    out = [mtu()]
    k = os.urandom(20)
    dp.install(IpsecSaPair(0x1001, 0x2002, "aes128gcm16", None, k, k, local_address="192.0.2.2",
                           remote_address="198.51.100.1", udp_encap=True))
    out.append(mtu())
    await dp.close()
    print(out)
asyncio.run(main())
"""
    p = subprocess.run(["unshare", "-n", sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[1406, 1438]"
