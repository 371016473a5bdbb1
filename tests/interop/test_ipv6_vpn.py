"""IPv6 VPN connections through the daemon, as AWS's Transit Gateway offers them, in the lab:
strongSwan (libipsec, ``local_ts = remote_ts = ::/0``) + BIRD (one ``ipv6`` channel) play the
two AWS endpoints; cgwd, configured by ``cgwctl import aws`` from the lab's AWS download, is
the customer gateway.

* an IPv6 VPN over IPv4 outside addresses (both IKE versions): both tunnels, BGP over the
  /126 inside addresses carrying IPv6 unicast only (as AWS's BIRD reports it), the VPC's
  IPv6 prefix in the kernel (protocol 157, ECMP over both tunnels, the fail-closed
  unreachable route), ping6 on-prem -> VPC, TCP over IPv6 with SHA-256 compared both ways
  (100 MiB each way with IKEv1, 20 MiB with IKEv2), SIGTERM removes every IPv6 route;
* failover when the endpoint carrying the traffic dies;
* IPv6 outside addresses (IKE and ESP over IPv6) with IPv4 and with IPv6 inside;
* a dual-stack site: an IPv4 and an IPv6 VPN connection on the same box at once, over IPv4
  and over IPv6 outside addresses;
* a packet too big for the tunnel answered with ICMPv6 Packet Too Big carrying the tunnel MTU.

Every assertion reads what the real peers, the kernel or the hosts say, not only cgwd.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for
from cgwd.lab.strongswan import list_sas_parsed

pytestmark = pytest.mark.interop

PY = sys.executable
MiB = 1024 * 1024

SERVER = r"""
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("LISTEN", flush=True)
s.settimeout(300); c, _ = s.accept(); c.settimeout(300); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
c.sendall(h.hexdigest().encode()); c.close()
print(n, h.hexdigest(), flush=True)
"""

CLIENT = r"""
import hashlib, socket, sys
total = int(sys.argv[3]); h = hashlib.sha256()
src = (sys.argv[4], 0) if len(sys.argv) > 4 else None
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=300, source_address=src); sent = 0; i = 0
while sent < total:
    blk = hashlib.sha512(i.to_bytes(8, "big")).digest() * 1024
    blk = blk[: min(len(blk), total - sent)]
    c.sendall(blk); h.update(blk); sent += len(blk); i += 1
c.shutdown(socket.SHUT_WR)
print(sent, h.hexdigest(), c.recv(100).decode(), flush=True)
"""


def _config(lab, dpd: int | None = None) -> str:
    config = import_config(lab)
    if dpd is not None:
        text = open(config).read()
        text = re.sub(r"dpd_interval = \d+", f"dpd_interval = {dpd}", text)
        open(config, "w").write(text)
    return config


def _bring_up(lab, config=None, timeout=60):
    config = config or _config(lab)
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), timeout, interval=0.3,
             what="cgwd tunnels + BGP over IPv6 + the VPC's IPv6 route")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    return proc, config


def _log(lab) -> str:
    with open(os.path.join(lab.workdir, "cgwd.log"), errors="replace") as f:
        return f.read()


def transfer(src_ns, dst_ns, dst_addr: str, total: int, port: int = 5001, src_addr: str | None = None) -> None:
    """``total`` bytes of TCP from a host in ``src_ns`` (from ``src_addr``) to ``dst_addr`` in
    ``dst_ns``; the SHA-256 computed by the sender, by the receiver and the one the receiver
    sends back agree."""
    srv = subprocess.Popen(dst_ns.cmd([PY, "-c", SERVER, dst_addr, str(port)]), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "LISTEN", srv.stderr.read()
        cli = src_ns.run([PY, "-c", CLIENT, dst_addr, str(port), str(total)] + ([src_addr] if src_addr else []),
                         check=False, timeout=600)
        sout, serr = srv.communicate(timeout=120)
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert cli.returncode == 0, cli.stderr + serr
    sent, h_client, h_peer = cli.stdout.split()
    n, h_server = sout.split()
    assert int(sent) == int(n) == total
    assert h_client == h_server == h_peer


def ping6_ok(ns, dst: str, count: int = 3, size: int | None = None, src: str | None = None) -> bool:
    args = ["ping", "-6", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", dst] + (["-I", src] if src else [])
    if size is not None:
        args += ["-s", str(size), "-M", "do"]
    out = ns.run(args, check=False, timeout=60).stdout
    m = re.search(r"(\d+) received", out)
    return bool(m) and int(m.group(1)) == count


def _routes6(lab) -> str:
    return lab.cgw.ip("-6 route show proto 157", check=False).stdout


# ------------------------------------------------------------------ an IPv6 VPN connection
def check_ipv6_vpn(lab, proc, total: int) -> None:
    s = lab.spec
    st = cgwctl_status(lab, as_json=True)
    tunnels = st["tunnels"]
    assert [t["ipsec"]["state"] for t in tunnels] == ["installed", "installed"]
    assert [t["bgp"]["state"] for t in tunnels] == ["established", "established"]
    assert all(t["inner_family"] == 6 and t["bgp"]["families"] == ["ipv6/unicast"] for t in tunnels)
    assert [t["bgp"]["local"] for t in tunnels] == [lt.cgw_inside for lt in lab.tunnels]
    assert {r["prefix"] for r in st["routes"]} == {s.vpc_cidr6}
    for t in lab.tunnels:
        # AWS's side: an IPv6 child (::/0 both ways), an IPv6-only BGP session that learned
        # the on-prem IPv6 prefix from cgwd
        sas = list_sas_parsed(t.charon.list_sas())
        assert [sa["state"] for sa in sas] == ["ESTABLISHED"]
        lines = "\n".join(sas[0]["children"][0]["lines"])
        assert re.search(r"local\s+::/0", lines) and re.search(r"remote\s+::/0", lines), lines
        proto = t.bird.birdc("show", "protocols", "all", "cgw")
        assert "Established" in proto and "Channel ipv6" in proto and "Channel ipv4" not in proto, proto
        assert s.onprem_cidr6 in t.bird.routes("cgw"), t.bird.birdc("show", "route", "protocol", "cgw")
        # RFC 2545: our global inside address, then the tunnel interface's link-local one
        detail = t.bird.birdc("show", "route", "all", "protocol", "cgw")
        assert re.search(rf"BGP\.next_hop: {re.escape(t.cgw_inside)} fe80:[0-9a-f:]+", detail), detail
    # the kernel: the VPC's prefix through both tunnels (a TGW's ECMP) to AWS's inside
    # addresses with protocol 157, and the fail-closed unreachable route behind it
    routes = _routes6(lab)                       # `ip -6 route show proto 157`: ours only
    assert re.search(rf"^{re.escape(s.vpc_cidr6)} metric 100", routes, re.M), routes
    for t in lab.tunnels:
        assert re.search(rf"nexthop via {re.escape(t.aws_inside)} dev cgw-\S+", routes), routes
    assert re.search(rf"^unreachable {re.escape(s.vpc_cidr6)} dev lo metric 1100", routes, re.M), routes
    wait_for(lambda: ping6_ok(lab.onprem, s.vpc_host6, 1), 20, interval=0.5, what="ping6 on-prem -> VPC")
    assert ping6_ok(lab.onprem, s.vpc_host6, 5)
    # the VPC host answers from its own address (the namespace's transit addresses are not routed)
    assert ping6_ok(lab.vpc, s.onprem_host6, 3, src=s.vpc_host6)
    transfer(lab.onprem, lab.vpc, s.vpc_host6, total)
    transfer(lab.vpc, lab.onprem, s.onprem_host6, total, port=5002, src_addr=s.vpc_host6)
    st = cgwctl_status(lab, as_json=True)
    out = sum(t["ipsec"]["bytes_out"] for t in st["tunnels"])
    into = sum(t["ipsec"]["bytes_in"] for t in st["tunnels"])
    assert out > total and into > total, (out, into)
    for t in st["tunnels"]:
        sa = t["ipsec"]["sas"][0]
        assert sa["auth_failures"] == 0 and sa["replay_drops"] == 0, sa
    # SIGTERM: every IPv6 route of ours (fail-closed ones too) and interface gone
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    assert _routes6(lab).strip() == ""
    log = _log(lab)
    assert "Traceback" not in log
    for t in lab.tunnels:
        assert t.psk not in log, "a PSK leaked into the log"


@pytest.mark.parametrize("ike,mib", [(1, 100), (2, 20)], ids=["ikev1-100MiB", "ikev2-20MiB"])
def test_ipv6_vpn_bgp_over_ipv6_routes_ping6_and_tcp_both_ways(lab_factory, ike, mib):
    lab = lab_factory(ipv6=True, ike_version=ike)
    proc, _ = _bring_up(lab)
    assert all(t["ike"]["version"] == ike for t in cgwctl_status(lab, as_json=True)["tunnels"])
    check_ipv6_vpn(lab, proc, mib * MiB)


def test_ipv6_vpn_fails_over_when_an_endpoint_dies(lab_factory):
    lab = lab_factory(ipv6=True)
    # one best path at a time (a VGW-like choice) so that the route visibly moves
    config = _config(lab, dpd=2)
    text = open(config).read().replace('gateway_type = "tgw"', 'gateway_type = "tgw"\necmp = false')
    open(config, "w").write(text)
    proc, _ = _bring_up(lab, config)
    s = lab.spec
    wait_for(lambda: ping6_ok(lab.onprem, s.vpc_host6, 1), 20, interval=0.5, what="ping6 before the failure")
    routes = lab.cgw_routes(s.vpc_cidr6)
    victim = next(t for t in lab.tunnels if t.aws_inside in routes)
    survivor = next(t for t in lab.tunnels if t is not victim)
    # pings all along: some are lost while DPD finds the dead endpoint, then they flow again
    stop = threading.Event()
    answered: list[float] = []

    def pinger():
        while not stop.is_set():
            if ping6_ok(lab.onprem, s.vpc_host6, 1):
                answered.append(time.monotonic())
            time.sleep(0.2)

    th = threading.Thread(target=pinger, daemon=True)
    th.start()
    try:
        time.sleep(1)
        lab.wan.run(["iptables", "-I", "FORWARD", "-d", victim.aws_outside, "-j", "DROP"])
        lab.wan.run(["iptables", "-I", "FORWARD", "-s", victim.aws_outside, "-j", "DROP"])
        t0 = time.monotonic()
        wait_for(lambda: victim.aws_inside not in lab.cgw_routes(s.vpc_cidr6)
                 and survivor.aws_inside in lab.cgw_routes(s.vpc_cidr6), 30, interval=0.2,
                 what="the VPC's IPv6 route to move to the surviving tunnel")
        moved = time.monotonic() - t0
        wait_for(lambda: any(a > t0 + moved for a in answered), 60, interval=0.5,
                 what="ping6 answered over the surviving tunnel")
    finally:
        stop.set()
        th.join(10)
    log = _log(lab)
    assert re.search(r"tunnel=\S+ event=peer-dead", log), log[-3000:]
    assert ping6_ok(lab.onprem, s.vpc_host6, 3)
    transfer(lab.onprem, lab.vpc, s.vpc_host6, 2 * MiB)
    print(f"IPv6 failover: route moved {moved:.1f}s after the endpoint vanished (DPD 2 s x 3)")
    # the endpoint returns: the tunnel and its IPv6 BGP session come back by themselves
    lab.wan.run(["iptables", "-F", "FORWARD"])
    wait_for(lambda: all(t["ipsec"]["state"] == "installed" and t["bgp"]["state"] == "established"
                         for t in cgwctl_status(lab, as_json=True).get("tunnels", [])), 90, interval=1,
             what="the dead tunnel to come back")
    assert proc.poll() is None and "Traceback" not in _log(lab)


# ------------------------------------------------------------------ IPv6 outside addresses
@pytest.mark.parametrize("inner", [4, 6], ids=["inside-ipv4", "inside-ipv6"])
def test_ipv6_outside_addresses(lab_factory, inner):
    lab = lab_factory(outer_ipv6=True, ipv6=inner == 6)
    # count IKE and ESP-in-UDP crossing the WAN, per family
    for tool in ("iptables", "ip6tables"):
        lab.wan.run([tool, "-I", "FORWARD", "-p", "udp", "-m", "multiport", "--ports", "500,4500"])
    proc, _ = _bring_up(lab)
    s = lab.spec
    st = cgwctl_status(lab, as_json=True)
    for t, lt in zip(st["tunnels"], lab.tunnels):
        assert t["outer_family"] == 6 and t["inner_family"] == inner
        assert (t["outside"]["local"], t["outside"]["remote"]) == (s.cgw_public6, lt.aws_outside6)
        assert t["ike"]["state"] == "established" and t["bgp"]["state"] == "established"
        # AWS's side: the IKE SA between the IPv6 outside addresses, identities of IPv6 type
        sas = lt.charon.list_sas()
        assert f"local  '{lt.aws_outside6}' @ {lt.aws_outside6}[4500]" in sas, sas
        assert f"remote '{s.cgw_public6}' @ {s.cgw_public6}[4500]" in sas, sas
        assert "INSTALLED" in sas
    host, vpc, prefix = ((s.onprem_host6, s.vpc_host6, s.vpc_cidr6) if inner == 6
                         else (s.onprem_host, s.vpc_host, s.vpc_cidr))
    assert {r["prefix"] for r in st["routes"]} == {prefix}
    if inner == 6:
        wait_for(lambda: ping6_ok(lab.onprem, vpc, 1), 20, interval=0.5, what="ping6 through IPv6 outside")
    else:
        lab.wait_ping(20)
    transfer(lab.onprem, lab.vpc, vpc, 5 * MiB)
    transfer(lab.vpc, lab.onprem, host, 5 * MiB, port=5002, src_addr=vpc)
    # IKE and ESP went over IPv6 only: the WAN forwarded none of it over IPv4
    n4, n6 = (_udp_ike_packets(lab, tool) for tool in ("iptables", "ip6tables"))
    assert n4 == 0 and n6 > 5 * MiB // 1500, (n4, n6)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0 and "Traceback" not in _log(lab)


def _udp_ike_packets(lab, tool: str) -> int:
    """Packets the WAN's counting rule (UDP 500/4500) saw."""
    out = lab.wan.run([tool, "-L", "FORWARD", "-v", "-n", "-x"], check=False).stdout
    line = next((x for x in out.splitlines() if "multiport ports 500,4500" in x), None)
    assert line, out
    return int(line.split()[0])


# ------------------------------------------------------------------ dual stack
@pytest.mark.parametrize("outer6", [False, True], ids=["outside-ipv4", "outside-ipv6"])
def test_dual_stack_site_ipv4_and_ipv6_vpn_connections_at_once(lab_factory, outer6):
    lab = lab_factory(dual_stack=True, tunnels=4, outer_ipv6=outer6)
    proc, config = _bring_up(lab, timeout=90)
    s = lab.spec
    text = open(config).read()
    assert text.count("[[vpn]]") == 2 and s.vpn_id in text and s.vpn_id6 in text
    st = cgwctl_status(lab, as_json=True)
    v4 = [t for t in st["tunnels"] if t["vpn"] == s.vpn_id]
    v6 = [t for t in st["tunnels"] if t["vpn"] == s.vpn_id6]
    assert len(v4) == len(v6) == 2
    assert all(t["inner_family"] == 4 and t["bgp"]["families"] == ["ipv4/unicast"] for t in v4)
    assert all(t["inner_family"] == 6 and t["bgp"]["families"] == ["ipv6/unicast"] for t in v6)
    assert all(t["outer_family"] == (6 if outer6 else 4) for t in v4 + v6)
    by_prefix: dict = {}
    for r in st["routes"]:
        by_prefix.setdefault(r["prefix"], set()).add(r["tunnel"])
    assert by_prefix == {s.vpc_cidr: {t["name"] for t in v4}, s.vpc_cidr6: {t["name"] for t in v6}}
    assert lab.cgw_routes(s.vpc_cidr) and lab.cgw_routes(s.vpc_cidr6)
    for lt in lab.tunnels:
        want = s.onprem_cidr6 if lt.ipv6 else s.onprem_cidr
        assert lt.bird.routes("cgw") == [want], (lt.index, lt.bird.routes("cgw"))
    lab.wait_ping(20)
    wait_for(lambda: ping6_ok(lab.onprem, s.vpc_host6, 1), 20, interval=0.5, what="ping6")
    # both families at once
    errors: list = []

    def run(*args):
        try:
            transfer(*args)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(lab.onprem, lab.vpc, s.vpc_host, 10 * MiB, 5001)),
               threading.Thread(target=run, args=(lab.onprem, lab.vpc, s.vpc_host6, 10 * MiB, 5002))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(600)
    assert not errors, errors
    # each family went through its own VPN connection's tunnels
    st = cgwctl_status(lab, as_json=True)
    for vpn in (s.vpn_id, s.vpn_id6):
        assert sum(t["ipsec"]["bytes_out"] for t in st["tunnels"] if t["vpn"] == vpn) > 10 * MiB, vpn
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    assert proc.returncode == 0
    assert lab.cgw.ip("route show proto 157", check=False).stdout.strip() == ""
    assert _routes6(lab).strip() == ""


# ------------------------------------------------------------------ Packet Too Big
def test_too_big_ipv6_packet_gets_packet_too_big_with_the_tunnel_mtu(lab_factory):
    lab = lab_factory(ipv6=True)
    proc, _ = _bring_up(lab)
    s = lab.spec
    wait_for(lambda: ping6_ok(lab.onprem, s.vpc_host6, 1), 20, interval=0.5, what="ping6")
    ifname = re.search(r"dev (cgw-\S+)", _routes6(lab)).group(1)
    mtu = int(re.search(r"mtu (\d+)", lab.cgw.ip(f"link show {ifname}").stdout).group(1))
    assert 1280 <= mtu < 1500
    # a packet that fits the tunnel passes (IPv6 never fragments on the way); the first
    # echo reply may meet the lab's AWS side (libipsec's TUN: MTU 1400) and teach the VPC
    # host that path's MTU, so one warm-up ping goes first
    ping6_ok(lab.onprem, s.vpc_host6, 1, size=mtu - 48)
    assert ping6_ok(lab.onprem, s.vpc_host6, 2, size=mtu - 48)
    # one byte more: the gateway answers ICMPv6 Packet Too Big with the tunnel MTU, no
    # silent drop (AWS does not do path-MTU discovery for the customer)
    out = lab.onprem.run(["ping", "-6", "-n", "-c", "2", "-W", "2", "-s", str(mtu - 47), "-M", "do", s.vpc_host6],
                         check=False, timeout=30)
    text = out.stdout + out.stderr
    gw = "2001:db8:200::1"                      # the customer gateway's on-prem address
    assert re.search(rf"From {re.escape(gw)} icmp_seq=1 Packet too big: mtu={mtu}\b", text), text
    # and the on-prem host learned the path MTU: its next big TCP stream fits the tunnel
    got = lab.onprem.ip(f"-6 route get {s.vpc_host6}").stdout
    assert re.search(rf"mtu {mtu}\b", got), got
    transfer(lab.onprem, lab.vpc, s.vpc_host6, 4 * MiB)
    assert proc.poll() is None
