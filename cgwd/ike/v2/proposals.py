"""IKEv2 proposals in strongSwan's syntax, their SA-payload transforms, and selection.

IKE SA: ``enc-integ[-prf]-dh`` (``aes128-sha1-modp1024``: the PRF follows the integrity
algorithm unless named, ``aes128-sha256-prfsha1-modp2048``) or, for AES-GCM,
``enc-prf-dh`` (``aes256gcm16-prfsha384-ecp384``; ``aes256gcm16-sha384-ecp384`` means the same).
ESP: ``enc-integ[-dh]`` or ``gcmenc[-dh]`` (``aes128gcm16-modp2048``); the group is the PFS
group of CREATE_CHILD_SA exchanges (the Child SA inside IKE_AUTH has no key exchange of its own).

Algorithms are AWS's set: AES-CBC-128/256, AES-GCM-16-128/256; SHA-1, SHA2-256/384/512 for
integrity and PRF; DH groups 2, 5 and 14-24 (groups 2 and 14-24 for the IKE SA, as AWS).
"""

from __future__ import annotations

from dataclasses import dataclass

from cgwd.ike.constants import GROUP_BY_NAME, GROUP_NAMES
from cgwd.ike.crypto import SUPPORTED_GROUPS
from cgwd.ipsec_sa import ENC_KEY_BYTES, is_aead

from .codec import Proposal, Transform
from .constants import (
    ENCR_AES_CBC,
    ENCR_AES_GCM_16,
    ESN_NO,
    INTEG_BY_NAME,
    INTEG_NAMES,
    PRF_BY_NAME,
    PRF_NAMES,
    Protocol,
    TransformType,
)

_ENC_ALIASES = {
    "aes128": "aes128", "aes": "aes128", "aes256": "aes256",
    "aes128gcm16": "aes128gcm16", "aes128gcm128": "aes128gcm16",
    "aes256gcm16": "aes256gcm16", "aes256gcm128": "aes256gcm16",
}
_HASH_ALIASES = {"sha1": "sha1", "sha": "sha1", "sha256": "sha256", "sha2_256": "sha256", "sha384": "sha384",
                 "sha2_384": "sha384", "sha512": "sha512", "sha2_512": "sha512"}
_PRF_ALIASES = {"prf" + k: v for k, v in _HASH_ALIASES.items()}
IKE_GROUPS = tuple(g for g in SUPPORTED_GROUPS if g != 5)
ESP_GROUPS = tuple(SUPPORTED_GROUPS)
_WANT_IKE = "e.g. aes128-sha1-modp1024 or aes256gcm16-prfsha384-ecp384"
_WANT_ESP = "e.g. aes128-sha1-modp1024, aes256-sha256 or aes128gcm16-modp2048"


def _enc_transform(encryption: str) -> Transform:
    tid = ENCR_AES_GCM_16 if is_aead(encryption) else ENCR_AES_CBC
    return Transform(TransformType.ENCR, tid, ENC_KEY_BYTES[encryption] * 8)


def _enc_name(t: Transform) -> str | None:
    if t.unknown_attributes or t.key_length not in (128, 256):
        return None
    if t.id == ENCR_AES_CBC:
        return f"aes{t.key_length}"
    if t.id == ENCR_AES_GCM_16:
        return f"aes{t.key_length}gcm16"
    return None


@dataclass(frozen=True)
class IkeProposal:
    encryption: str  # aes128 | aes256 | aes128gcm16 | aes256gcm16
    integrity: str | None  # None with GCM
    prf: str
    group: int

    @property
    def name(self) -> str:
        parts = [self.encryption]
        if self.integrity:
            parts.append(self.integrity)
        if self.integrity != self.prf:
            parts.append("prf" + self.prf)
        parts.append(GROUP_NAMES[self.group])
        return "-".join(parts)

    def transforms(self) -> list[Transform]:
        out = [_enc_transform(self.encryption), Transform(TransformType.PRF, PRF_BY_NAME[self.prf])]
        if self.integrity:
            out.append(Transform(TransformType.INTEG, INTEG_BY_NAME[self.integrity]))
        out.append(Transform(TransformType.DH, self.group))
        return out


@dataclass(frozen=True)
class EspProposal:
    encryption: str
    integrity: str | None
    group: int | None  # PFS group for CREATE_CHILD_SA; None: no PFS

    @property
    def name(self) -> str:
        parts = [self.encryption]
        if self.integrity:
            parts.append(self.integrity)
        if self.group:
            parts.append(GROUP_NAMES[self.group])
        return "-".join(parts)

    def without_group(self) -> "EspProposal":
        return EspProposal(self.encryption, self.integrity, None)

    def transforms(self, with_dh: bool) -> list[Transform]:
        out = [_enc_transform(self.encryption)]
        if self.integrity:
            out.append(Transform(TransformType.INTEG, INTEG_BY_NAME[self.integrity]))
        if with_dh and self.group:
            out.append(Transform(TransformType.DH, self.group))
        out.append(Transform(TransformType.ESN, ESN_NO))
        return out


def _group(text: str, token: str, allowed: tuple[int, ...], what: str) -> int:
    g = GROUP_BY_NAME.get(token)
    if g is None:
        raise ValueError(f"{text!r}: unknown DH group {token!r} (use e.g. modp1024, modp2048, ecp256)")
    if g not in allowed:
        raise ValueError(f"{text!r}: DH group {g} ({token}) is not allowed for {what} "
                         f"(AWS: {', '.join(str(x) for x in allowed)})")
    return g


def parse_ike_proposal(text: str) -> IkeProposal:
    """One IKEv2 IKE SA proposal; ValueError with a plain message when unsupported."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an IKE proposal must be a non-empty string ({_WANT_IKE})")
    parts = text.strip().lower().split("-")
    enc = _ENC_ALIASES.get(parts[0])
    if enc is None:
        raise ValueError(f"{text!r}: unknown encryption {parts[0]!r} (aes128, aes256, aes128gcm16, aes256gcm16)")
    rest = parts[1:]
    integ: str | None = None
    prf: str | None = None
    if rest and rest[0] in _HASH_ALIASES:
        h = _HASH_ALIASES[rest.pop(0)]
        if is_aead(enc):
            prf = h  # strongSwan: an integrity name in an AEAD proposal gives its PRF
        else:
            integ = h
    elif not is_aead(enc):
        got = f" (got {rest[0]!r})" if rest else ""
        raise ValueError(f"{text!r}: missing integrity algorithm sha1|sha256|sha384|sha512{got}")
    if rest and rest[0] in _PRF_ALIASES:
        if prf is not None:
            raise ValueError(f"{text!r}: two PRFs")
        prf = _PRF_ALIASES[rest.pop(0)]
    if prf is None:
        if integ is None:
            raise ValueError(f"{text!r}: {enc} needs a PRF, e.g. {enc}-prfsha256-modp2048")
        prf = integ
    if not rest:
        raise ValueError(f"{text!r}: an IKE proposal needs a DH group ({_WANT_IKE})")
    group = _group(text, rest.pop(0), IKE_GROUPS, "the IKE SA")
    if rest:
        raise ValueError(f"{text!r}: unexpected {'-'.join(rest)!r} (one algorithm of each kind per proposal; "
                         f"list several proposals instead)")
    return IkeProposal(enc, integ, prf, group)


def parse_esp_proposal(text: str) -> EspProposal:
    """One ESP proposal; ValueError with a plain message when unsupported."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"an ESP proposal must be a non-empty string ({_WANT_ESP})")
    parts = text.strip().lower().split("-")
    enc = _ENC_ALIASES.get(parts[0])
    if enc is None:
        raise ValueError(f"{text!r}: unknown encryption {parts[0]!r} (aes128, aes256, aes128gcm16, aes256gcm16)")
    rest = parts[1:]
    integ = None
    if rest and rest[0] in _HASH_ALIASES:
        if is_aead(enc):
            raise ValueError(f"{text!r}: {enc} is an AEAD cipher: leave out the integrity part")
        integ = _HASH_ALIASES[rest.pop(0)]
    elif not is_aead(enc):
        got = f" (got {rest[0]!r})" if rest else ""
        raise ValueError(f"{text!r}: missing integrity algorithm sha1|sha256|sha384|sha512{got}")
    group = None
    if rest and rest[0] != "noesn":
        group = _group(text, rest.pop(0), ESP_GROUPS, "ESP (PFS)")
    if rest and rest[0] == "noesn":
        rest.pop(0)
    if rest:
        raise ValueError(f"{text!r}: unexpected {'-'.join(rest)!r} ({_WANT_ESP})")
    return EspProposal(enc, integ, group)


# --------------------------------------------------------------------------- SA payloads


def ike_offer(proposals: list[IkeProposal], spi: bytes = b"") -> list[Proposal]:
    """SA payload proposals for IKE_SA_INIT (``spi`` empty) or an IKE SA rekey (new SPI)."""
    return [Proposal(i + 1, Protocol.IKE, spi, p.transforms()) for i, p in enumerate(proposals)]


def esp_offer(proposals: list[EspProposal], spi: bytes, with_dh: bool) -> list[Proposal]:
    """ESP proposals; ``with_dh`` only in CREATE_CHILD_SA with PFS (never in IKE_AUTH).
    Without DH, proposals that differ only in their group collapse into one."""
    out: list[Proposal] = []
    seen: list[EspProposal] = []
    for p in proposals:
        key = p if with_dh else p.without_group()
        if key in seen:
            continue
        seen.append(key)
        out.append(Proposal(len(out) + 1, Protocol.ESP, spi, p.transforms(with_dh)))
    return out


def _by_type(prop: Proposal) -> dict[int, list[Transform]]:
    out: dict[int, list[Transform]] = {}
    for t in prop.transforms:
        out.setdefault(t.type, []).append(t)
    return out


def _accepts_ike(prop: Proposal, want: IkeProposal) -> bool:
    tr = _by_type(prop)
    if not any(_enc_name(t) == want.encryption for t in tr.get(TransformType.ENCR, [])):
        return False
    if not any(PRF_NAMES.get(t.id) == want.prf and not t.unknown_attributes for t in tr.get(TransformType.PRF, [])):
        return False
    integs = tr.get(TransformType.INTEG, [])
    if want.integrity is None:
        if any(t.id != 0 for t in integs):
            return False
    elif not any(INTEG_NAMES.get(t.id) == want.integrity and not t.unknown_attributes for t in integs):
        return False
    return any(t.id == want.group and not t.unknown_attributes for t in tr.get(TransformType.DH, []))


def select_ike(offered: list[Proposal], ours: list[IkeProposal],
               ke_group: int | None = None) -> tuple[Proposal, IkeProposal] | None:
    """Responder: the first of *our* proposals (configuration order) that one of the offered
    IKE proposals contains; returns (that offered proposal, our proposal). One with the group
    of the initiator's KE payload (``ke_group``) is preferred over one that would need an
    INVALID_KE_PAYLOAD round trip."""
    cands = []
    for want in ours:
        for prop in offered:
            if prop.protocol == Protocol.IKE and _accepts_ike(prop, want):
                cands.append((prop, want))
                break
    for prop, want in cands:
        if want.group == ke_group:
            return prop, want
    return cands[0] if cands else None


def _accepts_esp(prop: Proposal, want: EspProposal, with_dh: bool) -> bool:
    tr = _by_type(prop)
    if not any(_enc_name(t) == want.encryption for t in tr.get(TransformType.ENCR, [])):
        return False
    integs = tr.get(TransformType.INTEG, [])
    if want.integrity is None:
        if any(t.id != 0 for t in integs):
            return False
    elif not any(INTEG_NAMES.get(t.id) == want.integrity and not t.unknown_attributes for t in integs):
        return False
    esns = tr.get(TransformType.ESN, [])
    if esns and not any(t.id == ESN_NO for t in esns):
        return False
    if with_dh:
        dhs = [t.id for t in tr.get(TransformType.DH, [])]
        if want.group is None:
            return not dhs or 0 in dhs
        return want.group in dhs
    return True


def select_esp(offered: list[Proposal], ours: list[EspProposal], with_dh: bool,
               ke_group: int | None = None) -> tuple[Proposal, EspProposal] | None:
    """Responder: the first of our ESP proposals one offered proposal contains (4-byte SPI).
    ``with_dh`` (CREATE_CHILD_SA): the group must match too; a proposal with the group of the
    initiator's KE payload (``ke_group``) is preferred over one that would need
    INVALID_KE_PAYLOAD. Without DH (IKE_AUTH) the result has no group."""
    cands = []
    for want in ours:
        w = want if with_dh else want.without_group()
        for prop in offered:
            if prop.protocol == Protocol.ESP and len(prop.spi) == 4 and _accepts_esp(prop, w, with_dh):
                cands.append((prop, w))
                break
    if not cands:
        return None
    if with_dh and ke_group is not None:
        for prop, w in cands:
            if w.group == ke_group:
                return prop, w
    return cands[0]


def chosen_ike(prop: Proposal) -> IkeProposal | None:
    """Initiator: the algorithms of the responder's one-proposal answer, None when it is not
    exactly one transform of each needed type."""
    tr = _by_type(prop)
    if prop.protocol != Protocol.IKE or any(len(v) != 1 for v in tr.values()):
        return None
    enc = [_enc_name(t) for t in tr.get(TransformType.ENCR, [])]
    prf = [PRF_NAMES.get(t.id) for t in tr.get(TransformType.PRF, [])]
    integ = [INTEG_NAMES.get(t.id) for t in tr.get(TransformType.INTEG, []) if t.id != 0]
    dh = [t.id for t in tr.get(TransformType.DH, [])]
    if len(enc) != 1 or enc[0] is None or len(prf) != 1 or prf[0] is None or len(dh) != 1:
        return None
    if is_aead(enc[0]) != (not integ) or None in integ:
        return None
    if dh[0] not in IKE_GROUPS:
        return None
    return IkeProposal(enc[0], integ[0] if integ else None, prf[0], dh[0])


def chosen_esp(prop: Proposal) -> EspProposal | None:
    tr = _by_type(prop)
    if prop.protocol != Protocol.ESP or len(prop.spi) != 4 or any(len(v) != 1 for v in tr.values()):
        return None
    enc = [_enc_name(t) for t in tr.get(TransformType.ENCR, [])]
    integ = [INTEG_NAMES.get(t.id) for t in tr.get(TransformType.INTEG, []) if t.id != 0]
    dh = [t.id for t in tr.get(TransformType.DH, []) if t.id != 0]
    esn = [t.id for t in tr.get(TransformType.ESN, [])]
    if len(enc) != 1 or enc[0] is None or None in integ or (esn and esn[0] != ESN_NO):
        return None
    if is_aead(enc[0]) != (not integ):
        return None
    if dh and dh[0] not in ESP_GROUPS:
        return None
    return EspProposal(enc[0], integ[0] if integ else None, dh[0] if dh else None)


def answer(prop: Proposal, transforms: list[Transform], spi: bytes) -> Proposal:
    """The responder's SA payload proposal: the offered number, our SPI, one of each type."""
    return Proposal(prop.number, prop.protocol, spi, transforms)
