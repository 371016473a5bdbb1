"""Inner packet handling: MSS clamping, DF clearing, fragmentation, selectors."""

import ipaddress

import pytest

from cgwd.esp.inner import (
    InnerDrop,
    Selector,
    checksum,
    clamp_mss,
    clear_df,
    fragment,
    prepare_outbound,
    validate_ipv4,
)

pytest.importorskip("scapy")
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, IPOption_Security  # noqa: E402
from scapy.layers.inet import defragment  # noqa: E402


def _checksums_ok(raw: bytes) -> bool:
    p = IP(raw)
    ref = IP(raw)
    del ref.chksum
    if TCP in ref:
        del ref[TCP].chksum
    ref = IP(bytes(ref))
    ok = p.chksum == ref.chksum
    if TCP in p:
        ok = ok and p[TCP].chksum == ref[TCP].chksum
    return ok


def syn(mss=1460, flags="S", **kw):
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", **kw) /
                 TCP(sport=40000, dport=179, flags=flags,
                     options=[("NOP", None), ("MSS", mss), ("SAckOK", b""), ("WScale", 7)]) / b"")


@pytest.mark.parametrize("flags", ["S", "SA"])
def test_mss_clamped_with_valid_checksum(flags):
    out = clamp_mss(syn(1460, flags), 1379)
    p = IP(out)
    assert dict((k, v) for k, v in p[TCP].options if k == "MSS")["MSS"] == 1379
    assert _checksums_ok(out)


def test_mss_clamp_even_and_odd_offsets():
    for opts in ([("MSS", 1460)], [("NOP", None), ("MSS", 1460)],
                 [("NOP", None), ("NOP", None), ("NOP", None), ("MSS", 1460)]):
        raw = bytes(IP(src="10.9.8.7", dst="10.0.0.2") / TCP(flags="S", options=opts) / b"")
        out = clamp_mss(raw, 1379)
        assert out != raw and _checksums_ok(out)


def test_mss_lower_untouched_and_non_syn_untouched():
    s = syn(1200)
    assert clamp_mss(s, 1379) is s
    ack = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A", options=[("MSS", 1460)]))
    assert clamp_mss(ack, 1379) is ack
    udp = bytes(IP() / UDP() / b"abc")
    assert clamp_mss(udp, 1379) is udp


def test_mss_many_values_checksum():
    for mss in (1380, 1400, 1460, 8960, 65495):
        out = clamp_mss(syn(mss), 1379)
        assert _checksums_ok(out), mss


def test_mss_garbage_options_safe():
    s = bytearray(syn(1460))
    # corrupt option length (0) -> left alone, no exception
    s[20 + 20 + 1] = 0
    clamp_mss(bytes(s), 1379)
    short = syn(1460)[:45]
    assert clamp_mss(short, 1379) == short


def test_clear_df_checksum():
    p = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / ICMP() / b"abc")
    out = clear_df(p)
    assert not IP(out).flags.DF
    assert checksum(out[:20]) == 0
    assert clear_df(out) is out


def test_fragment_reassembles():
    orig = IP(src="10.0.0.1", dst="10.0.0.2", flags="DF", id=4242) / UDP(sport=1, dport=2) / (bytes(range(256)) * 12)
    raw = bytes(orig)
    assert len(raw) > 1436
    frags = fragment(raw, 1436)
    assert len(frags) == 3
    for f in frags:
        assert len(f) <= 1436
        assert checksum(f[:20]) == 0
        assert not IP(f).flags.DF
    assert all((len(f) - 20) % 8 == 0 for f in frags[:-1])
    re = defragment([IP(f) for f in frags])
    assert len(re) == 1
    got = re[0]
    assert bytes(got[UDP]) == bytes(IP(raw)[UDP])
    assert got.src == "10.0.0.1" and got.id == 4242


def test_fragment_copies_only_copied_options():
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_Security(), IPOption_RR()]) /
                UDP() / (b"q" * 3000))
    frags = fragment(raw, 1000)
    first, later = IP(frags[0]), IP(frags[1])
    assert [o.option for o in first.options if o.option] == [2, 7]
    assert [o.option for o in later.options if o.option] == [2]  # security (copied) only
    re = defragment([IP(f) for f in frags])
    assert bytes(re[0][UDP]) == bytes(IP(raw)[UDP])


def test_fragment_of_fragment_keeps_offsets():
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2", id=7) / UDP() / (b"w" * 4000))
    big = fragment(raw, 2500)  # two fragments
    small = [f for b in big for f in fragment(b, 700)]
    assert all(len(f) <= 700 for f in small)
    re = defragment([IP(f) for f in small])
    assert bytes(re[0][UDP]) == bytes(IP(raw)[UDP])


def test_prepare_outbound():
    small = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / ICMP() / b"x")
    out = prepare_outbound(small, 1436, 1379)
    assert isinstance(out, bytes) and not IP(out).flags.DF
    big = bytes(IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / ICMP() / (b"x" * 2000))
    out = prepare_outbound(big, 1436, 1379)
    assert isinstance(out, list) and len(out) == 2


def test_validate():
    p = bytes(IP() / ICMP())
    assert validate_ipv4(p + b"\0\0\0") == p  # TFC padding trimmed
    for bad, why in ((b"", "inner_not_ipv4"), (b"\x60" + bytes(39), "inner_not_ipv4"),
                     (p[:-1], "inner_malformed"), (b"\x44" + p[1:], "inner_malformed")):
        with pytest.raises(InnerDrop) as ei:
            validate_ipv4(bad)
        assert ei.value.reason == why


def test_selector():
    p = bytes(IP(src="10.1.2.3", dst="172.16.0.9") / ICMP())
    assert Selector(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Network("0.0.0.0/0")).match(p)
    assert Selector(ipaddress.IPv4Network("10.1.0.0/16"), ipaddress.IPv4Network("172.16.0.0/12")).match(p)
    assert not Selector(ipaddress.IPv4Network("10.2.0.0/16"), ipaddress.IPv4Network("0.0.0.0/0")).match(p)
    assert not Selector(ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Network("172.17.0.0/16")).match(p)
