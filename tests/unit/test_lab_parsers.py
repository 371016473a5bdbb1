"""Parsers the lab and the interop tests use to read strongSwan's output."""

from cgwd.lab.strongswan import list_sas_parsed

LIST_SAS = """\
aws1: #3, ESTABLISHED, IKEv1, 8e1f0c53a1b2c3d4_i 1a2b3c4d5e6f7a8b_r*
  local  '198.51.100.2' @ 198.51.100.2[4500]
  remote '203.0.113.2' @ 203.0.113.2[4500]
  AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024
  established 12s ago, reauth in 28000s
  tun: #7, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-128/HMAC_SHA1_96/MODP_1024
    installed 12s ago, rekeying in 3000s, expires in 3588s
    in  c1a2b3c4,    840 bytes,    10 packets,     1s ago
    out 0a0b0c0d,    840 bytes,    10 packets,     1s ago
    local  0.0.0.0/0
    remote 0.0.0.0/0
  tun: #8, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128/MODP_2048
    installed 2s ago, rekeying in 3200s, expires in 3598s
    in  d1a2b3c4,      0 bytes,     0 packets
    out 1a0b0c0d,      0 bytes,     0 packets
    local  0.0.0.0/0
    remote 0.0.0.0/0
"""


def test_list_sas_children_get_their_own_lines_and_spis():
    (ike,) = list_sas_parsed(LIST_SAS)
    assert ike["name"] == "aws1" and ike["state"] == "ESTABLISHED" and ike["version"] == 1
    c1, c2 = ike["children"]
    assert (c1["state"], c1["mode"], c1["proto"]) == ("INSTALLED", "TUNNEL", "ESP:AES_CBC-128/HMAC_SHA1_96/MODP_1024")
    assert (c1["spi_in"], c1["spi_out"]) == ("c1a2b3c4", "0a0b0c0d")
    assert (c2["spi_in"], c2["spi_out"]) == ("d1a2b3c4", "1a0b0c0d")
    assert len(c1["lines"]) == 6 and c1["lines"][-1].strip() == "remote 0.0.0.0/0"
    assert c2["proto"].startswith("ESP:AES_GCM_16-128")
