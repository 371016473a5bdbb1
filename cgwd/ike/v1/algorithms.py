"""IKEv1 algorithms: what phase 1 and phase 2 negotiate, their proposal strings (parsed by
:mod:`cgwd.ike.proposals`, the one parser) and their SA-payload transforms (RFC 2409
appendix A, RFC 2407 4.5)."""

from __future__ import annotations

from dataclasses import dataclass

from cgwd.ipsec_sa import ENC_KEY_BYTES, GCM_SALT_BYTES, INTEG_KEY_BYTES, is_aead

from .. import crypto
from ..proposals import parse_proposal
from . import constants as C
from .codec import Attribute, Transform


@dataclass(frozen=True)
class IkeAlgs:
    enc_bits: int
    hash: str
    group: int

    @property
    def name(self) -> str:
        return f"aes{self.enc_bits}-{self.hash}-{C.GROUP_NAMES[self.group]}"

    def attributes(self, lifetime: int) -> list[Attribute]:
        return [
            Attribute(C.P1_ENCRYPTION, C.P1_ENC_AES_CBC),
            Attribute(C.P1_KEY_LENGTH, self.enc_bits),
            Attribute(C.P1_HASH, C.P1_HASH_BY_NAME[self.hash]),
            Attribute(C.P1_AUTH, C.P1_AUTH_PSK),
            Attribute(C.P1_GROUP, self.group),
            Attribute(C.P1_LIFE_TYPE, C.LIFE_SECONDS),
            Attribute(C.P1_LIFE_DURATION, lifetime),
        ]


@dataclass(frozen=True)
class EspAlgs:
    encryption: str
    integrity: str | None
    group: int | None

    @property
    def name(self) -> str:
        parts = [self.encryption]
        if self.integrity:
            parts.append(self.integrity)
        if self.group:
            parts.append(C.GROUP_NAMES[self.group])
        return "-".join(parts)

    def keymat_len(self) -> int:
        n = ENC_KEY_BYTES[self.encryption]
        if is_aead(self.encryption):
            return n + GCM_SALT_BYTES
        return n + INTEG_KEY_BYTES[self.integrity or "sha1"]


def parse_ike_proposal(text: str) -> IkeAlgs:
    """A phase-1 proposal (cgwd.ike.proposals, the one parser; every group we implement)."""
    p = parse_proposal(text, "ike", 1, aws=False)
    return IkeAlgs(ENC_KEY_BYTES[p.encryption] * 8, p.integrity, p.dh_group)


def parse_esp_proposal(text: str) -> EspAlgs:
    """A phase-2 proposal (cgwd.ike.proposals, the one parser; every group we implement)."""
    p = parse_proposal(text, "esp", 1, aws=False)
    return EspAlgs(p.encryption, p.integrity, p.dh_group)


def ike_algs_from_transform(t: Transform) -> tuple[IkeAlgs, int] | None:
    """(algorithms, lifetime seconds or 0) of a phase-1 transform we support, else None."""
    if t.transform_id != C.KEY_IKE:
        return None
    a: dict[int, int] = {}
    lifetime = 0
    life_type = None
    for attr in t.attributes:
        if attr.type == C.P1_LIFE_TYPE:
            life_type = attr.value
        elif attr.type == C.P1_LIFE_DURATION:
            if life_type == C.LIFE_SECONDS:
                lifetime = attr.value
        else:
            a.setdefault(attr.type, attr.value)
    if a.get(C.P1_ENCRYPTION) != C.P1_ENC_AES_CBC or a.get(C.P1_AUTH) != C.P1_AUTH_PSK:
        return None
    bits = a.get(C.P1_KEY_LENGTH)
    h = C.P1_HASH_NAMES.get(a.get(C.P1_HASH, -1))
    g = a.get(C.P1_GROUP)
    if bits not in (128, 256) or h is None or g not in crypto.SUPPORTED_GROUPS:
        return None
    return IkeAlgs(bits, h, g), lifetime


@dataclass
class EspChoice:
    algs: EspAlgs
    encap_mode: int
    lifetime: int
    lifetime_kb: int


def esp_algs_from_transform(t: Transform) -> EspChoice | None:
    a: dict[int, int] = {}
    lifetime = 0
    kb = 0
    life_type = None
    for attr in t.attributes:
        if attr.type == C.P2_LIFE_TYPE:
            life_type = attr.value
        elif attr.type == C.P2_LIFE_DURATION:
            if life_type == C.LIFE_SECONDS:
                lifetime = attr.value
            elif life_type == C.LIFE_KILOBYTES:
                kb = attr.value
        else:
            a.setdefault(attr.type, attr.value)
    bits = a.get(C.P2_KEY_LENGTH)
    if t.transform_id == C.ESP_AES_CBC:
        enc = {128: "aes128", 256: "aes256"}.get(bits or 0)
        integ = C.P2_AUTH_NAMES.get(a.get(C.P2_AUTH, -1))
        if integ is None:
            return None
    elif t.transform_id == C.ESP_AES_GCM_16:
        enc = {128: "aes128gcm16", 256: "aes256gcm16"}.get(bits or 0)
        integ = None
        if C.P2_AUTH in a:
            return None
    else:
        return None
    if enc is None:
        return None
    group = a.get(C.P2_GROUP)
    if group is not None and group not in crypto.SUPPORTED_GROUPS:
        return None
    mode = a.get(C.P2_ENCAP_MODE, C.ENCAP_TUNNEL)
    if mode not in (C.ENCAP_TUNNEL, C.ENCAP_UDP_TUNNEL_RFC, C.ENCAP_UDP_TUNNEL_DRAFT):
        return None
    return EspChoice(EspAlgs(enc, integ, group), mode, lifetime, kb)


def esp_transform(algs: EspAlgs, number: int, encap_mode: int, lifetime: int, kb: int) -> Transform:
    attrs = [Attribute(C.P2_LIFE_TYPE, C.LIFE_SECONDS), Attribute(C.P2_LIFE_DURATION, lifetime)]
    if kb:
        attrs += [Attribute(C.P2_LIFE_TYPE, C.LIFE_KILOBYTES), Attribute(C.P2_LIFE_DURATION, kb)]
    if algs.group:
        attrs.append(Attribute(C.P2_GROUP, algs.group))
    attrs.append(Attribute(C.P2_ENCAP_MODE, encap_mode))
    if algs.integrity:
        attrs.append(Attribute(C.P2_AUTH, C.P2_AUTH_BY_NAME[algs.integrity]))
    attrs.append(Attribute(C.P2_KEY_LENGTH, ENC_KEY_BYTES[algs.encryption] * 8))
    tid = C.ESP_AES_GCM_16 if is_aead(algs.encryption) else C.ESP_AES_CBC
    return Transform(number, tid, attrs)
