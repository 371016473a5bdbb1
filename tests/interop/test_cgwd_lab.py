"""cgwd as the customer gateway in the lab, configured from AWS's XML via `cgwctl import aws`.

strongSwan (libipsec) + BIRD play the two AWS endpoints; every assertion reads what the real
peers or the kernel say, not only what cgwd says about itself.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for
from cgwd.lab.strongswan import list_sas_parsed

pytestmark = pytest.mark.interop


def _links(lab) -> list[str]:
    return re.findall(r"^\d+: ([^:@]+)", lab.cgw.ip("-o link show", check=False).stdout, re.M)


def _our_routes(lab) -> str:
    return lab.cgw.ip("route show proto 157", check=False).stdout.strip()


def _bring_up(lab, config=None, timeout=45):
    config = config or import_config(lab)
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), timeout, interval=0.3,
             what="cgwd tunnels + BGP + VPC route")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    return proc, config


@pytest.mark.parametrize("nat", [False, True], ids=["direct", "behind-nat"])
def test_cgwd_brings_up_both_tunnels_from_aws_xml(lab_factory, nat):
    lab = lab_factory(nat=nat)
    proc, _ = _bring_up(lab)
    st = cgwctl_status(lab, as_json=True)
    assert [t["ike"]["state"] for t in st["tunnels"]] == ["established", "established"]
    assert [t["ipsec"]["state"] for t in st["tunnels"]] == ["installed", "installed"]
    assert [t["bgp"]["state"] for t in st["tunnels"]] == ["established", "established"]
    assert all(t["bgp"]["prefixes_received"] == 1 for t in st["tunnels"])
    assert {r["prefix"] for r in st["routes"]} == {lab.spec.vpc_cidr}
    if nat:
        assert all(t["outside"]["nat"]["local_behind_nat"] for t in st["tunnels"])
    # What the AWS side sees: an IKEv1 SA and an installed ESP SA with AWS's default algorithms.
    for t in lab.tunnels:
        sas = list_sas_parsed(t.charon.list_sas())
        assert [sa["state"] for sa in sas] == ["ESTABLISHED"]
        child = sas[0]["children"][0]
        assert child["state"] == "INSTALLED"
        assert "ESP:AES_CBC-128/HMAC_SHA1_96/MODP_1024" in child["lines"][0]
        assert "10.200.0.0/24" in t.bird.routes("cgw"), "the on-prem prefix must reach AWS's BGP"
    # The kernel route cgwd installed, through the tunnel interface to AWS's inside address.
    assert re.search(r"10\.100\.0\.0/16 via 169\.254\.(10|20)\.1 dev cgw-\S+ proto 157", lab.cgw_routes())
    lab.wait_ping(20)
    assert lab.ping(5)
    st = cgwctl_status(lab, as_json=True)
    assert sum(t["ipsec"]["packets_out"] for t in st["tunnels"]) > 0
    assert sum(t["ipsec"]["packets_in"] for t in st["tunnels"]) > 0
    text = cgwctl_status(lab)
    assert "Tunnel" in text and "Established" in text
    # SIGTERM: DELETEs sent, routes withdrawn, interfaces removed.
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert proc.returncode == 0
    assert _our_routes(lab) == ""
    assert not [n for n in _links(lab) if n.startswith("cgw-")]
    for t in lab.tunnels:
        wait_for(lambda: "ESTABLISHED" not in t.charon.list_sas(), 10,
                 what=f"aws{t.index} to act on cgwd's DELETE")
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log
    for t in lab.tunnels:
        assert t.psk not in log, "a PSK leaked into the log"


def test_cgwd_restart_after_sigkill_cleans_up(lab_factory):
    lab = lab_factory(tunnels=2)
    proc, config = _bring_up(lab)
    ifnames = sorted(n for n in _links(lab) if n.startswith("cgw-"))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    lab.procs.remove(proc)
    # TUN devices die with the process, and the kernel drops the routes through them; the
    # fail-closed route (no interface) stays: the VPC is unreachable, not sent in cleartext.
    assert not [n for n in _links(lab) if n.startswith("cgw-")]
    assert _our_routes(lab) == "unreachable 10.100.0.0/16 metric 1100"
    # What a crash of the kernel data path leaves (persistent interfaces, routes of ours),
    # planted by hand, plus a route somebody else installed that must survive.
    lab.cgw.ip(f"tuntap add {ifnames[0]} mode tun")
    lab.cgw.ip(f"link set {ifnames[0]} up")
    lab.cgw.ip("route add 10.99.0.0/16 dev lan0 proto 157")
    lab.cgw.ip("route add 10.98.0.0/16 dev lan0 proto static")
    proc2, _ = _bring_up(lab, config, timeout=60)
    links = sorted(n for n in _links(lab) if n.startswith("cgw-"))
    assert links == ifnames
    assert "10.99.0.0/16" not in _our_routes(lab)
    assert len(_our_routes(lab).splitlines()) == 2   # the route through the tunnel, the fail-closed one
    assert "10.98.0.0/16" in lab.cgw.ip("route show proto static").stdout
    lab.wait_ping(30)
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "left by a previous run" in log


def test_failover_when_an_endpoint_dies_silently(lab_factory):
    lab = lab_factory(tunnels=2)
    config = import_config(lab)
    text = open(config).read()
    # Faster DPD than AWS's 10 s x 3 to keep the test short; the mechanism is the same.
    text = re.sub(r"dpd_interval = \d+", "dpd_interval = 2", text)
    if "dpd_interval" not in text:
        text = text.replace("[[vpn.tunnel]]", "[[vpn.tunnel]]\ndpd_interval = 2", )
    open(config, "w").write(text)
    proc, _ = _bring_up(lab, config)
    lab.wait_ping(20)
    active = re.search(r"dev (cgw-\S+)", lab.cgw_routes()).group(1)
    victim = lab.tunnels[0] if "169.254.10.1" in lab.cgw_routes() else lab.tunnels[1]
    # The endpoint carrying traffic vanishes: all its packets dropped in the WAN.
    lab.wan.run(["iptables", "-I", "FORWARD", "-d", victim.aws_outside, "-j", "DROP"])
    lab.wan.run(["iptables", "-I", "FORWARD", "-s", victim.aws_outside, "-j", "DROP"])
    t0 = time.monotonic()
    wait_for(lambda: active not in lab.cgw_routes() and "10.100.0.0/16" in lab.cgw_routes(), 20,
             interval=0.2, what="the VPC route to move to the other tunnel")
    moved = time.monotonic() - t0
    # DPD (2 s x 3) declared the peer dead, before any BGP hold timer (30 s) expired
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    m_dpd = re.search(r"tunnel=\S+ event=peer-dead", log)
    m_hold = re.search(r"tunnel=\S+ event=bgp-down reason=\S*[Hh]old timer", log)
    assert m_dpd and (m_hold is None or m_dpd.start() < m_hold.start()), log[-3000:]
    # The VPC side moves its return route when AWS's BGP session drops (hold time 30 s).
    wait_for(lambda: lab.ping(1, timeout=1), 60, interval=0.5, what="traffic over the surviving tunnel")
    gap = time.monotonic() - t0
    print(f"failover: route moved after {moved:.1f}s (DPD), traffic back after {gap:.1f}s")
    # The endpoint returns: cgwd keeps retrying and the tunnel comes back by itself.
    time.sleep(10)  # several retry rounds while the endpoint is still gone
    dead = next(t for t in cgwctl_status(lab, as_json=True)["tunnels"] if t["ifname"] == active)
    assert dead["ike"]["state"] != "established" and dead["ipsec"]["state"] == "none"
    t1 = time.monotonic()
    lab.wan.run(["iptables", "-F", "FORWARD"])
    wait_for(lambda: all(t["ipsec"]["state"] == "installed" and t["bgp"]["state"] == "established"
                         for t in cgwctl_status(lab, as_json=True).get("tunnels", [])), 90, interval=1,
             what="the dead tunnel to come back")
    back = time.monotonic() - t1
    wait_for(lambda: lab.ping(1, timeout=1), 30, interval=0.5, what="traffic after the endpoint returned")
    print(f"failover: endpoint back -> tunnel + BGP up again after {back:.1f}s "
          f"(IKE counters while it was gone: {dead['ike']['counters']})")
    assert proc.poll() is None


def _ctl(lab, *args):
    from cgwd.lab.cli import cgwctl_command
    from cgwd.lab.netns import run
    return run(cgwctl_command(*args, "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)


def _spis(lab) -> dict:
    return {t["name"]: sorted(sa["spi_in"] for sa in t["ipsec"]["sas"])
            for t in cgwctl_status(lab, as_json=True)["tunnels"]}


def test_operator_commands_and_reload_against_running_daemon(lab_factory):
    lab = lab_factory(tunnels=2)
    proc, config = _bring_up(lab)
    names = [t["name"] for t in cgwctl_status(lab, as_json=True)["tunnels"]]
    before = _spis(lab)
    # SIGHUP with an unchanged config touches nothing: same SAs afterwards.
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    assert _spis(lab) == before
    # cgwctl reload with a MED on tunnel 2: applied in place (BGP sends the new MED, as AWS's
    # BIRD shows), no SA touched on either tunnel.
    text = open(config).read()
    parts = text.split("[[vpn.tunnel]]")
    parts[2] = parts[2].replace("\n", "\nmed = 250\n", 1)
    open(config, "w").write("[[vpn.tunnel]]".join(parts))
    r = _ctl(lab, "reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "applied in place" in r.stdout and names[1] in r.stdout and "med" in r.stdout, r.stdout
    wait_for(lambda: "MED = 250" in lab.tunnels[1].bird.birdc("show", "route", "all", "protocol", "cgw")
             or "med: 250" in lab.tunnels[1].bird.birdc("show", "route", "all", "protocol", "cgw").lower(), 15,
             what="AWS's BIRD to see the new MED on tunnel 2")
    assert _spis(lab) == before, "an in-place change must not touch the SAs"
    st = cgwctl_status(lab, as_json=True)
    assert st["last_reload"]["applied"] == {names[1]: ["med"]}
    # a setting that needs a new IKE negotiation (the ESP lifetime) restarts that tunnel only
    if re.search(r"esp_lifetime = \d+", parts[2]):
        parts[2] = re.sub(r"esp_lifetime = \d+", "esp_lifetime = 1800", parts[2], count=1)
    else:
        parts[2] = parts[2].replace("\n", "\nesp_lifetime = 1800\n", 1)
    open(config, "w").write("[[vpn.tunnel]]".join(parts))
    r = _ctl(lab, "reload")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "restarted" in r.stdout and "esp_lifetime" in r.stdout, r.stdout
    wait_for(lambda: cgwd_ready(lab), 30, what="tunnels back after reload")
    after = _spis(lab)
    assert after[names[0]] == before[names[0]], "an unchanged tunnel was touched by reload"
    assert after[names[1]] != before[names[1]]
    # down: the tunnel's SAs are deleted at AWS's side too; up: it comes back.
    r = _ctl(lab, "down", names[0])
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: "ESTABLISHED" not in lab.tunnels[0].charon.list_sas(), 15,
             what="aws1 to see the tunnel deleted")
    assert cgwctl_status(lab, as_json=True)["tunnels"][0]["ipsec"]["state"] == "none"
    assert "169.254.10.1" not in lab.cgw_routes()
    r = _ctl(lab, "up", names[0])
    assert r.returncode == 0
    wait_for(lambda: cgwd_ready(lab), 30, what="tunnel back after cgwctl up")
    # rekey: a new SA pair replaces the old one, strongSwan sees the new one installed.
    old = _spis(lab)[names[0]]
    r = _ctl(lab, "rekey", names[0])
    assert r.returncode == 0
    wait_for(lambda: set(_spis(lab)[names[0]]) - set(old), 15, what="a new SA after cgwctl rekey")
    lab.wait_ping(20)
    # Unknown tunnel: a one-line error, not a traceback.
    r = _ctl(lab, "down", "nope")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "nope" in (r.stderr + r.stdout)
