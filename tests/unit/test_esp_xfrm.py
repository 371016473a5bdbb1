"""XFRM netlink messages: byte-identical to iproute2 (6.x) captures, policies
against the real kernel (this kernel accepts policies; ESP states need a kernel with
esp4 and are exercised in QEMU), and the kernel capability probe."""

import errno
import os
import socket

import pytest

from cgwd.esp import xfrm
from cgwd.esp.sa import Lifetime

# Message bodies (after the 16-byte nlmsghdr) captured with
#   strace -e trace=sendmsg -xx -s 8192 <command>

# Packet limits 4278190080 / 4294967295 are SEQ_SOFT_LIMIT / SEQ_HARD_LIMIT (the 32-bit
# sequence number); flag af-unspec lets one tunnel-mode state carry both inner families.
# ip xfrm state add src 192.0.2.2 dst 198.51.100.1 proto esp spi 0xc0000002 reqid 0x63670001 mode tunnel replay-window 1024 flag af-unspec auth-trunc 'hmac(sha1)' 0x0102..14 96 enc 'cbc(aes)' 0x0001..0f encap espinudp 4500 4500 0.0.0.0 if_id 0x63670001 limit packet-soft 4278190080 limit packet-hard 4294967295
NEWSA_CBC_SHA1_ENCAP_IFID = bytes.fromhex(
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000c6336401000000000000000000000000c000000232000000c0000202000000000000000000000000"
    "ffffffffffffffffffffffffffffffff000000ff00000000ffffffff0000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000100676302000100200000000000000060001400686d61632873686131290000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000a0000000600000000102030405060708090a0b0c0d0e0f101112131458000200636263286165732900000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000080000000000102030405060708090a0b0c0d0e0f1c0004000200119411940000000000000000000000000000"
    "000000001c00170020000000000000000000000000000000000000000004000008001f0001006763"
)

# ip xfrm state add src 192.0.2.2 dst 198.51.100.1 proto esp spi 0xc0000003 reqid 0x63670001 mode tunnel flag af-unspec aead 'rfc4106(gcm(aes))' 0x0001..0fcafebabe 128 if_id 0x63670001 limit time-soft 3060 limit time-hard 3600 limit packet-soft 4278190080 limit packet-hard 4294967295
NEWSA_GCM_LIFETIME = bytes.fromhex(
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000c6336401000000000000000000000000c000000332000000c0000202000000000000000000000000"
    "ffffffffffffffffffffffffffffffff000000ff00000000ffffffff00000000f40b000000000000100e000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000100676302000100200000000000000060001200726663343130362867636d28"
    "616573292900000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000a000000080000000000102030405060708090a0b0c0d0e0fcafebabe08001f0001006763"
)

# ip xfrm state add src 2001:db8::2 dst 2001:db8::1 proto esp spi 0xc0000004 reqid 0x63670001 mode tunnel flag af-unspec aead 'rfc4106(gcm(aes))' 0x0001..0fcafebabe 128 if_id 0x63670001 limit packet-soft 4278190080 limit packet-hard 4294967295
NEWSA_GCM_IPV6 = bytes.fromhex(
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000020010db8000000000000000000000001c00000043200000020010db8000000000000000000000002"
    "ffffffffffffffffffffffffffffffff000000ff00000000ffffffff0000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000010067630a000100200000000000000060001200726663343130362867636d28"
    "616573292900000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000a000000080000000000102030405060708090a0b0c0d0e0fcafebabe08001f0001006763"
)

# ip -6 xfrm policy add src ::/0 dst ::/0 dir out tmpl src 192.0.2.2 dst 198.51.100.1 proto esp reqid 0x63670001 mode tunnel if_id 0x63670001
NEWPOLICY_OUT_INNER6 = bytes.fromhex(
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000a00000000000000"
    "0000000000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff0000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000010000000000000044000500c633640100000000000000000000000000000000"
    "3200000002000000c00002020000000000000000000000000100676301000000ffffffffffffffffffffffff08001f00"
    "01006763"
)

# ip -6 xfrm policy delete src ::/0 dst ::/0 dir in if_id 0x63670001
DELPOLICY_IN_INNER6 = bytes.fromhex(
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000a00000000000000"
    "0000000000000000000000000000000008001f0001006763"
)

# ip xfrm state delete src 2001:db8::2 dst 2001:db8::1 proto esp spi 0xc0000004
DELSA_IPV6 = bytes.fromhex(
    "20010db8000000000000000000000001c00000040a00320014000d0020010db8000000000000000000000002"
)

# ip xfrm policy add src 0.0.0.0/0 dst 0.0.0.0/0 dir in tmpl src 198.51.100.1 dst 192.0.2.2 proto esp reqid 0x63670001 mode tunnel if_id 0x63670001
NEWPOLICY_IN = bytes.fromhex(
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000200000000000000"
    "0000000000000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff0000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000044000500c000020200000000000000000000000000000000"
    "3200000002000000c63364010000000000000000000000000100676301000000ffffffffffffffffffffffff08001f00"
    "01006763"
)

# ip xfrm policy delete src 0.0.0.0/0 dst 0.0.0.0/0 dir in if_id 0x63670001
DELPOLICY_IN = bytes.fromhex(
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000200000000000000"
    "0000000000000000000000000000000008001f0001006763"
)

# ip xfrm state delete src 192.0.2.2 dst 198.51.100.1 proto esp spi 0xc0000002
DELSA = bytes.fromhex(
    "c6336401000000000000000000000000c00000020200320014000d00c0000202000000000000000000000000"
)


def body(msg, mtype, flags=xfrm.NLM_F_REQUEST | xfrm.NLM_F_ACK):
    length, t, f = __import__("struct").unpack_from("=IHH", msg)
    assert length == len(msg) and t == mtype and f == flags
    return msg[16:]


def test_newsa_cbc_sha1_encap_matches_iproute2():
    m = xfrm.newsa(src="192.0.2.2", dst="198.51.100.1", spi=0xC0000002, encryption="aes128",
                   integrity="sha1", enc_key=bytes(range(16)), integ_key=bytes(range(1, 21)),
                   icv_bits=96, reqid=0x63670001, replay_window=1024, encap=(4500, 4500),
                   if_id=0x63670001, lifetime=Lifetime())
    assert body(m, xfrm.XFRM_MSG_NEWSA) == NEWSA_CBC_SHA1_ENCAP_IFID


def test_newsa_gcm_lifetime_matches_iproute2():
    m = xfrm.newsa(src="192.0.2.2", dst="198.51.100.1", spi=0xC0000003, encryption="aes128gcm16",
                   integrity=None, enc_key=bytes(range(16)) + bytes.fromhex("cafebabe"),
                   reqid=0x63670001, if_id=0x63670001, lifetime=Lifetime(3060, 3600, 0, 0))
    assert body(m, xfrm.XFRM_MSG_NEWSA) == NEWSA_GCM_LIFETIME


def test_ipv6_messages_match_iproute2():
    """ESP over IPv6 outside addresses; IPv6 inner selectors over an IPv4 outside."""
    m = xfrm.newsa(src="2001:db8::2", dst="2001:db8::1", spi=0xC0000004, encryption="aes128gcm16",
                   integrity=None, enc_key=bytes(range(16)) + bytes.fromhex("cafebabe"),
                   reqid=0x63670001, if_id=0x63670001, lifetime=Lifetime())
    assert body(m, xfrm.XFRM_MSG_NEWSA) == NEWSA_GCM_IPV6
    m = xfrm.newpolicy(direction=xfrm.XFRM_POLICY_OUT, tmpl_src="192.0.2.2", tmpl_dst="198.51.100.1",
                       reqid=0x63670001, if_id=0x63670001, inner_family=socket.AF_INET6)
    assert body(m, xfrm.XFRM_MSG_NEWPOLICY) == NEWPOLICY_OUT_INNER6
    m = xfrm.delpolicy(direction=xfrm.XFRM_POLICY_IN, if_id=0x63670001, inner_family=socket.AF_INET6)
    assert body(m, xfrm.XFRM_MSG_DELPOLICY) == DELPOLICY_IN_INNER6
    m = xfrm.delsa(dst="2001:db8::1", spi=0xC0000004, src="2001:db8::2")
    assert body(m, xfrm.XFRM_MSG_DELSA) == DELSA_IPV6
    st = xfrm.parse_usersa(NEWSA_GCM_IPV6)
    assert (st["family"], st["src"], st["dst"], st["spi"]) == (6, "2001:db8::2", "2001:db8::1", 0xC0000004)


def test_packet_limits_stand_for_the_sequence_number():
    """Every state cgwd installs carries soft/hard packet limits at the 32-bit sequence
    number's end, so the kernel reports it running out (before: unlimited, no event)."""
    from cgwd.esp.sa import SEQ_HARD_LIMIT, SEQ_SOFT_LIMIT

    for lt in (Lifetime(), Lifetime(3060, 3600, 900, 1000)):
        st = xfrm.parse_usersa(xfrm.newsa(src="192.0.2.2", dst="198.51.100.1", spi=0x1234, encryption="aes128",
                                          integrity="sha1", enc_key=bytes(16), integ_key=bytes(20), icv_bits=96,
                                          reqid=0x63670001, lifetime=lt)[16:])
        assert st["soft_packet_limit"] == SEQ_SOFT_LIMIT and st["hard_packet_limit"] == SEQ_HARD_LIMIT


def test_policy_messages_match_iproute2():
    m = xfrm.newpolicy(direction=xfrm.XFRM_POLICY_IN, tmpl_src="198.51.100.1", tmpl_dst="192.0.2.2",
                       reqid=0x63670001, if_id=0x63670001)
    assert body(m, xfrm.XFRM_MSG_NEWPOLICY) == NEWPOLICY_IN
    m = xfrm.delpolicy(direction=xfrm.XFRM_POLICY_IN, if_id=0x63670001)
    assert body(m, xfrm.XFRM_MSG_DELPOLICY) == DELPOLICY_IN


def test_delsa_matches_iproute2():
    m = xfrm.delsa(dst="198.51.100.1", spi=0xC0000002, src="192.0.2.2")
    assert body(m, xfrm.XFRM_MSG_DELSA) == DELSA


def test_kernel_datapath_state_messages():
    """The SA model -> XFRM translation (both directions, ports swapped, keys/ICV)."""
    from cgwd.esp.kernel import KernelDatapath
    from cgwd.ipsec_sa import IpsecSaPair
    import ipaddress

    dp = KernelDatapath(name="t", ifname="cgw-tun1", inside=ipaddress.IPv4Interface("169.254.10.2/30"),
                        send_udp=None, on_event=print, local_address="192.0.2.2")
    pair = IpsecSaPair(0xC0000001, 0xC0000002, "aes128", "sha1", bytes(16), bytes(range(16)),
                       bytes(20), bytes(range(1, 21)), local_address="192.0.2.2",
                       remote_address="198.51.100.1", udp_encap=True, lifetime_seconds=0)
    from cgwd.esp.sa import SaPair

    sp = SaPair(pair, replay_window=1024)
    msg_in, msg_out = dp.state_messages(sp)
    out_expected = xfrm.newsa(src="192.0.2.2", dst="198.51.100.1", spi=0xC0000002, encryption="aes128",
                              integrity="sha1", enc_key=bytes(range(16)), integ_key=bytes(range(1, 21)),
                              icv_bits=96, reqid=dp.tag, encap=(4500, 4500), if_id=dp.tag, lifetime=sp.lifetime)
    assert msg_out == out_expected
    parsed = xfrm.parse_usersa(msg_in[16:])
    assert parsed["spi"] == 0xC0000001 and parsed["dst"] == "192.0.2.2" and parsed["src"] == "198.51.100.1"
    assert parsed["reqid"] == dp.tag and parsed["if_id"] == dp.tag
    assert xfrm.is_ours(dp.tag) and not xfrm.is_ours(1)


def _crc16_twins() -> tuple[str, str]:
    """Two interface names whose CRC-32 agree in the low 16 bits (the old tag scheme)."""
    import zlib

    seen = {}
    for i in range(200000):
        name = f"cgw-t{i}"
        k = zlib.crc32(name.encode()) & 0xFFFF
        if k in seen:
            return seen[k], name
        seen[k] = name
    raise AssertionError("no collision found")


def test_tags_unique_by_construction():
    """Two tunnels whose names collide in a 16-bit hash (the old tag_for) get different tags,
    every tag is in cgwd's range, and a released tag is handed out again."""
    from cgwd.esp.kernel import KernelDatapath
    import ipaddress

    a, b = _crc16_twins()
    kw = dict(inside=ipaddress.IPv4Interface("169.254.10.2/30"), send_udp=None, on_event=print,
              local_address="192.0.2.2")
    da, db = KernelDatapath(name="a", ifname=a, **kw), KernelDatapath(name="b", ifname=b, **kw)
    assert da.tag != db.tag and xfrm.is_ours(da.tag) and xfrm.is_ours(db.tag)
    assert {da.tag, db.tag} <= xfrm.TAGS.in_use()
    tags = xfrm.TagAllocator(first=1, last=3)
    got = [tags.acquire() for _ in range(3)]
    assert len(set(got)) == 3 and all(xfrm.is_ours(t) for t in got)
    with pytest.raises(OSError):
        tags.acquire()
    tags.release(got[1])
    assert tags.acquire() == got[1]
    gone = da.tag
    del da  # a data path never opened gives its tag back when it goes
    import gc

    gc.collect()
    assert gone not in xfrm.TAGS.in_use()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_NET_ADMIN) for NETLINK_XFRM")


@needs_root
def test_policies_against_real_kernel():
    tag = xfrm.TAG_BASE | 0xFFFE
    xs = xfrm.XfrmSocket()
    try:
        for d, s, t in ((xfrm.XFRM_POLICY_OUT, "192.0.2.2", "198.51.100.1"),
                        (xfrm.XFRM_POLICY_IN, "198.51.100.1", "192.0.2.2"),
                        (xfrm.XFRM_POLICY_FWD, "198.51.100.1", "192.0.2.2")):
            xs.request(xfrm.newpolicy(direction=d, tmpl_src=s, tmpl_dst=t, reqid=tag, if_id=tag))
        with pytest.raises(xfrm.XfrmError) as ei:  # duplicate
            xs.request(xfrm.newpolicy(direction=xfrm.XFRM_POLICY_OUT, tmpl_src="192.0.2.2",
                                      tmpl_dst="198.51.100.1", reqid=tag, if_id=tag))
        assert ei.value.errno == errno.EEXIST
        xs.request(xfrm.newpolicy(direction=xfrm.XFRM_POLICY_OUT, tmpl_src="192.0.2.2",
                                  tmpl_dst="198.51.100.9", reqid=tag, if_id=tag, update=True))
        listing = os.popen("ip xfrm policy list").read()
        assert f"if_id {tag:#x}" in listing and "198.51.100.9" in listing
    finally:
        for d in (xfrm.XFRM_POLICY_OUT, xfrm.XFRM_POLICY_IN, xfrm.XFRM_POLICY_FWD):
            try:
                xs.request(xfrm.delpolicy(direction=d, if_id=tag))
            except xfrm.XfrmError:
                pass
        xs.close()
    assert f"if_id {tag:#x}" not in os.popen("ip xfrm policy list").read()


@needs_root
def test_probe_gives_plain_reason():
    from cgwd.esp.datapath import choose_datapath, detect_kernel_support

    ok, why = detect_kernel_support()
    assert isinstance(ok, bool) and why
    kind, reason = choose_datapath("auto")
    assert kind == ("kernel" if ok else "userspace")
    if not ok:
        assert why in reason
    # the probe leaves nothing behind
    assert f"{xfrm.TAG_BASE:#x}"[:6] not in os.popen("ip xfrm state list").read()
    assert "cgwprb" not in os.popen("ip link").read()


@needs_root
def test_probe_on_this_kernel_without_esp():
    cfg = "/proc/config.gz"
    if not os.path.exists(cfg):
        pytest.skip("no /proc/config.gz")
    import gzip

    text = gzip.open(cfg).read().decode()
    if "CONFIG_INET_ESP=y" in text or "CONFIG_INET_ESP=m" in text:
        pytest.skip("kernel has ESP")
    from cgwd.esp.datapath import detect_kernel_support

    ok, why = detect_kernel_support()
    assert not ok and "no ESP" in why


def test_mss_rules_and_stale_parsing():
    from cgwd.esp.kernel import mss_rule_args, stale_mss_rules

    out_rule, in_rule = mss_rule_args("cgw-tun1", 1379)
    assert out_rule[:3] == ["FORWARD", "-o", "cgw-tun1"] and in_rule[:3] == ["FORWARD", "-i", "cgw-tun1"]
    assert out_rule[-4:] == ["-j", "TCPMSS", "--set-mss", "1379"]
    save = """*mangle
:FORWARD ACCEPT [0:0]
-A FORWARD -o cgw-tun1 -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment "cgwd-mss cgw-tun1" -j TCPMSS --set-mss 1300
-A FORWARD -i cgw-tun1 -p tcp -m tcp --tcp-flags SYN,RST SYN -m comment --comment "cgwd-mss cgw-tun1" -j TCPMSS --set-mss 1300
-A FORWARD -o cgw-tun10 -p tcp -m comment --comment "cgwd-mss cgw-tun10" -j TCPMSS --set-mss 1300
-A FORWARD -o eth0 -p tcp -m comment --comment "someone else's cgw-tun1" -j TCPMSS --set-mss 1200
-A FORWARD -o eth0 -m comment --comment "unbalanced
COMMIT
"""
    stale = stale_mss_rules(save, "cgw-tun1")
    assert len(stale) == 2  # only ours, for this interface, whatever MSS they set
    assert stale[0][:3] == ["FORWARD", "-o", "cgw-tun1"] and stale[0][-1] == "1300"
    assert stale_mss_rules(save, "cgw-tun2") == []


@needs_root
def test_mss_clamp_install_and_remove_in_a_namespace():
    """The iptables round trip on this kernel, in a namespace of its own: rules appear on open,
    a leftover set (other MSS) is replaced, and close removes them."""
    import shutil
    import subprocess
    import sys

    if shutil.which("iptables") is None:
        pytest.skip("iptables not installed")
    ns = f"cgwmss{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        script = r"""
import asyncio, ipaddress, subprocess
from cgwd.esp.kernel import KernelDatapath, mss_rule_args
def save():
    return subprocess.run(["iptables-save", "-t", "mangle"], capture_output=True, text=True).stdout
for a in mss_rule_args("cgw-mt1", 1300):  # left by a "crashed" run with another MSS
    subprocess.run(["iptables", "-t", "mangle", "-A", *a], check=True)
dp = KernelDatapath(name="t", ifname="cgw-mt1", inside=ipaddress.IPv4Interface("169.254.10.2/30"),
                    mtu=1436, mss=1379, send_udp=None, on_event=print, local_address="192.0.2.2")
async def main():
    await dp._remove_mss_clamp(stale=True)
    await dp._install_mss_clamp()
    print("UP", save().count("--set-mss 1379"), save().count("--set-mss 1300"), dp.mss_clamp)
    await dp._remove_mss_clamp()
    print("DOWN", save().count("cgwd-mss"))
asyncio.run(main())
"""
        p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        lines = dict(line.split(" ", 1) for line in p.stdout.splitlines())
        up = lines["UP"].split(" ", 2)
        assert up[0] == "2" and up[1] == "0" and up[2].startswith("1379"), p.stdout
        assert lines["DOWN"] == "0", p.stdout
    finally:
        subprocess.run(["ip", "netns", "delete", ns])
