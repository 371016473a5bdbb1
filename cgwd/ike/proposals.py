"""The one parser of proposal strings (strongSwan's syntax), for the config and both engines.

IKE SA / phase 1: ``enc-integ-dh`` (``aes128-sha1-modp1024``); IKEv2 also ``enc-integ-prf-dh``
(``aes128-sha256-prfsha1-modp2048``) and, with AES-GCM, ``enc-prf-dh``
(``aes256gcm16-prfsha384-ecp384``; strongSwan also writes the PRF as a bare hash,
``aes256gcm16-sha384-ecp384``). ESP / Child SA: ``enc-integ[-dh]`` or ``gcmenc[-dh]``, the
group being the PFS group. strongSwan's aliases are read (``aes`` = aes128,
``aes128gcm128`` = aes128gcm16, ``sha`` = sha1, ``sha2_256`` = sha256, ...); ``text`` of the
result is the proposal in canonical names.

``aws=True`` (the config) also applies AWS's rules, in the operator's words: DH groups 2 and
14-24 for the IKE SA, 2, 5 and 14-24 for PFS; no AES-GCM in an IKEv1 phase 1. The engines
parse with ``aws=False`` and accept every group they implement.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgwd.ipsec_sa import ENCRYPTION_ALGORITHMS, INTEGRITY_ALGORITHMS, is_aead

from .crypto import GROUP_BY_NAME, GROUP_NAMES, SUPPORTED_GROUPS

ENC_ALIASES: dict[str, str] = {
    **{e: e for e in ENCRYPTION_ALGORITHMS},
    "aes": "aes128", "aes128gcm128": "aes128gcm16", "aes256gcm128": "aes256gcm16",
}
HASH_ALIASES: dict[str, str] = {
    **{h: h for h in INTEGRITY_ALGORITHMS},
    "sha": "sha1", "sha2_256": "sha256", "sha2_384": "sha384", "sha2_512": "sha512",
}
PRF_ALIASES: dict[str, str] = {"prf" + k: v for k, v in HASH_ALIASES.items()}

IKEV1_IKE_ENC = ("aes128", "aes256")  # AES-GCM is an IKEv2 IKE SA cipher only (RFC 5282)
AWS_IKE_GROUPS = frozenset([2, *range(14, 25)])  # AWS: phase 1 / IKE SA
AWS_ESP_GROUPS = frozenset([2, 5, *range(14, 25)])  # AWS: phase 2 / Child SA (PFS)
KINDS = ("ike", "esp")


@dataclass(frozen=True)
class Proposal:
    """A parsed proposal string ``enc-integ[-prf]-dh`` (integ omitted for GCM; dh optional for ESP).

    ``prf`` is set only for IKEv2 IKE SAs (named, or the integrity algorithm's hash); IKEv1
    derives its PRF from the hash, ESP has none.
    """

    text: str  # canonical names, e.g. "aes128-sha1-modp1024"
    encryption: str  # aes128|aes256|aes128gcm16|aes256gcm16
    integrity: str | None  # sha1|sha256|sha384|sha512, None for GCM
    dh: str | None  # strongSwan name, e.g. "modp1024"; for ESP: the PFS group or None
    dh_group: int | None  # IANA number, e.g. 2
    prf: str | None = None  # IKEv2 IKE SA: sha1|sha256|sha384|sha512 (None for IKEv1 and ESP)

    def __str__(self) -> str:
        return self.text


def parse_proposal(text: str, kind: str, ike_version: int = 1, *, aws: bool = True) -> Proposal:
    """Parse one proposal; ValueError with a plain message (naming the text) when it is not
    one ``kind`` ("ike" or "esp") of ``ike_version`` (1 or 2) can use (or, with ``aws``, not
    one AWS allows)."""
    if kind not in KINDS:
        raise ValueError(f"unknown proposal kind {kind!r}")
    if ike_version not in (1, 2):
        raise ValueError(f"unknown IKE version {ike_version!r}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a proposal must be a non-empty string like 'aes128-sha1-modp1024'")
    parts = text.strip().lower().split("-")
    out: list[str] = []
    v2_ike = kind == "ike" and ike_version == 2
    enc_allowed = ENCRYPTION_ALGORITHMS if kind == "esp" or v2_ike else IKEV1_IKE_ENC
    enc = ENC_ALIASES.get(parts[0])
    rest = parts[1:]
    if enc is None:
        raise ValueError(f"{text!r}: unknown encryption {parts[0]!r} (use one of {', '.join(enc_allowed)})")
    out.append(enc)
    gcm = is_aead(enc)
    if kind == "ike" and gcm and not v2_ike:
        raise ValueError(
            f"{text!r}: AES-GCM is not allowed in IKEv1 phase 1 (AWS allows GCM only with IKEv2);"
            " use aes128 or aes256 with sha1/sha256/sha384/sha512, or set ike_version = 2"
        )
    integ: str | None = None
    prf: str | None = None
    if rest and rest[0] in HASH_ALIASES and gcm and v2_ike:
        prf = HASH_ALIASES[rest.pop(0)]  # strongSwan: with AES-GCM an IKEv2 IKE SA's hash names its PRF
        out.append(prf)
    elif rest and rest[0] in HASH_ALIASES:
        if gcm:
            raise ValueError(f"{text!r}: {enc} is an AEAD cipher: leave out the integrity part")
        integ = HASH_ALIASES[rest.pop(0)]
        out.append(integ)
    elif not gcm:
        got = f" (got {rest[0]!r})" if rest else ""
        raise ValueError(f"{text!r}: missing integrity algorithm, one of {', '.join(INTEGRITY_ALGORITHMS)}{got}")
    if rest and rest[0] in PRF_ALIASES and prf is not None:
        raise ValueError(f"{text!r}: names the PRF twice ({prf} and {rest[0]}): write '{enc}-prf{prf}-<group>'")
    if rest and rest[0] in PRF_ALIASES:
        if not v2_ike:
            where = "IKEv1 derives it from the hash" if kind == "ike" else "an ESP proposal has none"
            raise ValueError(f"{text!r}: a PRF part ({rest[0]}) is only written for IKEv2 IKE proposals ({where})")
        prf = PRF_ALIASES[rest.pop(0)]
        out.append("prf" + prf)
    elif v2_ike and prf is None:
        if gcm:
            raise ValueError(
                f"{text!r}: an AES-GCM IKE proposal needs a PRF, e.g. '{enc}-prfsha384-ecp384'"
                f" (one of {', '.join('prf' + h for h in INTEGRITY_ALGORITHMS)})"
            )
        prf = integ
    dh: str | None = None
    group: int | None = None
    if rest:
        dh = rest.pop(0)
        if dh not in GROUP_BY_NAME or GROUP_BY_NAME[dh] not in SUPPORTED_GROUPS:
            raise ValueError(f"{text!r}: unknown DH group {dh!r} (use e.g. modp1024, modp2048, ecp256)")
        group = GROUP_BY_NAME[dh]
        allowed = AWS_IKE_GROUPS if kind == "ike" else AWS_ESP_GROUPS
        if aws and group not in allowed:
            which = "phase 1 (IKE): groups 2, 14-24" if kind == "ike" else "phase 2 (PFS): groups 2, 5, 14-24"
            raise ValueError(f"{text!r}: DH group {group} ({dh}) is not allowed by AWS in {which}")
        out.append(dh)
    elif kind == "ike":
        raise ValueError(f"{text!r}: an IKE proposal needs a DH group, e.g. 'aes128-sha1-modp1024'")
    if rest:
        raise ValueError(f"{text!r}: unexpected trailing part {'-'.join(rest)!r}")
    return Proposal("-".join(out), enc, integ, GROUP_NAMES[group] if group else None, group, prf)
