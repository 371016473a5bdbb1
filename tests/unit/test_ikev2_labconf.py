"""The lab's IKEv2 AWS side: strongSwan configuration, swanctl parsing of IKEv2 SAs, LabSpec."""

from __future__ import annotations

import pytest

from cgwd.lab.strongswan import Child, Connection, list_sas_parsed
from cgwd.lab.topology import AwsTunnelSpec, LabSpec

SAS = """aws: #3, ESTABLISHED, IKEv2, 5a1c0e6f9d2b7a41_i 0b9e4f2a7c6d8e13_r*
  local  '198.51.100.2' @ 198.51.100.2[4500]
  remote '203.0.113.2' @ 203.0.113.2[4500]
  AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024
  established 12s ago, rekeying in 28000s
  vti: #5, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_CBC-128/HMAC_SHA1_96/MODP_1024
    installed 12s ago, rekeying in 3300s, expires in 3950s
    in  c1d2e3f4,   8400 bytes,   100 packets,     0s ago
    out 0a988f41,   8400 bytes,   100 packets,     0s ago
    local  0.0.0.0/0
    remote 0.0.0.0/0
"""


def conn(**kw) -> Connection:
    return Connection(name="aws", local_addr="198.51.100.2", remote_addr="%any", local_id="198.51.100.2",
                      remote_id="203.0.113.2", psk="x" * 20, children=[Child(name="vti")], **kw)


def test_ikev2_connection_rekeys_instead_of_reauthenticating():
    text = conn(version=2, reauth_time="28800s").render()
    assert "version = 2" in text and "rekey_time = 28800s" in text and "reauth_time = 0" in text
    assert "mobike = no" in text
    v1 = conn().render()
    assert "version = 1" in v1 and "reauth_time = 28800s" in v1 and "mobike" not in v1


def test_swanctl_ikev2_sa_spis_and_marks():
    sa = list_sas_parsed(SAS)[0]
    assert (sa["version"], sa["spi_i"], sa["spi_r"], sa["local"]) == (2, "5a1c0e6f9d2b7a41", "0b9e4f2a7c6d8e13", "r")
    child = sa["children"][0]
    assert (child["state"], child["spi_in"], child["spi_out"]) == ("INSTALLED", "c1d2e3f4", "0a988f41")
    # AWS (the local side here) initiated: "_i*"
    assert list_sas_parsed(SAS.replace("_i 0b9e", "_i* 0b9e").replace("_r*", "_r"))[0]["local"] == "i"


def test_lab_spec_ike_version():
    spec = LabSpec(prefix="ik2t", ike_version=2, aws=[AwsTunnelSpec(), AwsTunnelSpec(ike_version=1)])
    assert [a.ike_version for a in spec.aws] == [2, 1]
    assert [a.ike_version for a in LabSpec(prefix="ik2t").aws] == [1, 1]
    with pytest.raises(ValueError, match="ike_version"):
        LabSpec(prefix="ik2t", ike_version=3)


def test_status_screen_and_metrics_say_a_responder_only_tunnel_waits_for_aws():
    import copy

    from cgwd.metrics import IKE_STATES
    from cgwd.status_format import format_status

    from sample_status import SAMPLE

    st = copy.deepcopy(SAMPLE)
    st["tunnels"][1]["ike"]["state"] = "waiting"
    line = next(x for x in format_status(st).splitlines() if "IKE" in x and "waiting" in x)
    assert "waiting for AWS to initiate" in line
    assert "waiting" in IKE_STATES
