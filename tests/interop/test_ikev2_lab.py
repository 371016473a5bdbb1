"""cgwd (the daemon) with IKEv2 tunnels in the lab: the AWS endpoints are strongSwan IKEv2
(`cgwctl lab up --ike 2`), the configuration is AWS's describe-vpn-connections JSON (IkeVersions
ikev2, StartupAction) imported with `cgwctl import aws`. Direct, behind NAT, AWS initiating,
and rekeys of both kinds under traffic. Every assertion reads what strongSwan, BIRD or the
kernel say as well as what cgwd says."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from cgwd.config import load_config
from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import run, wait_for
from cgwd.lab.strongswan import list_sas_parsed
from cgwd.lab.topology import AwsTunnelSpec

pytestmark = pytest.mark.interop


def _bring_up(lab, timeout=60):
    config = import_config(lab)
    cfg = load_config(config)
    assert {t.ike_version for t in cfg.tunnels} == {2}
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), timeout, interval=0.3,
             what="cgwd IKEv2 tunnels + BGP + VPC route")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    return proc, cfg


def _aws_sas(lab) -> list[dict]:
    out = []
    for t in lab.tunnels:
        sas = [sa for sa in list_sas_parsed(t.charon.list_sas()) if sa["state"] == "ESTABLISHED"]
        assert len(sas) == 1, t.charon.list_sas()
        out.append(sas[0])
    return out


def _log(lab) -> str:
    return open(os.path.join(lab.workdir, "cgwd.log")).read()


@pytest.mark.parametrize("nat", [False, True], ids=["direct", "behind-nat"])
def test_ikev2_tunnels_come_up_from_the_json(lab_factory, nat):
    lab = lab_factory(nat=nat, ike_version=2)
    proc, _ = _bring_up(lab)
    st = cgwctl_status(lab, as_json=True)
    assert [t["ike"]["state"] for t in st["tunnels"]] == ["established", "established"]
    assert [t["ike"]["role"] for t in st["tunnels"]] == ["initiator", "initiator"]
    assert [t["bgp"]["state"] for t in st["tunnels"]] == ["established", "established"]
    if nat:
        assert all(t["outside"]["nat"]["local_behind_nat"] for t in st["tunnels"])
    for sa in _aws_sas(lab):
        assert sa["version"] == 2 and sa["local"] == "r"  # we initiated: AWS's SPI is the responder's
        child = sa["children"][0]
        assert child["state"] == "INSTALLED"
        assert "ESP:AES_CBC-128/HMAC_SHA1_96" in child["lines"][0]
        assert "AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024" in "\n".join(sa["lines"])
    ours = {(s["spi_in"], s["spi_out"]) for t in st["tunnels"] for s in t["ipsec"]["sas"]}
    for sa in _aws_sas(lab):
        c = sa["children"][0]
        assert (c["spi_out"], c["spi_in"]) in ours  # what AWS sends on is what we receive on
    lab.wait_ping(20)
    assert lab.ping(5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert proc.returncode == 0
    for t in lab.tunnels:
        wait_for(lambda: "ESTABLISHED" not in t.charon.list_sas(), 10, what=f"aws{t.index} acts on our DELETE")
    assert "Traceback" not in _log(lab)


def test_aws_initiates_ikev2_tunnels(lab_factory):
    # StartupAction "start": cgwd waits for AWS's IKE_SA_INIT and never initiates
    lab = lab_factory(ike_version=2, aws=[AwsTunnelSpec(start_action="start"), AwsTunnelSpec(start_action="start")])
    proc, cfg = _bring_up(lab, timeout=90)
    assert {t.startup_action for t in cfg.tunnels} == {"start"}
    st = cgwctl_status(lab, as_json=True)
    assert [t["ike"]["role"] for t in st["tunnels"]] == ["responder", "responder"]
    for sa in _aws_sas(lab):
        assert sa["version"] == 2 and sa["local"] == "i"  # AWS initiated
    lab.wait_ping(20)
    assert lab.ping(5)
    assert "Traceback" not in _log(lab)


@pytest.mark.slow
def test_rekeys_of_both_kinds_lose_no_ping(lab_factory):
    # AWS rekeys its CHILD_SAs every ~30 s and its IKE SAs every ~60 s; we rekey the CHILD_SAs by
    # `cgwctl rekey` in between; pings every 0.2 s must all come back
    aws = [AwsTunnelSpec(esp_rekey_time="30s", esp_life_time="90s") for _ in range(2)]
    lab = lab_factory(ike_version=2, aws=aws)
    for t in lab.tunnels:  # shorter than AWS allows in the imported config (900 s): at AWS's end only
        t.charon.connections[0].reauth_time = "60s"
        t.charon.load()
    proc, cfg = _bring_up(lab)
    lab.wait_ping(20)
    pinger = lab.onprem.popen(["ping", "-n", "-q", "-c", "650", "-i", "0.2", "-W", "2", lab.spec.vpc_host],
                              log_path=os.path.join(lab.workdir, "ping.log"))
    for _ in range(4):
        time.sleep(28)
        for t in cfg.tunnels:
            r = run(cgwctl_command("rekey", t.name, "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
            assert r.returncode == 0, r.stderr
    pinger.wait(60)
    text = open(os.path.join(lab.workdir, "ping.log")).read()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    assert m, text
    sent, got = int(m.group(1)), int(m.group(2))
    st = cgwctl_status(lab, as_json=True)
    counters = [t["ike"]["counters"] for t in st["tunnels"]]
    assert all(c.get("rekeys_ipsec", 0) >= 6 for c in counters), counters
    assert all(c.get("rekeys_ike", 0) >= 1 for c in counters), counters
    assert all(c.get("dpd_dead", 0) == 0 for c in counters), counters
    assert sent == 650 and got == sent, f"{sent - got} of {sent} pings lost across the rekeys"
    for sa in _aws_sas(lab):
        assert [c["state"] for c in sa["children"]].count("INSTALLED") >= 1
    assert "Traceback" not in _log(lab)
