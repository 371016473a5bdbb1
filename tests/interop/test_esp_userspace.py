"""Self-interop of the userspace ESP data path: two namespaces joined by a veth pair,
one UserspaceDatapath (own process, see esp_userspace_peer.py) in each, mirrored
hand-made SA pairs.  Ping and a 100 MB TCP transfer between the TUN inside addresses,
checksums compared; a rekey (make-before-break) under load; the raw-ESP (proto 50) path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEER = HERE / "esp_userspace_peer.py"
PY = sys.executable

if os.geteuid() != 0:
    pytest.skip("needs root (network namespaces, veth, TUN)", allow_module_level=True)
if not os.path.exists("/dev/net/tun"):
    pytest.skip("no /dev/net/tun", allow_module_level=True)
if shutil.which("ip") is None:
    pytest.skip("iproute2 'ip' not installed", allow_module_level=True)

SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("LISTEN", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
c.sendall(h.hexdigest().encode()); c.close()
print(n, h.hexdigest(), flush=True)
"""

CLIENT = r"""
import hashlib, socket, sys
total = int(sys.argv[2]); h = hashlib.sha256(); block = bytearray(1 << 16)
c = socket.create_connection((sys.argv[1], 5001), timeout=60); sent = 0; i = 0
while sent < total:
    blk = hashlib.sha512(i.to_bytes(8, "big")).digest() * 1024
    blk = blk[: min(len(blk), total - sent)]
    c.sendall(blk); h.update(blk); sent += len(blk); i += 1
c.shutdown(socket.SHUT_WR)
peer = c.recv(100).decode()
print(sent, h.hexdigest(), peer, flush=True)
"""

PING = r"""
import socket, struct, sys, time, os
dst = sys.argv[1]; n = int(sys.argv[2]); ok = 0
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); s.settimeout(2)
def csum(b):
    if len(b) % 2: b += b"\0"
    x = sum(struct.unpack("!%dH" % (len(b) // 2), b)); x = (x >> 16) + (x & 0xffff); x += x >> 16
    return ~x & 0xffff
for seq in range(n):
    payload = os.urandom(56)
    hdr = struct.pack("!BBHHH", 8, 0, 0, 4242, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), 4242, seq) + payload
    s.sendto(pkt, (dst, 0)); deadline = time.time() + 2
    while time.time() < deadline:
        try: d, a = s.recvfrom(2000)
        except socket.timeout: break
        icmp = d[(d[0] & 15) * 4:]
        if a[0] == dst and icmp[0] == 0 and icmp[8:] == payload: ok += 1; break
print(ok, flush=True)
"""


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def rand_pair_json(spi_a, spi_b, enc="aes128", integ="sha1"):
    from cgwd.ipsec_sa import ENC_KEY_BYTES, GCM_SALT_BYTES, INTEG_KEY_BYTES, is_aead

    kl = ENC_KEY_BYTES[enc] + (GCM_SALT_BYTES if is_aead(enc) else 0)
    ik = INTEG_KEY_BYTES[integ] if integ else 0
    k1, k2, i1, i2 = (os.urandom(n).hex() for n in (kl, kl, ik, ik))
    a = dict(spi_in=spi_a, spi_out=spi_b, encryption=enc, integrity=integ,
             enc_key_in=k1, enc_key_out=k2, integ_key_in=i1, integ_key_out=i2)
    b = dict(spi_in=spi_b, spi_out=spi_a, encryption=enc, integrity=integ,
             enc_key_in=k2, enc_key_out=k1, integ_key_in=i2, integ_key_out=i1)
    return a, b


class Peer:
    def __init__(self, ns, cfg):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, PY, str(PEER)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.send(cfg)
        line = self.p.stdout.readline()
        if line.strip() != "READY":
            self.p.kill()
            raise RuntimeError(f"peer failed: {line} {self.p.stderr.read()}")

    def send(self, obj):
        self.p.stdin.write(json.dumps(obj) + "\n")
        self.p.stdin.flush()

    def stats(self):
        self.send({"op": "stats"})
        return json.loads(self.p.stdout.readline())

    def finish(self):
        self.p.stdin.close()
        out = self.p.stdout.read()
        self.p.wait(timeout=20)
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def netns():
    tag = f"{os.getpid() % 100000}"
    a, b = f"cgwespA{tag}", f"cgwespB{tag}"
    sh("ip", "netns", "add", a)
    sh("ip", "netns", "add", b)
    try:
        sh("ip", "link", "add", "vA" + tag, "netns", a, "type", "veth", "peer", "name", "vB" + tag, "netns", b)
        sh("ip", "-n", a, "addr", "add", "198.51.100.1/24", "dev", "vA" + tag)
        sh("ip", "-n", b, "addr", "add", "198.51.100.2/24", "dev", "vB" + tag)
        for ns, dev in ((a, "vA" + tag), (b, "vB" + tag)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        sh("ip", "netns", "del", a, check=False)
        sh("ip", "netns", "del", b, check=False)


def start_peers(netns, pa, pb, udp_encap=True):
    a, b = netns
    ca = dict(ifname="cgw-tunA", inside="169.254.10.2/30", local_address="198.51.100.1",
              remote_address="198.51.100.2", pairs=[pa], udp_encap=udp_encap)
    cb = dict(ifname="cgw-tunB", inside="169.254.10.1/30", local_address="198.51.100.2",
              remote_address="198.51.100.1", pairs=[pb], udp_encap=udp_encap)
    return Peer(a, ca), Peer(b, cb)


def run_in(ns, code, *args, timeout=120):
    return subprocess.run(["ip", "netns", "exec", ns, PY, "-c", code, *args], capture_output=True,
                          text=True, timeout=timeout, check=True).stdout


def tcp_transfer(netns, total, during=None):
    a, b = netns
    srv = subprocess.Popen(["ip", "netns", "exec", b, PY, "-c", SERVER, "169.254.10.1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert srv.stdout.readline().strip() == "LISTEN"
    cli = subprocess.Popen(["ip", "netns", "exec", a, PY, "-c", CLIENT, "169.254.10.1", str(total)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if during:
        during()
    out, err = cli.communicate(timeout=300)
    sout, _ = srv.communicate(timeout=30)
    assert cli.returncode == 0, err
    sent, h_client, h_peer = out.split()
    n, h_server = sout.split()
    assert int(sent) == total == int(n)
    assert h_client == h_server == h_peer


@pytest.mark.parametrize("enc,integ", [("aes128", "sha1"), ("aes256gcm16", None)])
def test_ping_and_100mb_tcp(netns, enc, integ):
    pa, pb = rand_pair_json(0xA0000001, 0xB0000001, enc, integ)
    A, B = start_peers(netns, pa, pb)
    try:
        assert int(run_in(netns[0], PING, "169.254.10.1", "5")) == 5
        tcp_transfer(netns, 100 * 1024 * 1024)
    finally:
        fa, fb = A.finish(), B.finish()
    sa_a, sa_b = fa["final"]["sas"][0], fb["final"]["sas"][0]
    assert sa_a["auth_failures"] == sa_b["auth_failures"] == 0
    assert sa_b["bytes_in"] > 100 * 1024 * 1024
    # the TUN interfaces are gone with the data paths
    assert "cgw-tun" not in sh("ip", "-n", netns[0], "link").stdout


def test_rekey_make_before_break_under_load(netns):
    pa, pb = rand_pair_json(0xA0000001, 0xB0000001)
    A, B = start_peers(netns, pa, pb)
    na, nb = rand_pair_json(0xA0000002, 0xB0000002)

    def rekey():
        time.sleep(0.5)
        B.send({"op": "install", "pair": nb})  # responder first, like IKE quick mode
        A.send({"op": "install", "pair": na})
        time.sleep(0.5)
        A.send({"op": "remove", "spi_in": pa["spi_in"]})
        B.send({"op": "remove", "spi_in": pb["spi_in"]})

    try:
        tcp_transfer(netns, 40 * 1024 * 1024, during=rekey)
        assert int(run_in(netns[0], PING, "169.254.10.1", "3")) == 3
    finally:
        fa, fb = A.finish(), B.finish()
    (sa_a,) = fa["final"]["sas"]
    assert sa_a["spi_in"] == 0xA0000002 and sa_a["packets_out"] > 0
    (sa_b,) = fb["final"]["sas"]
    assert sa_b["packets_in"] > 0 and sa_b["auth_failures"] == 0


def test_raw_esp_protocol_50(netns):
    pa, pb = rand_pair_json(0xA0000001, 0xB0000001, "aes128", "sha256")
    A, B = start_peers(netns, pa, pb, udp_encap=False)
    try:
        assert int(run_in(netns[0], PING, "169.254.10.1", "3")) == 3
        tcp_transfer(netns, 5 * 1024 * 1024)
    finally:
        fa, fb = A.finish(), B.finish()
    assert fa["final"]["sas"][0]["udp_encap"] is False
    assert fb["final"]["sas"][0]["packets_in"] > 0
