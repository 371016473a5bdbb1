"""One raw ESP socket per local address, shared by the tunnels on it and demultiplexed by
SPI (before: one raw socket per tunnel, each seeing every tunnel's ESP and counting the
others' as unknown SPIs)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys

import pytest

from cgwd.esp.datapath import SaInstallError
from cgwd.esp.espsock import EspSocket, EspSockets

from test_esp_datapath import Harness, pair_mirror


class FakeSock:
    """A socket object for EspSocket: recvfrom from a list, sendto recorded."""

    def __init__(self, incoming=()):
        self.incoming = list(incoming)
        self.sent = []
        self.closed = False

    def fileno(self):
        return -1

    def recvfrom(self, n):
        if not self.incoming:
            raise BlockingIOError
        return self.incoming.pop(0)

    def sendto(self, data, addr):
        self.sent.append((data, addr))

    def close(self):
        self.closed = True


def _ipv4(payload: bytes) -> bytes:
    return bytes([0x45]) + bytes(19) + payload


def test_dispatch_by_spi_and_count_strays_once():
    got_a, got_b = [], []
    s = EspSocket("192.0.2.2", sock=FakeSock([
        (_ipv4((0x1001).to_bytes(4, "big") + b"A" * 20), ("198.51.100.1", 0)),
        (_ipv4((0x2002).to_bytes(4, "big") + b"B" * 20), ("198.51.100.2", 0)),
        (_ipv4((0x9999).to_bytes(4, "big") + b"?" * 20), ("203.0.113.9", 0)),
        (b"\x45" + bytes(10), ("203.0.113.9", 0)),
        (_ipv4(b"\x00\x00"), ("203.0.113.9", 0)),
    ]))
    assert s.register(0x1001, lambda d, src: got_a.append((d, src)))
    assert s.register(0x2002, lambda d, src: got_b.append((d, src)))
    s.on_readable()
    assert [src for _, src in got_a] == ["198.51.100.1"] and got_a[0][0][:4] == (0x1001).to_bytes(4, "big")
    assert [src for _, src in got_b] == ["198.51.100.2"]
    assert s.counters == {"unknown_spi": 1, "truncated": 2}


def test_ipv6_socket_gets_no_header_and_handler_errors_are_contained():
    def boom(d, src):
        raise RuntimeError("bug")

    s = EspSocket("2001:db8::2", sock=FakeSock([((0x1001).to_bytes(4, "big") + bytes(20), ("2001:db8::1", 0, 0, 0))]))
    s.register(0x1001, boom)
    s.on_readable()
    assert s.counters == {"internal_error": 1}


def test_one_spi_one_handler():
    s = EspSocket("192.0.2.2", sock=FakeSock())
    h1, h2 = (lambda d, s_: None), (lambda d, s_: None)
    assert s.register(0x1001, h1) and s.register(0x1001, h1)
    assert not s.register(0x1001, h2)
    s.unregister(0x1001, h2)  # not its handler: stays
    assert s.spis() == [0x1001]
    s.unregister(0x1001, h1)
    assert s.spis() == []


def test_registry_opens_with_the_first_and_closes_with_the_last():
    opened = []

    def opener(addr):
        s = EspSocket(addr, sock=FakeSock())
        opened.append(s)
        return s

    reg = EspSockets(opener=opener)
    u1, u2, u3 = object(), object(), object()
    s1 = reg.acquire("192.0.2.2", u1)
    assert reg.acquire("192.0.2.2", u2) is s1 and len(opened) == 1
    s3 = reg.acquire("2001:db8::2", u3)
    assert s3 is not s1 and reg.addresses() == ["192.0.2.2", "2001:db8::2"]
    reg.release("192.0.2.2", u1)
    assert not s1.sock.closed and reg.get("192.0.2.2") is s1
    reg.release("192.0.2.2", u2)
    assert s1.sock.closed and reg.get("192.0.2.2") is None
    reg.release("192.0.2.2", u2)  # again: nothing
    assert reg.stats() == {"2001:db8::2": {"users": 1, "spis": 0, "drops": {}}}


def _fake_registry():
    return EspSockets(opener=lambda addr: EspSocket(addr, sock=FakeSock()))


def test_datapaths_on_one_address_share_a_socket_and_refuse_a_taken_spi():
    reg = _fake_registry()
    kw = dict(esp_sockets=reg)
    h1, h2 = Harness(**kw), Harness(**kw)
    p1, _ = pair_mirror(0x1001, 0x2002, udp_encap=False)
    p2, _ = pair_mirror(0x3003, 0x4004, udp_encap=False, b_addr="198.51.100.2")
    h1.a.install(p1)
    h2.a.install(p2)
    sock = reg.get("192.0.2.2")
    assert sorted(sock.spis()) == [0x1001, 0x3003] and reg.stats()["192.0.2.2"]["users"] == 2
    clash, _ = pair_mirror(0x1001, 0x5005, udp_encap=False, b_addr="198.51.100.3")
    h3 = Harness(**kw)
    with pytest.raises(SaInstallError) as ei:
        h3.a.install(clash)
    assert ei.value.reason == "spi_in_use" and h3.a.stats()["sas"] == []
    # removing a pair gives its SPI up; the socket stays while a tunnel uses it
    h1.a.remove(0x1001)
    assert sock.spis() == [0x3003]
    h3.a.install(clash)
    assert sorted(sock.spis()) == [0x1001, 0x3003]
    for h in (h1, h2, h3):
        import asyncio

        asyncio.run(h.a.close())
        h.close()
    assert reg.get("192.0.2.2") is None and sock.sock.closed


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or not os.path.exists("/dev/net/tun"),
                    reason="needs root, unshare(1) and /dev/net/tun")
def test_two_tunnels_on_one_address_in_a_namespace():
    """Real TUNs and raw sockets in a namespace of the test's own: tunnels X and Y share the
    local address 192.0.2.2 with peers A (198.51.100.1) and B (198.51.100.2). Each tunnel
    receives its own peer's ESP and counts nothing of the other's; one raw socket on
    192.0.2.2 serves both, it outlives X and goes with Y (counted in /proc/net/raw)."""
    script = r"""
import asyncio, ipaddress, json, os, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
for a in ("192.0.2.2", "198.51.100.1", "198.51.100.2"):
    subprocess.run(["ip", "addr", "add", a + "/32", "dev", "lo"], check=True)
from cgwd.esp.datapath import make_datapath
from cgwd.ipsec_sa import IpsecSaPair

def raw_esp_sockets(addr):
    hexaddr = "%08X" % int.from_bytes(ipaddress.IPv4Address(addr).packed[::-1], "big")
    n = 0
    for line in open("/proc/net/raw").read().splitlines()[1:]:
        f = line.split()
        if f[1] == hexaddr + ":0032":
            n += 1
    return n

def pairs(spi_a, spi_b, a, b):
    k = [os.urandom(16) for _ in range(2)] + [os.urandom(20) for _ in range(2)]
    return (IpsecSaPair(spi_a, spi_b, "aes128", "sha1", k[0], k[1], k[2], k[3], local_address=a, remote_address=b),
            IpsecSaPair(spi_b, spi_a, "aes128", "sha1", k[1], k[0], k[3], k[2], local_address=b, remote_address=a))

async def main():
    x_pair, a_pair = pairs(0x1001, 0x2001, "192.0.2.2", "198.51.100.1")
    y_pair, b_pair = pairs(0x1002, 0x2002, "192.0.2.2", "198.51.100.2")
    dps = {}
    for name, addr, inside, p in (("x", "192.0.2.2", "169.254.10.2/30", x_pair),
                                  ("y", "192.0.2.2", "169.254.11.2/30", y_pair),
                                  ("a", "198.51.100.1", "169.254.10.1/30", a_pair),
                                  ("b", "198.51.100.2", "169.254.11.1/30", b_pair)):
        dp = make_datapath("userspace", name=name, ifname="cgw-" + name, inside=ipaddress.IPv4Interface(inside),
                           send_udp=None, on_event=print, local_address=addr)
        await dp.open()
        dp.install(p)
        dps[name] = dp
    from scapy.layers.inet import IP, ICMP
    ping_x = bytes(IP(src="169.254.10.1", dst="169.254.10.2") / ICMP() / b"to-x")
    ping_y = bytes(IP(src="169.254.11.1", dst="169.254.11.2") / ICMP() / b"to-y")
    def got(name):
        return dps[name].stats()["sas"][0]["packets_in"]
    async def until(pred):
        for _ in range(200):
            if pred():
                return True
            await asyncio.sleep(0.02)
        return False
    dps["a"].send_inner(ping_x)
    dps["b"].send_inner(ping_y)
    delivered = await until(lambda: got("x") >= 1 and got("y") >= 1)
    await asyncio.sleep(0.2)  # anything else that would arrive, arrives
    out = {"delivered": delivered, "x": dps["x"].stats(), "y": dps["y"].stats(),
           "sockets_both": raw_esp_sockets("192.0.2.2")}
    await dps["x"].close()
    out["sockets_after_x"] = raw_esp_sockets("192.0.2.2")
    dps["b"].send_inner(ping_y)
    out["y_still"] = await until(lambda: got("y") >= 2)
    await dps["y"].close()
    out["sockets_after_y"] = raw_esp_sockets("192.0.2.2")
    for n in ("a", "b"):
        await dps[n].close()
    print(json.dumps(out, default=str))

asyncio.run(main())
"""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.run(["unshare", "-n", sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["delivered"], res
    for t in ("x", "y"):
        assert res[t]["sas"][0]["packets_in"] == 1, res[t]
        assert "unknown_spi" not in res[t]["drops"], (t, res[t]["drops"])
    assert res["sockets_both"] == 1
    assert res["sockets_after_x"] == 1 and res["y_still"]
    assert res["sockets_after_y"] == 0
