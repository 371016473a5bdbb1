"""ISAKMP codec: round trips, strict length checks, scapy cross-check."""

import struct

import pytest

from cgwd.ike.v1 import constants as C
from cgwd.ike.v1.codec import (
    Attribute,
    DeletePayload,
    HashPayload,
    Header,
    IdPayload,
    IkeDecodeError,
    KePayload,
    NatDPayload,
    NatOaPayload,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    Transform,
    VendorIdPayload,
    decode_attributes,
    decode_header,
    decode_message,
    decode_payloads,
    encode_message,
    id_to_network,
    parse_identity,
)

IC, RC = bytes.fromhex("0102030405060708"), bytes.fromhex("1112131415161718")


def sample_payloads():
    sa = SaPayload(proposals=[
        Proposal(1, C.PROTO_ISAKMP, b"", [
            Transform(1, C.KEY_IKE, [Attribute(C.P1_ENCRYPTION, 7), Attribute(C.P1_KEY_LENGTH, 256),
                                     Attribute(C.P1_LIFE_TYPE, 1), Attribute(C.P1_LIFE_DURATION, 86400 * 10)]),
            Transform(2, C.KEY_IKE, [Attribute(C.P1_ENCRYPTION, 7), Attribute(C.P1_LIFE_DURATION, 28800, True)]),
        ]),
    ])
    return [
        sa,
        KePayload(data=b"\x05" * 128),
        NoncePayload(data=b"\x06" * 32),
        IdPayload(id_type=C.ID_IPV4_ADDR, data=bytes([192, 0, 2, 1])),
        IdPayload(id_type=C.ID_IPV4_ADDR_SUBNET, data=bytes(8)),
        IdPayload(id_type=C.ID_FQDN, data=b"vpn.example.com"),
        IdPayload(id_type=C.ID_USER_FQDN, data=b"a@example.com"),
        IdPayload(id_type=C.ID_KEY_ID, data=b"key"),
        IdPayload(id_type=C.ID_IPV6_ADDR, data=bytes(16)),
        IdPayload(id_type=C.ID_IPV6_ADDR_SUBNET, data=bytes(16) + b"\xff" * 8 + bytes(8)),
        HashPayload(data=b"\x07" * 20),
        NotifyPayload(notify_type=C.N_R_U_THERE, protocol=C.PROTO_ISAKMP, spi=IC + RC, data=b"\0\0\0\1"),
        DeletePayload(protocol=C.PROTO_IPSEC_ESP, spis=[b"\1\2\3\4", b"\5\6\7\x08"]),
        DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[IC + RC]),
        VendorIdPayload(data=C.VID_DPD),
        NatDPayload(data=b"\x08" * 20),
        NatDPayload(data=b"\x09" * 20, draft=True),
        NatOaPayload(data=bytes([10, 0, 0, 1])),
    ]


def test_round_trip_every_payload():
    payloads = sample_payloads()
    msg = encode_message(Header(IC, RC, 0, C.EXCH_MAIN, 0, 0), payloads)
    h, out = decode_message(msg)
    assert (h.icookie, h.rcookie, h.exchange, h.length) == (IC, RC, C.EXCH_MAIN, len(msg))
    assert [type(p) for p in out] == [type(p) for p in payloads]
    for a, b in zip(payloads, out):
        assert a == b
        assert b.raw == a.raw
    assert out[0].proposals[0].transforms[0].attributes[3].value == 864000  # > 0xffff: TLV form
    assert out[0].proposals[0].transforms[1].attributes[1].variable
    assert msg == encode_message(Header(IC, RC, 0, C.EXCH_MAIN, 0, 0), out)
    assert out[16].payload_type == C.PT_NAT_D_DRAFT


@pytest.mark.parametrize("cut", [1, 5, 27, 40, 100])
def test_truncation_is_detected(cut):
    msg = encode_message(Header(IC, RC, 0, C.EXCH_MAIN, 0, 0), sample_payloads())
    with pytest.raises(IkeDecodeError):
        decode_message(msg[:-cut])


def test_header_checks():
    with pytest.raises(IkeDecodeError, match="truncated"):
        decode_header(b"\0" * 27)
    good = Header(IC, RC, 0, C.EXCH_MAIN, 0, 0).encode(0)
    assert decode_header(good).length == 28
    with pytest.raises(IkeDecodeError) as e:
        decode_header(good + b"\0")
    assert e.value.reason == "length_mismatch"
    with pytest.raises(IkeDecodeError) as e:
        decode_header(good[:17] + b"\x20" + good[18:])
    assert e.value.reason == "bad_version"
    with pytest.raises(IkeDecodeError) as e:
        decode_header(bytes(8) + good[8:])
    assert e.value.reason == "zero_cookie"
    with pytest.raises(IkeDecodeError) as e:
        decode_header(b"\1" * 70000)
    assert e.value.reason == "oversized"


def _sa_body(nprop_next=0, count=1, tnext=0, tlen=8):
    t = struct.pack("!BBHBBH", tnext, 0, tlen, 1, 1, 0) + b"\0" * (tlen - 8)
    p = struct.pack("!BBHBBBB", nprop_next, 0, 8 + len(t), 1, 1, 0, count) + t
    return struct.pack("!II", 1, 1) + p


@pytest.mark.parametrize(
    "body,reason",
    [
        (_sa_body(count=2), "transform_count_mismatch"),
        (_sa_body(count=0), "no_transform"),
        (_sa_body(tnext=5), "wrong_nesting"),
        (_sa_body(nprop_next=3), "wrong_nesting"),
        (_sa_body(tlen=4), "bad_transform_length"),
        (struct.pack("!II", 2, 1) + _sa_body()[8:], "bad_doi"),
        (struct.pack("!II", 1, 1), "truncated_proposal"),
        (_sa_body() + b"\0", "sa_trailing_bytes"),
    ],
)
def test_sa_nesting_and_counts(body, reason):
    data = struct.pack("!BBH", 0, 0, 4 + len(body)) + body
    with pytest.raises(IkeDecodeError) as e:
        decode_payloads(C.PT_SA, data)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    "ptype,body,reason",
    [
        (C.PT_PROPOSAL, b"\0" * 8, "wrong_nesting"),
        (C.PT_ID, b"\1\0\0\0\1\2\3", "bad_id_length"),
        (C.PT_ID, b"\4\0\0\0" + bytes(4) + b"\xff\x00\xff\x00", "bad_id_mask"),
        (C.PT_ID, b"\x2a\0\0\0abc", "bad_id_type"),
        (C.PT_NONCE, b"\1" * 4, "bad_nonce_length"),
        (C.PT_DELETE, struct.pack("!IBBH", 1, 3, 4, 2) + b"\0" * 4, "bad_delete_length"),
        (C.PT_NOTIFY, struct.pack("!IBBH", 1, 1, 16, 1) + b"\0" * 4, "truncated_notify"),
        (C.PT_NAT_OA, b"\1\0\0\0\1\2", "bad_nat_oa"),
        (C.PT_KE, b"", "empty_ke"),
    ],
)
def test_payload_checks(ptype, body, reason):
    data = struct.pack("!BBH", 0, 0, 4 + len(body)) + body
    with pytest.raises(IkeDecodeError) as e:
        decode_payloads(ptype, data)
    assert e.value.reason == reason


def test_payload_length_beyond_message():
    with pytest.raises(IkeDecodeError) as e:
        decode_payloads(C.PT_NONCE, struct.pack("!BBH", 0, 0, 200) + b"\0" * 20)
    assert e.value.reason == "bad_payload_length"
    with pytest.raises(IkeDecodeError) as e:
        decode_payloads(C.PT_NONCE, struct.pack("!BBH", 0, 0, 3) + b"\0" * 20)
    assert e.value.reason == "bad_payload_length"


def test_padding_allowed_only_when_decrypting():
    _, body = __import__("cgwd.ike.codec", fromlist=["x"]).encode_payloads([HashPayload(data=b"h" * 20)])
    assert decode_payloads(C.PT_HASH, body + b"\0" * 8, allow_padding=True)[0].data == b"h" * 20
    with pytest.raises(IkeDecodeError):
        decode_payloads(C.PT_HASH, body + b"\0" * 8)


def test_attributes_tv_and_tlv():
    attrs = [Attribute(1, 5), Attribute(2, 70000), Attribute(3, 9, True)]
    raw = b"".join(a.encode() for a in attrs)
    assert raw[:4] == b"\x80\x01\x00\x05"
    assert decode_attributes(raw) == [Attribute(1, 5), Attribute(2, 70000, True), Attribute(3, 9, True)]
    with pytest.raises(IkeDecodeError):
        decode_attributes(b"\x00\x02\x00\x08\x00")


def test_identities():
    assert parse_identity("192.0.2.1") == (C.ID_IPV4_ADDR, bytes([192, 0, 2, 1]))
    assert parse_identity("ipv4:192.0.2.1") == (C.ID_IPV4_ADDR, bytes([192, 0, 2, 1]))
    assert parse_identity("fqdn:vpn.example.com") == (C.ID_FQDN, b"vpn.example.com")
    assert parse_identity("keyid:abc") == (C.ID_KEY_ID, b"abc")
    assert parse_identity("a@b.example") == (C.ID_USER_FQDN, b"a@b.example")
    assert parse_identity("2001:db8::1")[0] == C.ID_IPV6_ADDR
    t, d = parse_identity("subnet:10.0.0.0/8")
    assert str(id_to_network(t, d)) == "10.0.0.0/8"


def test_scapy_decodes_what_we_encode():
    from scapy.layers.isakmp import (
        ISAKMP,
        ISAKMP_payload_KE,
        ISAKMP_payload_Nonce,
        ISAKMP_payload_SA,
        ISAKMP_payload_Transform,
        ISAKMP_payload_VendorID,
    )

    payloads = [
        SaPayload(proposals=[Proposal(1, C.PROTO_ISAKMP, b"", [
            Transform(1, C.KEY_IKE, [Attribute(C.P1_ENCRYPTION, 7), Attribute(C.P1_KEY_LENGTH, 128),
                                     Attribute(C.P1_HASH, 2), Attribute(C.P1_AUTH, 1), Attribute(C.P1_GROUP, 2),
                                     Attribute(C.P1_LIFE_TYPE, 1), Attribute(C.P1_LIFE_DURATION, 28800)])])]),
        KePayload(data=b"\x42" * 128),
        NoncePayload(data=b"\x43" * 32),
        VendorIdPayload(data=C.VID_DPD),
    ]
    msg = encode_message(Header(IC, RC, 0, C.EXCH_MAIN, 0, 0), payloads)
    pkt = ISAKMP(msg)
    assert bytes(pkt.init_cookie) == IC and bytes(pkt.resp_cookie) == RC
    assert pkt.exch_type == C.EXCH_MAIN and pkt.length == len(msg)
    assert pkt.haslayer(ISAKMP_payload_SA)
    tr = pkt[ISAKMP_payload_Transform]
    attrs = dict(tr.transforms)
    assert attrs["Encryption"] == "AES-CBC" and attrs["KeyLength"] == 128 and attrs["LifeDuration"] == 28800
    assert bytes(pkt[ISAKMP_payload_KE].ke) == b"\x42" * 128
    assert bytes(pkt[ISAKMP_payload_Nonce].nonce) == b"\x43" * 32
    assert bytes(pkt[ISAKMP_payload_VendorID].VendorID) == C.VID_DPD
    # and we decode what scapy builds
    h, out = decode_message(bytes(pkt))
    assert out[1].data == b"\x42" * 128
