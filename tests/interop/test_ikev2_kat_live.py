"""A known-answer fixture for IKEv2 key material, captured from a real charon exchange, and a live
test that captures a fresh one and checks cgwd's derivations against it.

strongSwan 5.9.8 (charon, log levels ike=4 chd=4) initiates IKE_SA_INIT + IKE_AUTH towards a
passive cgwd Ikev2Peer in a second namespace, then rekeys the CHILD_SA (PFS, MODP-2048) and the
IKE SA. The inputs of the key derivations come from the wire (tcpdump): SPIs, KE values and
nonces of IKE_SA_INIT in clear; the nonces and new SPIs of the two CREATE_CHILD_SA exchanges
decrypted with the SK_e/SK_a keys charon logged (AES-CBC and HMAC from ``cryptography``, the
payloads parsed by scapy); g^ir and the Child SA seeds from charon's log. The expected results
(SKEYSEED, SK_*, AUTH, ESP keys, the rekeyed IKE SA's keys) are charon's logged values. Nothing
in the fixture is computed by cgwd.

Write the committed fixture (as root): ``.venv/bin/python tests/interop/test_ikev2_kat_live.py``
(to tests/unit/data/ikev2/kat_strongswan.json, and a fuzz corpus to tests/fuzz/corpus/ikev2/).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ikev2_support import PSK, Ikev2Lab, SwanV2, our_peer  # noqa: E402
from ike_fixtures import SW_ADDR, US_ADDR, require_lab  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "unit" / "data" / "ikev2" / "kat_strongswan.json"
CORPUS = ROOT / "tests" / "fuzz" / "corpus" / "ikev2"
CHARON_LOG_LEVELS = "ike = 4\n            chd = 4\n            cfg = 1\n            net = 1"


def log_values(log: str, label: str) -> list[bytes]:
    """All hex dumps charon logged as ``label => N bytes @ ...``, in order."""
    out = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"\] " + re.escape(label) + r" => (\d+) bytes @", line)
        if not m:
            continue
        n = int(m.group(1))
        data = b""
        j = i + 1
        while len(data) < n and j < len(lines):
            mm = re.search(r"\]\s+\d+: ((?:[0-9A-F]{2} ){1,16})", lines[j])
            if not mm:
                break
            data += bytes.fromhex(mm.group(1).replace(" ", ""))
            j += 1
        out.append(data[:n])
    return out


def ike_messages(pcap: Path) -> list[tuple[str, bytes]]:
    """(source address, IKE message) of every IKE datagram, the NAT-T marker removed."""
    from scapy.all import UDP, rdpcap

    out = []
    for p in rdpcap(str(pcap)):
        if not p.haslayer(UDP):
            continue
        data = bytes(p[UDP].payload)
        if p[UDP].sport == 4500 or p[UDP].dport == 4500:
            if len(data) < 4 or data[:4] != bytes(4):
                continue  # ESP in UDP, or a keepalive
            data = data[4:]
        if len(data) >= 28:
            out.append((p["IP"].src, data))
    return out


def _decrypt_cbc_sha1(msg: bytes, ke: bytes, ka: bytes) -> tuple[int, bytes]:
    """Independent SK decryption (AES-128-CBC, HMAC-SHA1-96) of one captured message."""
    import hmac as _hmac

    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    assert msg[16] == 46, "not an SK payload first"
    first_inner = msg[28]
    body = msg[32:]
    h = hmac.HMAC(ka, hashes.SHA1())
    h.update(msg[:-12])
    assert _hmac.compare_digest(h.finalize()[:12], body[-12:]), "ICV does not verify with charon's key"
    iv, ct = body[:16], body[16:-12]
    dec = Cipher(algorithms.AES(ke), modes.CBC(iv)).decryptor()
    pt = dec.update(ct) + dec.finalize()
    return first_inner, pt[: len(pt) - 1 - pt[-1]]


def _payloads(first_type: int, data: bytes):
    from scapy.contrib import ikev2 as S

    classes = {33: S.IKEv2_SA, 34: S.IKEv2_KE, 40: S.IKEv2_Nonce, 41: S.IKEv2_Notify, 44: S.IKEv2_TSi,
               45: S.IKEv2_TSr, 42: S.IKEv2_Delete}
    return classes[first_type](data)


def capture(dest: Path | None, corpus: Path | None = None) -> dict:
    """Run the exchange and build the fixture (written to ``dest`` when given)."""
    from scapy.contrib import ikev2 as S

    lab = Ikev2Lab()
    try:
        lab.setup()
        conn = SwanV2(esp_proposals="aes128-sha1-modp2048")
        lab.start_charon(conn, log_levels=CHARON_LOG_LEVELS)
        lab.start_runner(our_peer(esp="aes128-sha1-modp2048", initiator=False), start=False)
        pcap = lab.dir / "ike.pcap"
        lab.capture(pcap)
        out = lab.swanctl("--initiate", "--child", "vpn", "--ike", "aws", "--timeout", "20")
        assert "initiate completed successfully" in out, out
        time.sleep(1)
        assert "rekey completed successfully" in lab.swanctl("--rekey", "--child", "vpn"), \
            lab.charon_log()[-3000:]
        time.sleep(1)
        assert "rekey completed successfully" in lab.swanctl("--rekey", "--ike", "aws"), \
            lab.charon_log()[-3000:]
        time.sleep(1)
        lab.stop_capture()
        log = lab.charon_log()
        msgs = ike_messages(pcap)
    finally:
        lab.close()
    init = [(src, m) for src, m in msgs if m[18] == 34]
    req = next(m for src, m in init if src == SW_ADDR)
    resp = next(m for src, m in init if src == US_ADDR)
    pi, pr = S.IKEv2(req), S.IKEv2(resp)
    sk = {k: log_values(log, f"Sk_{k} secret") for k in ("d", "ai", "ar", "ei", "er", "pi", "pr")}
    dh = log_values(log, "shared Diffie Hellman secret")
    seeds = log_values(log, "seed")
    octets = log_values(log, "octets = message + nonce + prf(Sk_px, IDx')")
    auths = log_values(log, "AUTH = prf(prf(secret, keypad), octets)")
    ids = log_values(log, "IDx'")
    keys = {k: log_values(log, k) for k in ("encryption initiator key", "encryption responder key",
                                              "integrity initiator key", "integrity responder key")}
    # the two CREATE_CHILD_SA exchanges (charon initiates both), decrypted with IKE SA #1's keys
    ccs = [(src, m) for src, m in msgs if m[18] == 36]
    exchanges = []
    for src, m in ccs:
        ke, ka = (sk["ei"][0], sk["ai"][0]) if src == SW_ADDR else (sk["er"][0], sk["ar"][0])
        first, pt = _decrypt_cbc_sha1(m, ke, ka)
        p = _payloads(first, pt)
        nonce = bytes(p[S.IKEv2_Nonce].nonce)
        prop = p[S.IKEv2_Proposal]
        exchanges.append({"from": src, "mid": int.from_bytes(m[20:24], "big"), "nonce": nonce,
                          "proto": int(prop.proto), "spi": bytes(prop.SPI), "raw": m})
    child_req = next(e for e in exchanges if e["proto"] == 3 and e["from"] == SW_ADDR)
    child_resp = next(e for e in exchanges if e["proto"] == 3 and e["from"] == US_ADDR)
    ike_req = next(e for e in exchanges if e["proto"] == 1 and e["from"] == SW_ADDR)
    ike_resp = next(e for e in exchanges if e["proto"] == 1 and e["from"] == US_ADDR)
    g_ir_child = seeds[1][: len(seeds[1]) - 64]
    assert seeds[1][-64:] == child_req["nonce"] + child_resp["nonce"], "child seed is not g^ir | Ni | Nr"
    fixture = {
        "source": "strongSwan 5.9.8 charon (ike=4, chd=4 log) initiating to cgwd; tcpdump of the exchange; "
                  "CREATE_CHILD_SA nonces decrypted with charon's logged SK_ei/SK_er",
        "psk": PSK,
        "prf": "sha1", "encryption": "aes128", "integrity": "sha1", "dh_group": 2,
        "spi_i": bytes(pi.init_SPI).hex(), "spi_r": bytes(pr.resp_SPI).hex(),
        "ni": bytes(pi[S.IKEv2_Nonce].nonce).hex(), "nr": bytes(pr[S.IKEv2_Nonce].nonce).hex(),
        "g_i": bytes(pi[S.IKEv2_KE].ke).hex(), "g_r": bytes(pr[S.IKEv2_KE].ke).hex(),
        "g_ir": dh[0].hex(),
        "skeyseed": log_values(log, "SKEYSEED")[0].hex(),
        **{f"sk_{k}": v[0].hex() for k, v in sk.items()},
        "ike_sa_init_request": req.hex(), "ike_sa_init_response": resp.hex(),
        "auth": {
            "initiator_id": ids[0].hex(), "initiator_octets": octets[0].hex(), "initiator_auth": auths[0].hex(),
            "responder_id": ids[1].hex(), "responder_octets": octets[1].hex(), "responder_auth": auths[1].hex(),
        },
        "child_ike_auth": {
            "esp": "aes128-sha1", "seed": seeds[0].hex(),
            **{k.replace(" ", "_"): v[0].hex() for k, v in keys.items()},
        },
        "child_rekey": {
            "esp": "aes128-sha1-modp2048", "ni": child_req["nonce"].hex(), "nr": child_resp["nonce"].hex(),
            "g_ir": g_ir_child.hex(),
            **{k.replace(" ", "_"): v[1].hex() for k, v in keys.items()},
        },
        "ike_rekey": {
            "ni": ike_req["nonce"].hex(), "nr": ike_resp["nonce"].hex(),
            "spi_i": ike_req["spi"].hex(), "spi_r": ike_resp["spi"].hex(),
            "g_ir": dh[1].hex(), "skeyseed": log_values(log, "SKEYSEED")[1].hex(),
            **{f"sk_{k}": v[1].hex() for k, v in sk.items()},
        },
        "protected": [{"from": "initiator" if e["from"] == SW_ADDR else "responder", "raw": e["raw"].hex(),
                       "nonce": e["nonce"].hex()} for e in exchanges],
    }
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(fixture, indent=2) + "\n")
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        for i, (src, m) in enumerate(msgs):
            who = "swan" if src == SW_ADDR else "cgwd"
            (corpus / f"{i:02d}-{who}-x{m[18]}.bin").write_bytes(m)
    return fixture


@pytest.mark.interop
def test_cgwd_derives_what_a_live_charon_derived(tmp_path):
    require_lab()
    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_ikev2_kat import check_fixture

    check_fixture(capture(tmp_path / "kat.json"))


if __name__ == "__main__":
    capture(FIXTURE, CORPUS)
    print("wrote", FIXTURE, "and", CORPUS)
