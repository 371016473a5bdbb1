"""Capture an IKEv1 known-answer fixture from strongSwan (run as root, by hand):

    .venv/bin/python tests/interop/capture_ike_kat.py [tests/unit/data/ike_kat_strongswan.json]

strongSwan (charon, log levels ike=4 chd=4) initiates main mode + quick mode towards a
passive cgwd IkePeer in a second namespace. Inputs of the key derivation come from the
wire (tcpdump of the cleartext messages 3 and 4: cookies, KE values, nonces) and from
strongSwan's own log (g^xy, quick-mode seeds); the expected results (SKEYID, SKEYID_d/a/e,
Ka, initial IV, ESP keys) are strongSwan's logged values. Nothing is computed by cgwd.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ike_fixtures import SW_ADDR, US_ADDR, IkeLab, SwanConn  # noqa: E402


def log_values(log: str, label: str) -> list[bytes]:
    """All hex dumps strongSwan logged under `label => N bytes @ ...`."""
    out = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        m = re.search(re.escape(label) + r" => (\d+) bytes @", line)
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


def main() -> None:
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "unit/data/ike_kat_strongswan.json")
    from scapy.all import ISAKMP, UDP, rdpcap  # noqa: F401

    lab = IkeLab()
    try:
        lab.setup()
        conn = SwanConn(proposals="aes128-sha1-modp1024", esp_proposals="aes128-sha1-modp1024")
        lab.start_charon(conn, log_levels="ike = 4\n            chd = 4\n            cfg = 1\n            net = 1")
        lab.start_runner({"local_address": US_ADDR, "remote_address": SW_ADDR, "psk": conn.psk, "initiator": False}, start=False)
        pcap = lab.dir / "ike.pcap"
        td = subprocess.Popen(["ip", "netns", "exec", lab.ns_sw, "tcpdump", "-U", "-n", "-i", lab.veth_sw, "-w", str(pcap),
                               "udp port 500"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        print(lab.swanctl("--initiate", "--child", "vpn", "--ike", "aws", "--timeout", "20")[-300:])
        time.sleep(1)
        td.terminate()
        td.wait(5)
        log = lab.charon_log()
        pkts = [p for p in rdpcap(str(pcap)) if p.haslayer(ISAKMP)]
        # message 3 (from strongSwan) and 4 (from us): the first two carrying a KE payload
        ke_msgs = [(p["IP"].src, bytes(p[UDP].payload)) for p in pkts]
        from scapy.layers.isakmp import ISAKMP_payload_KE, ISAKMP_payload_Nonce

        ke = {}
        nonce = {}
        cookies = None
        for src, raw in ke_msgs:
            pkt = ISAKMP(raw)
            if pkt.haslayer(ISAKMP_payload_KE):
                ke[src] = bytes(pkt[ISAKMP_payload_KE].ke)
                nonce[src] = bytes(pkt[ISAKMP_payload_Nonce].nonce)
                cookies = (bytes(pkt.init_cookie), bytes(pkt.resp_cookie))
        assert SW_ADDR in ke and US_ADDR in ke, "did not capture messages 3 and 4"
        gxy = log_values(log, "shared Diffie Hellman secret")[0]
        fixture = {
            "source": "strongSwan 5.9.8 charon (ike=4, chd=4 log) + tcpdump of main mode messages 3/4; "
                      "strongSwan was the initiator",
            "prf": "sha1",
            "encryption": "aes128",
            "dh_group": 2,
            "psk": conn.psk,
            "cky_i": cookies[0].hex(),
            "cky_r": cookies[1].hex(),
            "g_xi": ke[SW_ADDR].hex(),
            "g_xr": ke[US_ADDR].hex(),
            "ni": nonce[SW_ADDR].hex(),
            "nr": nonce[US_ADDR].hex(),
            "g_xy": gxy.hex(),
            "skeyid": log_values(log, "SKEYID")[0].hex(),
            "skeyid_d": log_values(log, "SKEYID_d")[0].hex(),
            "skeyid_a": log_values(log, "SKEYID_a")[0].hex(),
            "skeyid_e": log_values(log, "SKEYID_e")[0].hex(),
            "ka": log_values(log, "encryption key Ka")[0].hex(),
            "initial_iv": log_values(log, "initial IV")[0].hex(),
            "quick_mode": {
                "esp": "aes128-sha1-modp1024",
                "g_xy": log_values(log, "DH secret")[-1].hex(),
                "initiator_seed": log_values(log, "initiator SA seed")[0].hex(),
                "responder_seed": log_values(log, "responder SA seed")[0].hex(),
                "encryption_initiator_key": log_values(log, "encryption initiator key")[0].hex(),
                "encryption_responder_key": log_values(log, "encryption responder key")[0].hex(),
                "integrity_initiator_key": log_values(log, "integrity initiator key")[0].hex(),
                "integrity_responder_key": log_values(log, "integrity responder key")[0].hex(),
            },
        }
        dest.write_text(json.dumps(fixture, indent=2) + "\n")
        print("wrote", dest)
    finally:
        lab.close()


if __name__ == "__main__":
    main()
