"""IPv6 through the userspace ESP data path, between two of its own instances, as a router
carries it: a LAN host behind gateway A reaches the "VPC" addresses behind B.

    C (LAN host fd00:200::10) -- A (cgw-tunA fd00:10::2/126) ==ESP== B (cgw-tunB fd00:10::1/126, fd00:99::1-2)

Outer addresses IPv4 (ESP-in-UDP, as behind NAT) or IPv6 (plain ESP, and ESP-in-UDP):
ping6 and a 20 MiB TCP transfer over IPv6 with SHA-256 compared at both ends; a packet
too big for the tunnel answered with ICMPv6 Packet Too Big carrying the tunnel MTU (by
A's kernel, the TUN's MTU being the tunnel's; and by the data path itself when the
interface's MTU has drifted above it); no router solicitation or other link chatter
counted as a drop.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from test_esp_userspace import CLIENT, PY, SERVER, Peer, rand_pair_json, sh

SERVER6 = SERVER.replace("s = socket.socket()", "s = socket.socket(socket.AF_INET6)")
assert SERVER6 != SERVER

pytestmark = pytest.mark.interop

OUTERS = {
    "outer4-udp": ("198.51.100.1", "198.51.100.2", 24, True),
    "outer6-raw": ("2001:db8:1::1", "2001:db8:1::2", 64, False),
    "outer6-udp": ("2001:db8:1::1", "2001:db8:1::2", 64, True),
}


@pytest.fixture
def lab6():
    tag = f"{os.getpid() % 100000}"
    c, a, b = f"es6C{tag}", f"es6A{tag}", f"es6B{tag}"
    for ns in (c, a, b):
        sh("ip", "netns", "add", ns)
    try:
        for ns in (c, a, b):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "e6c" + tag, "netns", c, "type", "veth", "peer", "name", "e6l" + tag, "netns", a)
        sh("ip", "link", "add", "e6w" + tag, "netns", a, "type", "veth", "peer", "name", "e6v" + tag, "netns", b)
        sh("ip", "-n", c, "-6", "addr", "add", "fd00:200::10/64", "dev", "e6c" + tag, "nodad")
        sh("ip", "-n", a, "-6", "addr", "add", "fd00:200::1/64", "dev", "e6l" + tag, "nodad")
        for ns, dev in ((c, "e6c" + tag), (a, "e6l" + tag), (a, "e6w" + tag), (b, "e6v" + tag)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", c, "-6", "route", "add", "default", "via", "fd00:200::1")
        for addr in ("fd00:99::1/128", "fd00:99::2/128"):
            sh("ip", "-n", b, "-6", "addr", "add", addr, "dev", "lo")
        for ns in (a, b):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        yield {"c": c, "a": a, "b": b, "wan_a": "e6w" + tag, "wan_b": "e6v" + tag}
    finally:
        for ns in (c, a, b):
            sh("ip", "netns", "del", ns, check=False)


def start(lab, outer, enc="aes128", integ="sha256"):
    la, lb, plen, udp = OUTERS[outer]
    fam = "-6" if ":" in la else "-4"
    extra = ["nodad"] if ":" in la else []
    sh("ip", "-n", lab["a"], fam, "addr", "add", f"{la}/{plen}", "dev", lab["wan_a"], *extra)
    sh("ip", "-n", lab["b"], fam, "addr", "add", f"{lb}/{plen}", "dev", lab["wan_b"], *extra)
    pa, pb = rand_pair_json(0xA6000001, 0xB6000001, enc, integ)
    A = Peer(lab["a"], dict(ifname="cgw-tunA", inside="fd00:10::2/126", local_address=la, remote_address=lb,
                            pairs=[pa], udp_encap=udp, ts="::/0"))
    B = Peer(lab["b"], dict(ifname="cgw-tunB", inside="fd00:10::1/126", local_address=lb, remote_address=la,
                            pairs=[pb], udp_encap=udp, ts="::/0"))
    sh("ip", "-n", lab["a"], "-6", "route", "add", "fd00:99::/64", "dev", "cgw-tunA")
    sh("ip", "-n", lab["b"], "-6", "route", "add", "fd00:200::/64", "dev", "cgw-tunB")
    return A, B


def ping6(ns, dst, *args, count=3):
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-n", "-c", str(count), "-W", "2", *args, dst],
                          capture_output=True, text=True, timeout=60)


def tcp6(lab, total):
    srv = subprocess.Popen(["ip", "netns", "exec", lab["b"], PY, "-c", SERVER6, "fd00:99::1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert srv.stdout.readline().strip() == "LISTEN"
    cli = subprocess.run(["ip", "netns", "exec", lab["c"], PY, "-c", CLIENT, "fd00:99::1", str(total)],
                         capture_output=True, text=True, timeout=300)
    sout, _ = srv.communicate(timeout=30)
    assert cli.returncode == 0, cli.stderr
    sent, h_client, h_peer = cli.stdout.split()
    n, h_server = sout.split()
    assert int(sent) == total == int(n) and h_client == h_server == h_peer


@pytest.mark.parametrize("outer", list(OUTERS))
def test_ipv6_lan_to_vpc_through_the_tunnel(lab6, outer):
    A, B = start(lab6, outer)
    try:
        r = ping6(lab6["c"], "fd00:99::1")
        assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
        tcp6(lab6, 20 * 1024 * 1024)
        mtu = A.stats()["mtu"]
        # too big for the tunnel: A's kernel answers (the TUN's MTU is the tunnel's)
        r = ping6(lab6["c"], "fd00:99::1", "-s", "1440", "-M", "do", count=1)
        assert re.search(rf"From fd00:200::1 .*Packet too big: mtu={mtu}\b", r.stdout), r.stdout + r.stderr
        # the interface's MTU drifts above the tunnel's: the data path answers itself
        sh("ip", "-n", lab6["a"], "link", "set", "cgw-tunA", "mtu", "1500")
        r = ping6(lab6["c"], "fd00:99::2", "-s", "1440", "-M", "do", count=1)
        assert re.search(rf"From fd00:10::2 .*Packet too big: mtu={mtu}\b", r.stdout), r.stdout + r.stderr
        st_a = A.stats()
        assert st_a["icmp6_packet_too_big"] >= 1 and st_a["sas"][0]["drops"].get("too_big", 0) >= 1
    finally:
        fa, fb = A.finish(), B.finish()
    for f in (fa, fb):
        st = f["final"]
        assert st["inner_family"] == 6
        assert st["drops"] == {}, st["drops"]  # no router solicitation (nor anything else) dropped
        assert st["sas"][0]["auth_failures"] == 0
    assert fb["final"]["sas"][0]["bytes_in"] > 20 * 1024 * 1024
    la = OUTERS[outer][0]
    assert (fa["final"]["esp_socket"] == la) is (not OUTERS[outer][3])


@pytest.mark.parametrize("udp", [False, True], ids=["raw", "udp"])
def test_ipv4_inside_over_ipv6_outside(lab6, udp):
    """The other combination: an IPv4 tunnel whose ESP runs over IPv6 outside addresses."""
    la, lb = "2001:db8:1::1", "2001:db8:1::2"
    sh("ip", "-n", lab6["a"], "-6", "addr", "add", f"{la}/64", "dev", lab6["wan_a"], "nodad")
    sh("ip", "-n", lab6["b"], "-6", "addr", "add", f"{lb}/64", "dev", lab6["wan_b"], "nodad")
    pa, pb = rand_pair_json(0xA4000001, 0xB4000001, "aes256gcm16", None)
    A = Peer(lab6["a"], dict(ifname="cgw-tunA", inside="169.254.10.2/30", local_address=la, remote_address=lb,
                             pairs=[pa], udp_encap=udp))
    B = Peer(lab6["b"], dict(ifname="cgw-tunB", inside="169.254.10.1/30", local_address=lb, remote_address=la,
                             pairs=[pb], udp_encap=udp))
    try:
        r = subprocess.run(["ip", "netns", "exec", lab6["a"], "ping", "-4", "-n", "-c", "3", "-W", "2", "169.254.10.1"],
                           capture_output=True, text=True, timeout=60)
        assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
        srv = subprocess.Popen(["ip", "netns", "exec", lab6["b"], PY, "-c", SERVER, "169.254.10.1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "LISTEN"
        cli = subprocess.run(["ip", "netns", "exec", lab6["a"], PY, "-c", CLIENT, "169.254.10.1", str(5 << 20)],
                             capture_output=True, text=True, timeout=300)
        sout, _ = srv.communicate(timeout=30)
        assert cli.returncode == 0, cli.stderr
        sent, h_client, h_peer = cli.stdout.split()
        assert int(sent) == int(sout.split()[0]) == 5 << 20 and h_client == sout.split()[1] == h_peer
        assert A.stats()["mtu"] == (1418 if udp else 1426)  # GCM over IPv6: 40-byte outer header
    finally:
        fa, fb = A.finish(), B.finish()
    assert fa["final"]["drops"] == {} and fb["final"]["sas"][0]["auth_failures"] == 0
    assert (fa["final"]["esp_socket"] == la) is (not udp)
