"""IKEv2 proposal strings (strongSwan syntax, AWS's algorithm set), SA payload transforms and
selection; identities and traffic-selector narrowing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cgwd.ike.v2.codec import Proposal, TrafficSelector, Transform
from cgwd.ike.v2.constants import IdType, TransformType, TsType
from cgwd.ike.v2.identity import describe_id, narrow, parse_identity, within
from cgwd.ike.v2.proposals import (
    EspProposal,
    IkeProposal,
    chosen_esp,
    chosen_ike,
    esp_offer,
    ike_offer,
    parse_esp_proposal,
    parse_ike_proposal,
    select_esp,
    select_ike,
)

ENC = ["aes128", "aes256", "aes128gcm16", "aes256gcm16"]
HASH = ["sha1", "sha256", "sha384", "sha512"]
IKE_DH = ["modp1024", "modp2048", "modp3072", "modp4096", "modp6144", "modp8192", "ecp256", "ecp384", "ecp521",
          "modp1024s160", "modp2048s224", "modp2048s256"]
ESP_DH = IKE_DH + ["modp1536"]


@pytest.mark.parametrize("text,want", [
    ("aes128-sha1-modp1024", IkeProposal("aes128", "sha1", "sha1", 2)),
    ("AES256-SHA256-MODP2048", IkeProposal("aes256", "sha256", "sha256", 14)),
    ("aes128-sha256-prfsha1-modp2048", IkeProposal("aes128", "sha256", "sha1", 14)),
    ("aes256gcm16-prfsha384-ecp384", IkeProposal("aes256gcm16", None, "sha384", 20)),
    ("aes256gcm16-sha384-ecp384", IkeProposal("aes256gcm16", None, "sha384", 20)),
    ("aes128gcm128-prfsha256-modp2048s256", IkeProposal("aes128gcm16", None, "sha256", 24)),
    ("aes-sha2_512-ecp521", IkeProposal("aes128", "sha512", "sha512", 21)),
])
def test_ike_proposals(text, want):
    assert parse_ike_proposal(text) == want


@pytest.mark.parametrize("text,msg", [
    ("", "non-empty"),
    ("3des-sha1-modp1024", "unknown encryption"),
    ("aes128-modp1024", "missing integrity"),
    ("aes128-md5-modp1024", "missing integrity"),
    ("aes128gcm16-modp2048", "needs a PRF"),
    ("aes128-sha1", "needs a DH group"),
    ("aes128-sha1-modp768", "unknown DH group"),
    ("aes128-sha1-modp1536", "not allowed for the IKE SA"),
    ("aes128-sha1-modp1024-modp2048", "one algorithm of each kind"),
    ("aes128gcm16-sha256-prfsha1-ecp256", "two PRFs"),
])
def test_bad_ike_proposals_say_why(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_ike_proposal(text)


@pytest.mark.parametrize("text,want", [
    ("aes128-sha1-modp1024", EspProposal("aes128", "sha1", 2)),
    ("aes256-sha256", EspProposal("aes256", "sha256", None)),
    ("aes128gcm16-modp2048", EspProposal("aes128gcm16", None, 14)),
    ("aes256gcm16", EspProposal("aes256gcm16", None, None)),
    ("aes256-sha512-modp1536", EspProposal("aes256", "sha512", 5)),
    ("aes128-sha1-modp1024-noesn", EspProposal("aes128", "sha1", 2)),
])
def test_esp_proposals(text, want):
    assert parse_esp_proposal(text) == want


@pytest.mark.parametrize("text,msg", [
    ("aes128gcm16-sha1", "AEAD"),
    ("aes128", "missing integrity"),
    ("aes128-sha1-modp1024-esn", "unexpected"),
    ("aes128-sha1-foo", "unknown DH group"),
])
def test_bad_esp_proposals_say_why(text, msg):
    with pytest.raises(ValueError, match=msg):
        parse_esp_proposal(text)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ENC), st.sampled_from(HASH), st.sampled_from(HASH), st.sampled_from(IKE_DH))
def test_every_aws_ike_set_round_trips_through_transforms(enc, integ, prf, dh):
    text = f"{enc}-prf{prf}-{dh}" if enc.endswith("gcm16") else f"{enc}-{integ}-prf{prf}-{dh}"
    p = parse_ike_proposal(text)
    assert parse_ike_proposal(p.name) == p
    offer = ike_offer([p])
    assert select_ike(offer, [p]) == (offer[0], p)
    assert chosen_ike(Proposal(1, 1, b"", p.transforms())) == p


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(ENC), st.sampled_from(HASH), st.sampled_from([None] + ESP_DH))
def test_every_aws_esp_set_round_trips_through_transforms(enc, integ, dh):
    text = enc if enc.endswith("gcm16") else f"{enc}-{integ}"
    if dh:
        text += f"-{dh}"
    p = parse_esp_proposal(text)
    assert parse_esp_proposal(p.name) == p
    spi = b"\x01\x02\x03\x04"
    assert select_esp(esp_offer([p], spi, with_dh=True), [p], with_dh=True, ke_group=p.group)[1] == p
    assert select_esp(esp_offer([p], spi, with_dh=False), [p], with_dh=False)[1] == p.without_group()
    assert chosen_esp(Proposal(1, 3, spi, p.transforms(True))) == p


def test_responder_takes_its_own_order_but_prefers_the_ke_group():
    a, b = parse_ike_proposal("aes128-sha1-modp1024"), parse_ike_proposal("aes256-sha256-modp2048")
    offer = ike_offer([b, a])
    assert select_ike(offer, [a, b])[1] == a
    assert select_ike(offer, [a, b], ke_group=14)[1] == b  # no INVALID_KE round trip needed
    assert select_ike(offer, [parse_ike_proposal("aes256-sha512-ecp384")]) is None


def test_transforms_with_unknown_attributes_or_key_lengths_are_refused():
    p = parse_ike_proposal("aes128-sha1-modp1024")
    trs = p.transforms()
    trs[0] = Transform(TransformType.ENCR, 12, 192)
    assert select_ike([Proposal(1, 1, b"", trs)], [p]) is None
    trs[0] = Transform(TransformType.ENCR, 12, 128, unknown_attributes=True)
    assert select_ike([Proposal(1, 1, b"", trs)], [p]) is None


def test_gcm_proposals_must_not_carry_integrity():
    g = parse_ike_proposal("aes128gcm16-prfsha256-ecp256")
    trs = g.transforms() + [Transform(TransformType.INTEG, 12)]
    assert select_ike([Proposal(1, 1, b"", trs)], [g]) is None
    assert chosen_ike(Proposal(1, 1, b"", trs)) is None


def test_esp_in_ike_auth_ignores_dh_and_needs_no_esn_yes():
    p = parse_esp_proposal("aes128-sha1-modp2048")
    spi = b"\x00\x00\x10\x00"
    with_dh = esp_offer([p], spi, with_dh=True)
    assert select_esp(with_dh, [p], with_dh=False)[1] == EspProposal("aes128", "sha1", None)
    esn_yes = [Transform(1, 12, 128), Transform(3, 2), Transform(5, 1)]
    assert select_esp([Proposal(1, 3, spi, esn_yes)], [p], with_dh=False) is None
    # proposals differing only in their PFS group are offered once in IKE_AUTH
    q = parse_esp_proposal("aes128-sha1-modp1024")
    assert len(esp_offer([p, q], spi, with_dh=False)) == 1
    assert len(esp_offer([p, q], spi, with_dh=True)) == 2


def test_responder_answer_must_be_one_of_each():
    p = parse_ike_proposal("aes128-sha1-modp1024")
    two_dh = p.transforms() + [Transform(TransformType.DH, 14)]
    assert chosen_ike(Proposal(1, 1, b"", two_dh)) is None
    assert chosen_ike(Proposal(1, 3, b"", p.transforms())) is None
    e = parse_esp_proposal("aes128-sha1")
    assert chosen_esp(Proposal(1, 3, b"\x01\x02", e.transforms(False))) is None


# --------------------------------------------------------------------------- identities


@pytest.mark.parametrize("text,want", [
    ("192.0.2.1", (IdType.IPV4_ADDR, bytes([192, 0, 2, 1]))),
    ("ipv4:203.0.113.2", (IdType.IPV4_ADDR, bytes([203, 0, 113, 2]))),
    ("ipv6:2001:db8::1", (IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed)),
    ("2001:db8::1", (IdType.IPV6_ADDR, ipaddress.ip_address("2001:db8::1").packed)),
    ("vpn.example.com", (IdType.FQDN, b"vpn.example.com")),
    ("fqdn:cgw", (IdType.FQDN, b"cgw")),
    ("ops@example.com", (IdType.RFC822_ADDR, b"ops@example.com")),
    ("userfqdn:ops@example.com", (IdType.RFC822_ADDR, b"ops@example.com")),
    ("keyid:cgw-1", (IdType.KEY_ID, b"cgw-1")),
])
def test_identities(text, want):
    assert parse_identity(text) == want
    assert parse_identity(describe_id(*want)) == want


@pytest.mark.parametrize("text", ["", "ipv4:vpn", "ipv6:192.0.2.1", "keyid:"])
def test_bad_identities(text):
    with pytest.raises(ValueError):
        parse_identity(text)


# --------------------------------------------------------------------------- selectors

ALL = ipaddress.ip_network("0.0.0.0/0")


def ts(a, b, proto=0, ports=(0, 65535)):
    a, b = ipaddress.ip_address(a), ipaddress.ip_address(b)
    t = TsType.IPV4_ADDR_RANGE if a.version == 4 else TsType.IPV6_ADDR_RANGE
    return TrafficSelector(t, proto, ports[0], ports[1], a, b)


def test_narrowing_to_the_configuration():
    assert narrow([ts("0.0.0.0", "255.255.255.255")], ALL) == ALL
    assert narrow([ts("0.0.0.0", "255.255.255.255")], ipaddress.ip_network("10.0.0.0/8")) == \
        ipaddress.ip_network("10.0.0.0/8")
    assert narrow([ts("10.1.0.0", "10.1.255.255")], ALL) == ipaddress.ip_network("10.1.0.0/16")
    # a range that is no CIDR block narrows to its largest block
    assert narrow([ts("10.0.0.1", "10.0.0.255")], ALL) == ipaddress.ip_network("10.0.0.128/25")
    assert narrow([ts("::", "ffff::")], ALL) is None
    assert narrow([ts("0.0.0.0", "255.255.255.255", proto=6)], ALL) is None
    assert narrow([ts("::", "ffff::"), ts("0.0.0.0", "255.255.255.255")], ALL) == ALL
    assert narrow([ts("192.0.2.0", "192.0.2.255")], ipaddress.ip_network("10.0.0.0/8")) is None


def test_initiator_accepts_only_answers_within_its_offer():
    assert within([ts("0.0.0.0", "255.255.255.255")], ALL) == ALL
    ten = ipaddress.ip_network("10.0.0.0/8")
    assert within([ts("0.0.0.0", "255.255.255.255")], ten) is None
    assert within([ts("10.2.0.0", "10.2.255.255")], ten) == ipaddress.ip_network("10.2.0.0/16")
    assert within([ts("10.0.0.0", "10.0.0.5")], ten) is None  # not a block we can install
    assert within([ts("10.0.0.0", "10.255.255.255")] * 2, ten) is None
