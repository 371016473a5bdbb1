"""Known-answer tests of the IKEv2 key material against one real charon exchange
(tests/unit/data/ikev2/kat_strongswan.json, captured by tests/interop/test_ikev2_kat_live.py:
charon initiated IKE_SA_INIT + IKE_AUTH, rekeyed the CHILD_SA with PFS and rekeyed the IKE SA).

``check_fixture`` is also run by the live interop test against a freshly captured exchange.
"""

from __future__ import annotations

import json
from pathlib import Path

from cgwd.ike.crypto import ke_length
from cgwd.ike.v2 import keys as K
from cgwd.ike.v2.codec import KePayload, NoncePayload, decode_message, first
from cgwd.ike.v2.constants import Exchange, PayloadType
from cgwd.ike.v2.protect import SkCipher

FIXTURE = Path(__file__).parent / "data" / "ikev2" / "kat_strongswan.json"
H = bytes.fromhex


def check_fixture(kat: dict) -> None:
    prf = kat["prf"]
    ni, nr = H(kat["ni"]), H(kat["nr"])
    spi_i, spi_r = H(kat["spi_i"]), H(kat["spi_r"])

    # the captured IKE_SA_INIT messages decode, and carry the fixture's values
    hq, pq = decode_message(H(kat["ike_sa_init_request"]))
    hs, ps = decode_message(H(kat["ike_sa_init_response"]))
    assert hq.exchange == hs.exchange == Exchange.IKE_SA_INIT and hs.is_response and hq.from_initiator
    assert (hq.spi_i, hs.spi_r) == (spi_i, spi_r)
    assert first(pq, NoncePayload).data == ni and first(ps, NoncePayload).data == nr
    assert first(pq, KePayload).data == H(kat["g_i"]) and first(ps, KePayload).data == H(kat["g_r"])
    assert len(H(kat["g_ir"])) == ke_length(kat["dh_group"])

    # 2.14: SKEYSEED and the seven SK_* keys
    seed = K.skeyseed(prf, ni, nr, H(kat["g_ir"]))
    assert seed == H(kat["skeyseed"])
    keys = K.derive_ike_keys(prf, seed, ni, nr, spi_i, spi_r, kat["encryption"], kat["integrity"])
    for name in ("d", "ai", "ar", "ei", "er", "pi", "pr"):
        assert getattr(keys, f"sk_{name}") == H(kat[f"sk_{name}"]), name

    # 2.15: both AUTH payloads (charon built the initiator's and verified ours)
    a = kat["auth"]
    assert H(a["initiator_octets"]) == K.signed_octets(prf, H(kat["ike_sa_init_request"]), nr, keys.sk_pi,
                                                       H(a["initiator_id"]))
    assert H(a["responder_octets"]) == K.signed_octets(prf, H(kat["ike_sa_init_response"]), ni, keys.sk_pr,
                                                       H(a["responder_id"]))
    psk = kat["psk"].encode()
    assert K.psk_auth(prf, psk, H(a["initiator_octets"])) == H(a["initiator_auth"])
    assert K.psk_auth(prf, psk, H(a["responder_octets"])) == H(a["responder_auth"])

    # 2.17: the Child SA of IKE_AUTH (no PFS): KEYMAT = prf+(SK_d, Ni | Nr)
    c = kat["child_ike_auth"]
    assert H(c["seed"]) == ni + nr
    ck = K.child_keys(prf, keys.sk_d, ni, nr, "aes128", "sha1")
    assert (ck.enc_i, ck.enc_r) == (H(c["encryption_initiator_key"]), H(c["encryption_responder_key"]))
    assert (ck.integ_i, ck.integ_r) == (H(c["integrity_initiator_key"]), H(c["integrity_responder_key"]))

    # the Child SA rekey with PFS: KEYMAT = prf+(SK_d, g^ir (new) | Ni | Nr)
    r = kat["child_rekey"]
    rk = K.child_keys(prf, keys.sk_d, H(r["ni"]), H(r["nr"]), "aes128", "sha1", H(r["g_ir"]))
    assert (rk.enc_i, rk.enc_r) == (H(r["encryption_initiator_key"]), H(r["encryption_responder_key"]))
    assert (rk.integ_i, rk.integ_r) == (H(r["integrity_initiator_key"]), H(r["integrity_responder_key"]))

    # 2.18: the IKE SA rekey: SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr)
    i = kat["ike_rekey"]
    seed2 = K.rekey_skeyseed(prf, keys.sk_d, H(i["g_ir"]), H(i["ni"]), H(i["nr"]))
    assert seed2 == H(i["skeyseed"])
    keys2 = K.derive_ike_keys(prf, seed2, H(i["ni"]), H(i["nr"]), H(i["spi_i"]), H(i["spi_r"]), "aes128", "sha1")
    for name in ("d", "ai", "ar", "ei", "er", "pi", "pr"):
        assert getattr(keys2, f"sk_{name}") == H(i[f"sk_{name}"]), name

    # SK payloads charon sent and we sent verify and decrypt with these keys
    by_dir = {"initiator": SkCipher("aes128", "sha1", keys.sk_ei, keys.sk_ai, bytes),
              "responder": SkCipher("aes128", "sha1", keys.sk_er, keys.sk_ar, bytes)}
    assert kat["protected"]
    for m in kat["protected"]:
        hdr, outer = decode_message(H(m["raw"]))
        inner = by_dir[m["from"]].unprotect(H(m["raw"]), outer[-1])
        assert first(inner, NoncePayload).data == H(m["nonce"])
        assert any(p.type == PayloadType.SA for p in inner)


def test_key_material_matches_charon():
    check_fixture(json.loads(FIXTURE.read_text()))


def test_a_changed_input_changes_the_answer():
    # the check is not vacuous: one flipped nonce bit breaks SKEYSEED
    kat = json.loads(FIXTURE.read_text())
    ni = bytearray(H(kat["ni"]))
    ni[0] ^= 1
    assert K.skeyseed(kat["prf"], bytes(ni), H(kat["nr"]), H(kat["g_ir"])) != H(kat["skeyseed"])
