"""IKEv2 codec: round trips (hypothesis), every length/count/padding check with its specific
error, the critical bit, SK protection (CBC+HMAC, GCM per RFC 5282), and scapy's independent
IKEv2 decoder reading what cgwd encodes."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgwd.ike.v2.codec import (
    AuthPayload,
    DeletePayload,
    Header,
    IdPayload,
    Ikev2DecodeError,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    SkPayload,
    TrafficSelector,
    Transform,
    TsPayload,
    UnknownPayload,
    VendorPayload,
    decode_header,
    decode_message,
    decode_payloads,
    encode_message,
    encode_payloads,
)
from cgwd.ike.v2.constants import Exchange, Flag, Notify, PayloadType, Protocol, TransformType, TsType
from cgwd.ike.v2.protect import Ikev2IntegrityError, SkCipher, enc_key_len

SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("1112131415161718")


def hdr(exchange=Exchange.IKE_AUTH, flags=Flag.INITIATOR, mid=1, spi_r=SPI_R) -> Header:
    return Header(SPI_I, spi_r, 0, int(exchange), int(flags), mid)


def roundtrip(payloads):
    msg = encode_message(hdr(), payloads)
    h, got = decode_message(msg)
    assert h.length == len(msg)
    return got


# --------------------------------------------------------------------------- strategies

ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


@st.composite
def selectors(draw):
    v6 = draw(st.booleans())
    a, b = sorted([draw(ipv6 if v6 else ipv4), draw(ipv6 if v6 else ipv4)])
    p1, p2 = sorted([draw(st.integers(0, 65535)), draw(st.integers(0, 65535))])
    return TrafficSelector(TsType.IPV6_ADDR_RANGE if v6 else TsType.IPV4_ADDR_RANGE, draw(st.integers(0, 255)),
                           p1, p2, a, b)


transforms = st.builds(Transform, st.sampled_from(list(TransformType)), st.integers(0, 65535),
                       st.one_of(st.none(), st.integers(0, 65535)))


@st.composite
def sa_payloads(draw):
    n = draw(st.integers(1, 5))
    props = []
    for i in range(n):
        spi = draw(st.sampled_from([b"", b"\x01\x02\x03\x04", b"\x09" * 8]))
        props.append(Proposal(i + 1, draw(st.sampled_from(list(Protocol))), spi,
                              draw(st.lists(transforms, min_size=1, max_size=8))))
    return SaPayload(props)


payloads = st.one_of(
    sa_payloads(),
    st.builds(KePayload, st.integers(0, 65535), st.binary(min_size=1, max_size=600)),
    st.builds(NoncePayload, st.binary(min_size=16, max_size=256)),
    st.builds(IdPayload, st.sampled_from([2, 3, 11]), st.binary(min_size=1, max_size=64),
              st.sampled_from([PayloadType.IDI, PayloadType.IDR])),
    st.builds(IdPayload, st.just(1), st.binary(min_size=4, max_size=4)),
    st.builds(AuthPayload, st.integers(0, 255), st.binary(min_size=1, max_size=64)),
    st.builds(NotifyPayload, st.integers(0, 65535), st.integers(0, 3),
              st.sampled_from([b"", b"\x00\x00\x00\x01", b"\x01" * 8]), st.binary(max_size=64)),
    st.builds(DeletePayload, st.just(int(Protocol.ESP)), st.lists(st.binary(min_size=4, max_size=4), min_size=1,
                                                                 max_size=8)),
    st.builds(DeletePayload, st.just(int(Protocol.IKE))),
    st.builds(VendorPayload, st.binary(max_size=40)),
    st.builds(TsPayload, st.lists(selectors(), min_size=1, max_size=4), st.sampled_from([PayloadType.TSI,
                                                                                          PayloadType.TSR])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(payloads, min_size=0, max_size=8))
def test_every_payload_round_trips(ps):
    got = roundtrip(ps)
    assert len(got) == len(ps)
    for a, b in zip(ps, got):
        assert type(a) is type(b)
        assert a.encode_body() == b.encode_body()
        assert a.type == b.type


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_errors(data):
    try:
        decode_message(data)
    except Ikev2DecodeError:
        pass


# --------------------------------------------------------------------------- header checks


def test_header_fields_and_flags():
    msg = encode_message(hdr(Exchange.CREATE_CHILD_SA, Flag.INITIATOR | Flag.RESPONSE, mid=7), [])
    h = decode_header(msg)
    assert (h.spi_i, h.spi_r, h.exchange, h.message_id, h.length) == (SPI_I, SPI_R, 36, 7, 28)
    assert h.is_response and h.from_initiator
    assert msg[17] == 0x20


@pytest.mark.parametrize("mutate,reason", [
    (lambda m: m[:27], "short_header"),
    (lambda m: m[:17] + b"\x10" + m[18:], "version"),
    (lambda m: m[:24] + struct.pack("!I", 99) + m[28:], "length"),
    (lambda m: m + b"\x00", "length"),
    (lambda m: bytes(8) + m[8:], "zero_spi"),
])
def test_header_errors(mutate, reason):
    msg = encode_message(hdr(), [NoncePayload(b"n" * 16)])
    with pytest.raises(Ikev2DecodeError) as e:
        decode_message(mutate(msg))
    assert e.value.reason == reason


# --------------------------------------------------------------------------- payload checks


def body_error(ptype: int, body: bytes) -> str:
    data = struct.pack("!BBH", 0, 0, 4 + len(body)) + body
    with pytest.raises(Ikev2DecodeError) as e:
        decode_payloads(ptype, data)
    return e.value.reason


def test_chain_length_errors():
    good = encode_payloads([NoncePayload(b"x" * 16)])[1]
    with pytest.raises(Ikev2DecodeError) as e:
        decode_payloads(PayloadType.NONCE, good[:3])
    assert e.value.reason == "payload_short"
    bad = good[:2] + struct.pack("!H", 3) + good[4:]
    with pytest.raises(Ikev2DecodeError) as e:
        decode_payloads(PayloadType.NONCE, bad)
    assert e.value.reason == "payload_length"
    bad = good[:2] + struct.pack("!H", len(good) + 1) + good[4:]
    with pytest.raises(Ikev2DecodeError) as e:
        decode_payloads(PayloadType.NONCE, bad)
    assert e.value.reason == "payload_length"
    with pytest.raises(Ikev2DecodeError) as e:
        decode_payloads(PayloadType.NONCE, good + b"\x00\x00")
    assert e.value.reason == "trailing_data"
    chain = encode_payloads([VendorPayload(b"")] * 65)[1]
    with pytest.raises(Ikev2DecodeError) as e:
        decode_payloads(PayloadType.VENDOR, chain)
    assert e.value.reason == "too_many_payloads"


def _sa_body(props: list[bytes]) -> bytes:
    return b"".join(props)


def _prop(num=1, proto=1, spi=b"", transforms=None, last=0, length=None, count=None):
    trs = transforms if transforms is not None else [Transform(1, 12, 128).encode(True)]
    body = b"".join(trs)
    ln = length if length is not None else 8 + len(spi) + len(body)
    return struct.pack("!BBHBBBB", last, 0, ln, num, proto, len(spi), len(trs) if count is None else count) + spi + body


@pytest.mark.parametrize("body,reason", [
    (b"", "sa_empty"),
    (_prop()[:7], "proposal_short"),
    (_prop(last=2), "proposal_last"),
    (_prop(last=1), "proposal_last"),
    (_prop(length=200), "proposal_length"),
    (_prop(num=0), "proposal_number"),
    (_prop(num=2, last=2) + _prop(num=3), "proposal_number"),
    (_prop(num=1, last=2) + _prop(num=3), "proposal_number"),
    (_prop(spi=b"abc"), "proposal_spi_size"),
    (_prop(count=0), "transform_count"),
    (_prop(transforms=[Transform(1, 12).encode(False)], count=2), "transform_short"),
    (_prop(transforms=[Transform(1, 12).encode(False)]), "transform_last"),
    (_prop(transforms=[struct.pack("!BBHBBH", 0, 0, 4, 1, 0, 12)]), "transform_length"),
    (_prop(transforms=[struct.pack("!BBHBBH", 0, 0, 10, 1, 0, 12) + b"\x80\x0e"]), "attribute_short"),
    (_prop(transforms=[struct.pack("!BBHBBH", 0, 0, 12, 1, 0, 12) + b"\x00\x0e\x00\x09"]), "attribute_length"),
    (_prop() + _prop(num=2), "sa_trailing"),
])
def test_sa_errors(body, reason):
    assert body_error(PayloadType.SA, body) == reason


def test_transform_attributes():
    # key length (TV), and an unknown attribute marks the transform unacceptable
    t = struct.pack("!BBHBBH", 0, 0, 16, 1, 0, 12) + b"\x80\x0e\x00\x80" + b"\x80\x63\x00\x01"
    sa = decode_payloads(PayloadType.SA, struct.pack("!BBH", 0, 0, 4 + 8 + len(t)) + _prop(transforms=[t]))[0]
    tr = sa.proposals[0].transforms[0]
    assert tr.key_length == 128 and tr.unknown_attributes


@pytest.mark.parametrize("ptype,body,reason", [
    (PayloadType.KE, b"\x00\x02\x00\x00", "ke_short"),
    (PayloadType.NONCE, b"n" * 15, "nonce_length"),
    (PayloadType.NONCE, b"n" * 257, "nonce_length"),
    (PayloadType.IDI, b"\x01\x00\x00\x00\x01\x02\x03", "id_ipv4_length"),
    (PayloadType.IDR, b"\x05\x00\x00\x00" + bytes(4), "id_ipv6_length"),
    (PayloadType.IDI, b"\x02\x00\x00\x00", "id_short"),
    (PayloadType.AUTH, b"\x02\x00\x00\x00", "auth_short"),
    (PayloadType.NOTIFY, b"\x00\x00\x40", "notify_short"),
    (PayloadType.NOTIFY, b"\x03\x03\x40\x09abc", "notify_spi_size"),
    (PayloadType.NOTIFY, b"\x03\x04\x40\x09ab", "notify_spi_size"),
    (PayloadType.DELETE, b"\x03\x04\x00", "delete_short"),
    (PayloadType.DELETE, b"\x01\x08\x00\x01" + bytes(8), "delete_ike_spis"),
    (PayloadType.DELETE, b"\x03\x08\x00\x01" + bytes(8), "delete_spi_size"),
    (PayloadType.DELETE, b"\x03\x04\x00\x02" + bytes(4), "delete_count"),
    (PayloadType.DELETE, b"\x03\x04\x00\x00", "delete_count"),
    (PayloadType.TSI, b"\x01\x00\x00", "ts_short"),
    (PayloadType.TSI, b"\x00\x00\x00\x00", "ts_count"),
    (PayloadType.TSR, b"\x01\x00\x00\x00\x07\x00\x00\x10", "ts_selector_short"),
    (PayloadType.TSI, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 9, 0, 16, 0, 65535) + bytes(8), "ts_type"),
    (PayloadType.TSI, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 7, 0, 15, 0, 65535) + bytes(8), "ts_selector_length"),
    (PayloadType.TSI, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 7, 0, 16, 0, 65535) + b"\x0a\0\0\x02\x0a\0\0\x01",
     "ts_range"),
    (PayloadType.TSI, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 7, 0, 16, 9, 8) + bytes(8), "ts_range"),
    (PayloadType.TSI, b"\x01\x00\x00\x00" + struct.pack("!BBHHH", 7, 0, 16, 0, 65535) + bytes(8) + b"x", "ts_trailing"),
])
def test_payload_errors(ptype, body, reason):
    assert body_error(ptype, body) == reason


def test_ts_ipv4_and_ipv6_ranges():
    net4 = ipaddress.ip_network("10.1.0.0/16")
    net6 = ipaddress.ip_network("2001:db8::/32")
    got = roundtrip([TsPayload([TrafficSelector.from_network(net4), TrafficSelector.from_network(net6)])])[0]
    s4, s6 = got.selectors
    assert (s4.ts_type, s4.start, s4.end) == (TsType.IPV4_ADDR_RANGE, net4.network_address, net4.broadcast_address)
    assert (s6.ts_type, s6.start, s6.end) == (TsType.IPV6_ADDR_RANGE, net6.network_address, net6.broadcast_address)
    assert (s4.start_port, s4.end_port, s4.ip_protocol) == (0, 65535, 0)


def test_critical_bit_of_unknown_payloads():
    unknown = UnknownPayload(99, b"whatever")
    got = roundtrip([unknown, NoncePayload(b"n" * 16)])
    assert isinstance(got[0], UnknownPayload) and got[0].type == 99 and not got[0].critical
    unknown.critical = True
    msg = encode_message(hdr(), [unknown])
    with pytest.raises(Ikev2DecodeError) as e:
        decode_message(msg)
    assert e.value.reason == "unsupported_critical" and e.value.payload_type == 99
    # a known payload cgwd does not use (CERTREQ) with the critical bit is not "unsupported"
    certreq = UnknownPayload(PayloadType.CERTREQ, b"\x04", critical=True)
    assert roundtrip([certreq])[0].type == PayloadType.CERTREQ


def test_sk_must_be_last():
    sk = SkPayload(PayloadType.NONCE, b"x" * 40)
    first, body = encode_payloads([sk, NoncePayload(b"n" * 16)])
    with pytest.raises(Ikev2DecodeError) as e:
        decode_payloads(first, body)
    assert e.value.reason == "sk_not_last"


# --------------------------------------------------------------------------- SK protection

ALGS = [("aes128", "sha1"), ("aes256", "sha256"), ("aes128", "sha384"), ("aes256", "sha512"),
        ("aes128gcm16", None), ("aes256gcm16", None)]


def cipher(enc, integ, salt=0):
    from cgwd.ike.v2.protect import integ_key_len

    ek = bytes((i * 7 + salt) & 0xFF for i in range(enc_key_len(enc)))
    ik = bytes((i * 3 + 1) & 0xFF for i in range(integ_key_len(integ)))
    counter = iter(range(10**6))
    return SkCipher(enc, integ, ek, ik, lambda n: bytes([next(counter) & 0xFF]) * n)


def protected(enc, integ, payloads):
    c = cipher(enc, integ)
    msg = c.protect(hdr(), payloads)
    return c, msg


@pytest.mark.parametrize("enc,integ", ALGS)
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 200])
def test_sk_round_trip(enc, integ, n):
    ps = [NoncePayload(b"N" * 16), VendorPayload(b"v" * n)] if n else []
    c, msg = protected(enc, integ, ps)
    h, outer = decode_message(msg)
    assert h.next_payload == PayloadType.SK and isinstance(outer[-1], SkPayload)
    got = cipher(enc, integ).unprotect(msg, outer[-1])
    assert [p.encode_body() for p in got] == [p.encode_body() for p in ps]
    if integ:  # CBC: block-aligned ciphertext, ICV truncated
        icv = {"sha1": 12, "sha256": 16, "sha384": 24, "sha512": 32}[integ]
        assert (len(msg) - 28 - 4 - 16 - icv) % 16 == 0
    else:  # GCM: 8-byte IV, 16-byte ICV, no padding beyond the pad length octet
        inner_len = len(encode_payloads(ps)[1])
        assert len(msg) == 28 + 4 + 8 + inner_len + 1 + 16


@pytest.mark.parametrize("enc,integ", ALGS)
def test_sk_tamper_anywhere_fails_integrity(enc, integ):
    c, msg = protected(enc, integ, [NoncePayload(b"N" * 32)])
    for i in [0, 8, 16, 19, 23, 27, 28, 31, 32, 40, len(msg) - 1]:
        bad = bytearray(msg)
        bad[i] ^= 0x01
        bad = bytes(bad)
        try:
            h, outer = decode_message(bad)
        except Ikev2DecodeError:
            continue  # the header no longer parses: dropped before integrity
        if not isinstance(outer[-1], SkPayload):
            continue
        with pytest.raises(Ikev2IntegrityError):
            cipher(enc, integ).unprotect(bad, outer[-1])


def test_gcm_aad_is_header_and_sk_header_and_iv_is_explicit():
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    c, msg = protected("aes128gcm16", None, [NoncePayload(b"N" * 16)])
    key = bytes((i * 7) & 0xFF for i in range(20))
    iv = msg[32:40]
    pt = AESGCM(key[:16]).decrypt(key[16:] + iv, msg[40:], msg[:32])
    assert pt[-1] == 0 and pt[:-1] == encode_payloads([NoncePayload(b"N" * 16)])[1]
    # consecutive messages never reuse an IV under one key
    assert c.protect(hdr(), [])[32:40] != iv


def test_sk_short_and_padding_errors():
    c, msg = protected("aes128", "sha1", [])
    h, outer = decode_message(msg)
    sk = SkPayload(outer[-1].first_inner, outer[-1].data[:20], outer[-1].offset)
    trunc = msg[:32] + outer[-1].data[:20]
    trunc = trunc[:24] + struct.pack("!I", len(trunc)) + trunc[28:]
    with pytest.raises(Ikev2DecodeError) as e:
        cipher("aes128", "sha1").unprotect(trunc, sk)
    assert e.value.reason in ("sk_short", "sk_not_last")
    # a pad length beyond the plaintext: only reachable with the right keys (a buggy peer)
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    ek = bytes((i * 7) & 0xFF for i in range(16))
    ik = bytes((i * 3 + 1) & 0xFF for i in range(20))
    enc = Cipher(algorithms.AES(ek), modes.CBC(bytes(16))).encryptor()
    ct = enc.update(bytes(15) + b"\x40") + enc.finalize()
    head = Header(SPI_I, SPI_R, PayloadType.SK, 35, 8, 1).encode(28 + 4 + 16 + 16 + 12)
    head += struct.pack("!BBH", 0, 0, 4 + 16 + 16 + 12)
    m = hmac.HMAC(ik, hashes.SHA1())
    m.update(head + bytes(16) + ct)
    raw = head + bytes(16) + ct + m.finalize()[:12]
    h, outer = decode_message(raw)
    with pytest.raises(Ikev2DecodeError) as e:
        cipher("aes128", "sha1").unprotect(raw, outer[-1])
    assert e.value.reason == "sk_padding"


# --------------------------------------------------------------------------- scapy reads what we write


def test_scapy_decodes_an_ike_sa_init_we_encode():
    from scapy.contrib import ikev2 as S

    from cgwd.ike.v2.proposals import ike_offer, parse_ike_proposal

    offer = ike_offer([parse_ike_proposal("aes128-sha1-modp1024"), parse_ike_proposal("aes256gcm16-prfsha384-ecp384")])
    ps = [SaPayload(offer), KePayload(2, b"\x11" * 128), NoncePayload(b"\x22" * 32),
          NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, data=b"\x33" * 20),
          NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP, data=b"\x44" * 20)]
    msg = encode_message(Header(SPI_I, bytes(8), 0, Exchange.IKE_SA_INIT, int(Flag.INITIATOR), 0), ps)
    p = S.IKEv2(msg)
    assert bytes(p.init_SPI) == SPI_I and p.exch_type == 34 and p.length == len(msg) and p.id == 0
    props = p[S.IKEv2_SA].prop
    assert props.proposal == 1 and props.proto == 1 and props.trans_nb == 4
    t = props.trans
    got = []
    while t is not None and isinstance(t, S.IKEv2_Transform):
        got.append((t.transform_type, t.transform_id, t.key_length))
        t = t.payload if isinstance(t.payload, S.IKEv2_Transform) else None
    assert got == [(1, 12, 128), (2, 2, None), (3, 2, None), (4, 2, None)]
    second = props.payload
    assert isinstance(second, S.IKEv2_Proposal) and second.proposal == 2 and second.trans_nb == 3
    assert p[S.IKEv2_KE].group == 2 and bytes(p[S.IKEv2_KE].ke) == b"\x11" * 128
    assert bytes(p[S.IKEv2_Nonce].nonce) == b"\x22" * 32
    notes = [x for x in p.iterpayloads() if isinstance(x, S.IKEv2_Notify)]
    assert [(n.type, bytes(n.notify)) for n in notes] == [(16388, b"\x33" * 20), (16389, b"\x44" * 20)]


def test_scapy_decodes_auth_ts_delete_notify_vendor_we_encode():
    from scapy.contrib import ikev2 as S

    ps = [IdPayload(1, bytes([192, 0, 2, 1]), PayloadType.IDI), AuthPayload(2, b"\x55" * 20),
          NotifyPayload(Notify.INITIAL_CONTACT),
          SaPayload([Proposal(1, Protocol.ESP, b"\xca\xfe\xba\xbe", [Transform(1, 12, 256), Transform(3, 12),
                                                                       Transform(5, 0)])]),
          TsPayload([TrafficSelector.from_network(ipaddress.ip_network("0.0.0.0/0"))], PayloadType.TSI),
          TsPayload([TrafficSelector.from_network(ipaddress.ip_network("10.0.0.0/8"))], PayloadType.TSR),
          DeletePayload(Protocol.ESP, [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]),
          NotifyPayload(Notify.REKEY_SA, Protocol.ESP, b"\xde\xad\xbe\xef"),
          VendorPayload(b"cgwd")]
    msg = encode_message(hdr(), ps)
    p = S.IKEv2(msg)
    assert p[S.IKEv2_IDi].IDtype == 1 and p[S.IKEv2_IDi].ID == "192.0.2.1"
    assert p[S.IKEv2_AUTH].auth_type == 2 and bytes(p[S.IKEv2_AUTH].load) == b"\x55" * 20
    prop = p[S.IKEv2_Proposal]
    assert prop.proto == 3 and bytes(prop.SPI) == b"\xca\xfe\xba\xbe" and prop.trans_nb == 3
    assert p[S.IKEv2_TSi].number_of_TSs == 1 and p[S.IKEv2_TSr].number_of_TSs == 1
    tsr = p[S.IKEv2_TSr].traffic_selector[0]
    assert (tsr.starting_address_v4, tsr.ending_address_v4) == ("10.0.0.0", "10.255.255.255")
    d = p[S.IKEv2_Delete]
    assert d.proto == 3 and d.SPInum == 2 and [bytes(x) for x in d.SPI] == [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"]
    rekey = [x for x in p.iterpayloads() if isinstance(x, S.IKEv2_Notify) and x.type == 16393][0]
    assert rekey.proto == 3 and bytes(rekey.SPI) == b"\xde\xad\xbe\xef"
    assert bytes(p[S.IKEv2_VendorID].vendorID) == b"cgwd"


def test_scapy_sees_our_sk_payload():
    from scapy.contrib import ikev2 as S

    c, msg = protected("aes128", "sha256", [NoncePayload(b"N" * 16)])
    p = S.IKEv2(msg)
    enc = p[S.IKEv2_Encrypted]
    assert enc.next_payload == PayloadType.NONCE and enc.length == len(msg) - 28
