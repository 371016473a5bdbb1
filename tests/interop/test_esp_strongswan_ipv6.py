"""IPv6 inner traffic between cgwd's userspace ESP data path and strongSwan's libipsec (an
independent ESP implementation), as AWS's TGW offers IPv6 VPNs (::/0 selectors, a /126
inside CIDR from fd00::/8), over IPv4 outside addresses with ESP-in-UDP.

The SAs come from a real quick mode: cgwd's IKEv1 engine (tests/interop/esp_ike_peer.py,
no daemon) against charon set up like an AWS endpoint with ``local_ts = remote_ts = ::/0``.
Then ping6 both ways between the inside addresses and 20 MiB of TCP over IPv6 with SHA-256
compared at both ends; the data path's counters must show it, with nothing dropped.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from ike_fixtures import PYTHON, REPO, SW_ADDR, US_ADDR, IkeLab, SwanConn, parse_sas, require_lab, sh

pytestmark = pytest.mark.interop

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "esp_ike_peer.py")
OUR_INSIDE, AWS_INSIDE = "fd00:10::2", "fd00:10::1"

SERVER = r"""
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("LISTEN", flush=True)
s.settimeout(120); c, _ = s.accept(); c.settimeout(120); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    h.update(d); n += len(d)
c.sendall(h.hexdigest().encode()); c.close()
print(n, h.hexdigest(), flush=True)
"""

CLIENT = r"""
import hashlib, socket, sys
total = int(sys.argv[2]); h = hashlib.sha256()
c = socket.create_connection((sys.argv[1], 5001), timeout=120); sent = 0; i = 0
while sent < total:
    blk = hashlib.sha512(i.to_bytes(8, "big")).digest() * 1024
    blk = blk[: min(len(blk), total - sent)]
    c.sendall(blk); h.update(blk); sent += len(blk); i += 1
c.shutdown(socket.SHUT_WR)
print(sent, h.hexdigest(), c.recv(100).decode(), flush=True)
"""


class Ipv6Lab(IkeLab):
    """IkeLab whose charon child has IPv6 selectors (an AWS IPv6 VPN tunnel)."""

    def write_swanctl(self, conn: SwanConn) -> None:
        super().write_swanctl(conn)
        p = self.dir / "swanctl.conf"
        text = p.read_text().replace("local_ts = 0.0.0.0/0", "local_ts = ::/0").replace(
            "remote_ts = 0.0.0.0/0", "remote_ts = ::/0")
        assert text.count("::/0") == 2
        p.write_text(text)

    def start_esp_runner(self, peer: dict, datapath: dict) -> None:
        cfg = self.dir / "esp-runner.json"
        cfg.write_text(json.dumps({"peer": peer, "datapath": datapath}))
        self.runner = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_us, PYTHON, RUNNER, str(cfg)], stdout=subprocess.PIPE,
            stderr=open(self.dir / "runner.stderr", "w"), text=True, start_new_session=True, cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)})
        os.set_blocking(self.runner.stdout.fileno(), False)

    def last_stats(self) -> dict:
        lines = [e for e in self.runner_events() if "stats" in e]
        return lines[-1]["stats"] if lines else {}


@pytest.fixture
def lab():
    require_lab()
    lab = Ipv6Lab()
    try:
        lab.setup()
        yield lab
    finally:
        lab.close()


def run_in(ns, code, *args, timeout=300):
    return subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout)


def ping6(ns, dst, count=3):
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-6", "-n", "-c", str(count), "-W", "2", dst],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("esp", ["aes128-sha256-modp2048", "aes256gcm16-modp2048"])
def test_ipv6_inner_traffic_against_libipsec(lab, esp):
    conn = SwanConn(proposals="aes128-sha256-modp2048", esp_proposals=esp)
    lab.start_charon(conn)
    lab.start_esp_runner({"local_address": US_ADDR, "remote_address": SW_ADDR, "psk": conn.psk,
                          "ike_proposals": [conn.proposals], "esp_proposals": [esp],
                          "local_ts": "::/0", "remote_ts": "::/0"},
                         {"ifname": "cgw-ike6", "inside": f"{OUR_INSIDE}/126"})
    lab.wait_for(lambda: any(e.get("event") == "installed" for e in lab.runner_events())
                 and "INSTALLED" in lab.list_sas(), 30, "the IPv6 child SA on both sides")
    sas = parse_sas(lab.list_sas())
    child = [c for c in sas["children"] if c["state"] == "INSTALLED"][0]
    assert child["mode"] == "TUNNEL-in-UDP"
    assert re.search(r"local\s+::/0", lab.list_sas()) and re.search(r"remote\s+::/0", lab.list_sas())
    installed = [e for e in lab.runner_events() if e.get("event") == "installed"]
    assert installed and installed[0]["inner"] == 6
    # the AWS side's inside address on libipsec's TUN, as AWS has it on its end
    sh("ip", "-n", lab.ns_sw, "-6", "addr", "add", f"{AWS_INSIDE}/126", "dev", "ipsec0", "nodad")
    sh("ip", "-n", lab.ns_sw, "link", "set", "ipsec0", "up")
    deadline = time.time() + 20
    while True:
        r = ping6(lab.ns_us, AWS_INSIDE)
        if " 0% packet loss" in r.stdout or time.time() > deadline:
            break
    assert " 0% packet loss" in r.stdout, r.stdout + r.stderr + lab.charon_log()[-3000:]
    r = ping6(lab.ns_sw, OUR_INSIDE)
    assert " 0% packet loss" in r.stdout, r.stdout + r.stderr
    srv = subprocess.Popen(["ip", "netns", "exec", lab.ns_sw, PYTHON, "-c", SERVER, AWS_INSIDE],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "LISTEN"
        total = 20 * 1024 * 1024
        cli = run_in(lab.ns_us, CLIENT, AWS_INSIDE, str(total))
        sout, serr = srv.communicate(timeout=60)
    finally:
        if srv.poll() is None:
            srv.kill()
    assert cli.returncode == 0, cli.stderr + serr
    sent, h_client, h_peer = cli.stdout.split()
    n, h_server = sout.split()
    assert int(sent) == total == int(n) and h_client == h_server == h_peer
    time.sleep(1.5)  # the runner prints its stats once a second
    st = lab.last_stats()
    sa = st["sas"][0]
    assert st["inner_family"] == 6 and sa["auth_failures"] == 0 and sa["replay_drops"] == 0
    assert sa["bytes_out"] > total
    assert st["drops"] == {}, st["drops"]
