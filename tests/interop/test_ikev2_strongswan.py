"""Interop: cgwd's IKEv2 engine (through IkeEndpoint, without the daemon) against strongSwan 5.9.8
(charon, kernel-libipsec, ``encap = yes``) configured as an AWS IKEv2 endpoint, in two (three,
with NAT) network namespaces this test creates and removes.

What charon reports (`swanctl --list-sas`: state, algorithms, SPIs and their ``_i``/``_r``/``*``
marks, CHILD_SA SPIs) is checked against the engine's status. Needs root and strongSwan.
"""

from __future__ import annotations

import time

import pytest

from ike_fixtures import require_lab
from test_ikev2_support import (
    SWAN_ESP,
    SWAN_IKE,
    US_PRIVATE,
    Ikev2Lab,
    SwanV2,
    US_ADDR,
    established,
    our_peer,
    parse_v2,
)

pytestmark = pytest.mark.interop


@pytest.fixture
def lab():
    require_lab()
    lab = Ikev2Lab()
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


@pytest.fixture
def natlab():
    require_lab()
    lab = Ikev2Lab(nat=True)
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def installed(status: dict) -> list[dict]:
    return [c for c in status.get("ipsec_sas", []) if c["state"] == "installed"]


def agree(lab: Ikev2Lab) -> bool:
    """charon's ESTABLISHED IKE SA and INSTALLED CHILD_SA are ours, SPI for SPI."""
    s = parse_v2(lab.list_sas())
    st = lab.status()
    ike = [i for i in s["ike"] if i["state"] == "ESTABLISHED"]
    kids = [c for c in s["children"] if c["state"] == "INSTALLED"]
    if len(ike) != 1 or not kids or st.get("state") != "established" or not st.get("ike_spi"):
        return False
    if (ike[0]["spi_i"], ike[0]["spi_r"]) != (st["ike_spi"]["initiator"], st["ike_spi"]["responder"]):
        return False
    ours = {(c["spi_in"], c["spi_out"]) for c in installed(st)}
    return any((k.get("spi_out"), k.get("spi_in")) in ours for k in kids)


def check_agree(lab: Ikev2Lab, timeout: float = 20) -> dict:
    lab.wait_for(lambda: agree(lab), timeout, "charon and cgwd agree on the IKE SA and a CHILD_SA")
    return parse_v2(lab.list_sas())


@pytest.mark.parametrize("ike,esp", [
    pytest.param("aes128-sha1-modp1024", "aes128-sha1-modp1024", id="aws-default"),
    ("aes256-sha256-modp2048", "aes256-sha256-modp2048"),
    ("aes256-sha384-ecp384", "aes256-sha384-ecp384"),
    ("aes256-sha512-ecp521", "aes256-sha512-modp1536"),
    ("aes128-sha256-modp2048s256", "aes128gcm16-modp2048"),
    pytest.param("aes128gcm16-prfsha256-ecp256", "aes256gcm16-ecp256", id="gcm-ike-sa"),
    pytest.param("aes256gcm16-prfsha384-ecp384", "aes256gcm16", id="gcm-ike-sa-256"),
])
def test_we_initiate(lab, ike, esp):
    lab.start_charon(SwanV2(proposals=ike, esp_proposals=esp))
    lab.start_runner(our_peer(ike, esp))
    s = check_agree(lab, 30)
    st = lab.status()
    sa = s["ike"][0]
    assert sa["version"] == 2 and sa["algorithms"] == SWAN_IKE[ike]
    assert sa["local"] == "r"  # charon's SPI is the responder's: we initiated (AWS never does with "add")
    assert st["role"] == "initiator" and st["algorithms"] == ike and st["version"] == 2
    child = [c for c in s["children"] if c["state"] == "INSTALLED"][0]
    assert child["algorithms"] == SWAN_ESP[esp]
    assert child["mode"] == "TUNNEL-in-UDP"  # charon's encap=yes makes us see a NAT: UDP 4500
    up = lab.events("IpsecSaUp")[0]
    assert up["udp_encap"] and up["remote_port"] == 4500
    assert lab.events("NatDetected")[0]["peer"] is True
    assert st["local_port"] == st["remote_port"] == 4500


@pytest.mark.parametrize("ike,esp", [
    pytest.param("aes128-sha1-modp1024", "aes128-sha1-modp1024", id="aws-default"),
    pytest.param("aes256gcm16-prfsha384-ecp384", "aes128gcm16-modp2048", id="gcm"),
])
def test_aws_initiates_to_a_responder_only_tunnel(lab, ike, esp):
    # startup action "start": AWS initiates; we wait and answer, never initiating ourselves
    lab.start_charon(SwanV2(proposals=ike, esp_proposals=esp, start_action="start"))
    lab.start_runner(our_peer(ike, esp, initiator=False))
    s = check_agree(lab, 40)
    st = lab.status()
    assert st["role"] == "responder" and s["ike"][0]["local"] == "i"
    assert s["ike"][0]["algorithms"] == SWAN_IKE[ike]
    assert st["counters"].get("initial_contact_received") == 1


def test_responder_only_says_it_waits_and_sends_nothing(lab):
    lab.start_charon(SwanV2())
    lab.start_runner(our_peer(initiator=False))
    time.sleep(3)
    st = lab.status()
    assert st["state"] == "waiting" and st["waiting_for_peer"] is True
    assert "IKEv2" not in lab.list_sas()
    assert st["counters"]["retransmits"] == 0
    out = lab.swanctl("--initiate", "--child", "vpn", "--ike", "aws", "--timeout", "20")
    assert "initiate completed successfully" in out, out
    check_agree(lab)


def test_behind_nat(natlab):
    lab = natlab
    lab.start_charon(SwanV2(remote_addrs="%any", encap=False))
    lab.start_runner(our_peer(local_address=US_PRIVATE, local_id=US_ADDR))
    check_agree(lab, 30)
    st = lab.status()
    assert st["nat"]["local_behind_nat"] is True and st["nat"]["udp_encap"] is True
    assert lab.events("NatDetected")[0]["local"] is True
    # charon sees us at the NAT's public address, on a translated port
    text = lab.list_sas()
    assert f"remote '{US_ADDR}' @ {US_ADDR}[" in text
    time.sleep(22)  # NAT keepalives every 20 s from behind the NAT
    assert lab.status()["counters"].get("keepalives_sent", 0) >= 1


@pytest.mark.slow
def test_child_and_ike_rekeys_started_by_either_side(lab):
    # charon rekeys the CHILD_SA every ~20 s and the IKE SA every ~45 s; we rekey the CHILD_SA every
    # ~25 s and the IKE SA every ~50 s: collisions are expected (AWS's logs show them too)
    lab.start_charon(SwanV2(esp_proposals="aes128-sha1-modp2048", rekey_time="20s", life_time="60s",
                            rand_time="4s", ike_rekey_time="45s"))
    lab.start_runner(our_peer(esp="aes128-sha1-modp2048", ipsec_lifetime=40, rekey_margin=15, rekey_fuzz=40,
                              ike_lifetime=70, dpd_interval=10))
    first = check_agree(lab, 30)["ike"][0]
    deadline = time.time() + 130
    while time.time() < deadline:
        time.sleep(5)
        assert lab.status().get("state") == "established"
        assert installed(lab.status()), "no installed pair at our end"
    check_agree(lab, 30)
    st = lab.status()
    c = st["counters"]
    assert c["rekeys_ipsec"] >= 4 and c["rekeys_ike"] >= 2, c
    assert c.get("dpd_dead", 0) == 0 and not lab.events("PeerDead")
    assert parse_v2(lab.list_sas())["ike"][0]["spi_i"] != first["spi_i"]
    # every pair we announced was the one charon had (no pair left behind at either end)
    lab.wait_for(lambda: len(installed(lab.status())) == 1 and agree(lab), 40, "one pair each after rekeys")
    assert len([i for i in parse_v2(lab.list_sas())["ike"] if i["state"] == "ESTABLISHED"]) == 1


@pytest.mark.parametrize("who", ["charon", "cgwd"])
def test_child_rekey_started_by_either_side(lab, who):
    lab.start_charon(SwanV2(esp_proposals="aes256-sha256-modp2048"))
    lab.start_runner(our_peer(esp="aes256-sha256-modp2048"))
    s = check_agree(lab)
    before = [c["spi_in"] for c in s["children"] if c["state"] == "INSTALLED"]
    if who == "charon":
        assert "rekey completed successfully" in lab.swanctl("--rekey", "--child", "vpn")
    else:
        lab.command("rekey_ipsec")
    lab.wait_for(lambda: len(lab.events("IpsecSaUp")) >= 2 and lab.events("IpsecSaDown"), 20, "rekey and old pair gone")
    ups = lab.events("IpsecSaUp")
    assert ups[1]["replaces"] == ups[0]["spi_in"] and ups[1]["initiator"] is True
    assert ups[1]["pfs_group"] == 14
    check_agree(lab)
    after = [c["spi_in"] for c in parse_v2(lab.list_sas())["children"] if c["state"] == "INSTALLED"]
    assert after and after != before
    assert "MODP_2048" in [c for c in parse_v2(lab.list_sas())["children"] if c["state"] == "INSTALLED"][0]["algorithms"]


@pytest.mark.parametrize("who", ["charon", "cgwd"])
def test_ike_rekey_started_by_either_side(lab, who):
    lab.start_charon(SwanV2())
    lab.start_runner(our_peer())
    first = check_agree(lab)["ike"][0]
    child = lab.events("IpsecSaUp")[0]["spi_in"]
    if who == "charon":
        assert "rekey completed successfully" in lab.swanctl("--rekey", "--ike", "aws")
    else:
        lab.command("rekey_ike")
    lab.wait_for(lambda: lab.status().get("counters", {}).get("rekeys_ike") == 1 and agree(lab)
                 and len(lab.status()["ike_sas"]) == 1, 20, "IKE SA rekeyed at both ends")
    s = parse_v2(lab.list_sas())
    assert len([i for i in s["ike"] if i["state"] == "ESTABLISHED"]) == 1
    new = s["ike"][0]
    assert (new["spi_i"], new["spi_r"]) != (first["spi_i"], first["spi_r"])
    assert new["local"] == ("r" if who == "cgwd" else "i")  # the rekey's initiator is the new SA's
    # no reauthentication: the CHILD_SA survived
    assert lab.events("IpsecSaDown") == [] and installed(lab.status())[0]["spi_in"] == child


def test_charon_liveness_checks_are_answered(lab):
    lab.start_charon(SwanV2(dpd_delay="2s"))
    lab.start_runner(our_peer(dpd_interval=30))
    check_agree(lab)
    time.sleep(7)
    assert lab.status()["counters"].get("liveness_answered", 0) >= 2
    assert agree(lab)


def test_our_liveness_checks_and_dead_peer_restart(lab):
    conn = SwanV2()
    lab.start_charon(conn)
    lab.start_runner(our_peer(dpd_interval=2, dpd_retries=2, dpd_action="restart", retransmit_timeout=1.0))
    check_agree(lab)
    time.sleep(5)
    assert lab.status()["counters"].get("liveness_ok", 0) >= 1
    lab.kill_charon()
    lab.wait_for(lambda: lab.events("PeerDead"), 20, "PeerDead")
    assert lab.events("IpsecSaDown")[0]["reason"] == "dpd"
    lab.start_charon(conn)
    lab.wait_for(lambda: agree(lab), 60, "re-established after charon came back")
    assert lab.status()["counters"]["dpd_dead"] == 1


def test_dead_peer_clear(lab):
    lab.start_charon(SwanV2())
    lab.start_runner(our_peer(dpd_interval=2, dpd_retries=2, dpd_action="clear"))
    check_agree(lab)
    lab.kill_charon()
    lab.wait_for(lambda: lab.events("PeerDead"), 20, "PeerDead")
    time.sleep(3)
    assert lab.status()["state"] == "idle" and lab.status()["ipsec_sas"] == []


def test_endpoint_restart_replaces_the_old_sas_at_charon(lab):
    lab.start_charon(SwanV2())
    lab.start_runner(our_peer())
    first = check_agree(lab)["ike"][0]
    lab.kill_runner()
    lab.start_runner(our_peer())
    lab.wait_for(lambda: agree(lab) and lab.status()["ike_spi"]["initiator"] != first["spi_i"], 30,
                 "a new IKE SA after the restart")
    # INITIAL_CONTACT made charon drop the SAs of our previous life
    lab.wait_for(lambda: len(parse_v2(lab.list_sas())["ike"]) == 1, 10, "charon dropped the old IKE SA")
    s = parse_v2(lab.list_sas())
    assert s["ike"][0]["spi_i"] == lab.status()["ike_spi"]["initiator"]
    assert len([c for c in s["children"] if c["state"] == "INSTALLED"]) == 1
    assert "destroying duplicate IKE_SA" in lab.charon_log() and "received INITIAL_CONTACT" in lab.charon_log()
    assert lab.status()["counters"]["initial_contact_sent"] == 1


def test_stop_deletes_at_charon(lab):
    lab.start_charon(SwanV2())
    lab.start_runner(our_peer())
    check_agree(lab)
    lab.command("stop")
    lab.wait_for(lambda: "IKEv2" not in lab.list_sas(), 10, "charon deleted the IKE SA")
    lab.wait_for(lambda: lab.status()["ipsec_sas"] == [] and lab.status()["state"] == "idle", 5, "our SAs gone")
    assert [e["reason"] for e in lab.events("IpsecSaDown")] == ["stopped"]


def test_psk_mismatch_fails_closed(lab):
    lab.start_charon(SwanV2(psk="another-key-of-aws-00"))
    lab.start_runner(our_peer())
    lab.wait_for(lambda: lab.status().get("last_error"), 15, "an authentication error")
    assert "AUTHENTICATION_FAILED" in lab.status()["last_error"] or "authentication" in lab.status()["last_error"]
    assert established(lab) is None and lab.events("IpsecSaUp") == []
