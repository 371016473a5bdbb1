"""Known-answer tests against values strongSwan logged for one real exchange
(tests/unit/data/ike_kat_strongswan.json, made by tests/interop/capture_ike_kat.py)."""

import json
from pathlib import Path

import pytest

from cgwd.ike import crypto
from cgwd.ike.v1 import keys

KAT = json.loads((Path(__file__).parent / "data" / "ike_kat_strongswan.json").read_text())
H = bytes.fromhex


def test_skeyid_psk():
    assert keys.skeyid_psk(KAT["prf"], KAT["psk"].encode(), H(KAT["ni"]), H(KAT["nr"])) == H(KAT["skeyid"])


def test_skeyid_d_a_e_and_ka():
    p1 = keys.derive_phase1(KAT["prf"], H(KAT["skeyid"]), H(KAT["g_xy"]), H(KAT["cky_i"]), H(KAT["cky_r"]), 16)
    assert p1.skeyid_d == H(KAT["skeyid_d"])
    assert p1.skeyid_a == H(KAT["skeyid_a"])
    assert p1.skeyid_e == H(KAT["skeyid_e"])
    assert p1.enc_key == H(KAT["ka"])


def test_phase1_iv():
    assert keys.phase1_iv(KAT["prf"], H(KAT["g_xi"]), H(KAT["g_xr"])) == H(KAT["initial_iv"])


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_keymat(side):
    qm = KAT["quick_mode"]
    gxy = H(qm["g_xy"])
    seed = H(qm[f"{side}_seed"])
    # seed = g(qm)^xy | protocol | SPI | Ni_b | Nr_b (strongSwan's layout, RFC 2409 5.5)
    assert seed[: len(gxy)] == gxy
    protocol = seed[len(gxy)]
    spi = int.from_bytes(seed[len(gxy) + 1 : len(gxy) + 5], "big")
    nonces = seed[len(gxy) + 5 :]
    ni, nr = nonces[:32], nonces[32:]
    km = keys.keymat(KAT["prf"], H(KAT["skeyid_d"]), protocol, spi, ni, nr, 36, gxy)
    assert km[:16] == H(qm[f"encryption_{side}_key"])
    assert km[16:] == H(qm[f"integrity_{side}_key"])


def test_dh_shared_secret_length_matches_strongswan():
    # our MODP-1024 shared secrets have the same (padded) length as strongSwan's g^xy
    a, b = crypto.DiffieHellman(KAT["dh_group"]), crypto.DiffieHellman(KAT["dh_group"])
    assert len(a.shared_secret(b.public)) == len(H(KAT["g_xy"]))
