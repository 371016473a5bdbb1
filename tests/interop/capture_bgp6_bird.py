"""Capture the bytes BIRD 2 sends on an IPv6-only eBGP session, as an AWS Transit Gateway's
IPv6 VPN tunnel carries it (run as root, by hand):

    .venv/bin/python tests/interop/capture_bgp6_bird.py [tests/unit/data/bgp6_bird.json]

Two namespaces joined by a veth pair with a /126 from fd00::/8: BIRD (AS 64512, one ``ipv6``
channel, static IPv6 routes with a MED) on one side; on the other a plain TCP socket that
sends an OPEN with the IPv6 unicast capability only and records every message BIRD sends:
its OPEN, the UPDATEs (MP_REACH_NLRI with BIRD's global and link-local next hop), its
End-of-RIB, and after a reconfiguration without one route the MP_UNREACH_NLRI. Nothing is
encoded or decoded by cgwd here: the unit tests check cgwd's decoder against these bytes.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NS_BIRD, NS_US = "v6capA", "v6capB"
BIRD_ADDR, OUR_ADDR = "fd00:0:0:10::1", "fd00:0:0:10::2"
ROUTES_FULL = [("2001:db8:100::/56", 50), ("2001:db8:200::/48", 50), ("2001:db8:300::/40", 70)]


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def bird_conf(routes) -> str:
    statics = "".join(f"  route {p} blackhole {{ bgp_med = {med}; }};\n" for p, med in routes)
    return f"""router id 198.51.100.2;
log stderr all;
protocol device {{ scan time 1; }}
protocol static s6 {{
  ipv6;
{statics}}}
protocol bgp cgw {{
  local {BIRD_ADDR} as 64512;
  neighbor {OUR_ADDR} as 65000;
  hold time 30;
  keepalive time 10;
  passive on;
  ipv6 {{ import all; export where proto = "s6"; }};
}}
"""


def frame(mtype: int, body: bytes = b"") -> bytes:
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), mtype) + body


def our_open() -> bytes:
    caps = bytes([1, 4]) + struct.pack("!HBB", 2, 0, 1) + bytes([65, 4]) + struct.pack("!I", 65000)
    params = bytes([2, len(caps)]) + caps
    body = struct.pack("!BHH4sB", 4, 65000, 30, bytes([203, 0, 113, 2]), len(params)) + params
    return frame(1, body)


def read_messages(sock: socket.socket, until: float) -> list[bytes]:
    buf, out = b"", []
    sock.settimeout(0.5)
    while time.time() < until:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        buf += data
        while len(buf) >= 19:
            n = struct.unpack("!H", buf[16:18])[0]
            if len(buf) < n:
                break
            out.append(buf[:n])
            buf = buf[n:]
    return out


def main() -> None:
    out_path = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/unit/data/bgp6_bird.json")
    work = tempfile.mkdtemp(prefix="cgwd-bgp6cap-")
    conf, ctl = os.path.join(work, "bird.conf"), os.path.join(work, "bird.ctl")
    for ns in (NS_BIRD, NS_US):
        sh("ip", "netns", "add", ns)
    bird = None
    try:
        sh("ip", "link", "add", "v6a", "netns", NS_BIRD, "type", "veth", "peer", "v6b", "netns", NS_US)
        for ns, dev, addr in ((NS_BIRD, "v6a", BIRD_ADDR), (NS_US, "v6b", OUR_ADDR)):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/126", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        time.sleep(2)  # link-local addresses out of DAD: BIRD sends its link-local next hop
        Path(conf).write_text(bird_conf(ROUTES_FULL))
        bird = subprocess.Popen(["ip", "netns", "exec", NS_BIRD, "bird", "-f", "-c", conf, "-s", ctl],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)
        script = (
            "import socket, sys, json, time\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from capture_bgp6_bird import our_open, frame, read_messages\n"
            "s = socket.socket(socket.AF_INET6)\n"
            f"s.bind(({OUR_ADDR!r}, 0)); s.connect(({BIRD_ADDR!r}, 179))\n"
            "s.sendall(our_open() + frame(4))\n"
            "first = read_messages(s, time.time() + 6)\n"
            "print(json.dumps([m.hex() for m in first]), flush=True)\n"
            "sys.stdin.readline()\n"
            "s.sendall(frame(4))\n"
            "second = read_messages(s, time.time() + 6)\n"
            "print(json.dumps([m.hex() for m in second]), flush=True)\n"
        )
        peer = subprocess.Popen(["ip", "netns", "exec", NS_US, sys.executable, "-c", script],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = json.loads(peer.stdout.readline())
        Path(conf).write_text(bird_conf(ROUTES_FULL[:2]))
        sh("ip", "netns", "exec", NS_BIRD, "birdc", "-s", ctl, "configure")
        peer.stdin.write("\n")
        peer.stdin.flush()
        second = json.loads(peer.stdout.readline())
        peer.wait(20)
        version = sh("bird", "--version", check=False) or subprocess.run(
            ["bird", "--version"], capture_output=True, text=True).stderr
        out_path.write_text(json.dumps({
            "source": f"{version.strip()} in a network namespace, IPv6-only eBGP session "
                      f"({BIRD_ADDR} AS 64512 -> {OUR_ADDR} AS 65000), captured by "
                      "tests/interop/capture_bgp6_bird.py",
            "routes": [{"prefix": p, "med": med} for p, med in ROUTES_FULL],
            "withdrawn_after_reconfigure": [ROUTES_FULL[2][0]],
            "bird_address": BIRD_ADDR,
            "first": first, "after_reconfigure": second}, indent=1) + "\n")
        print(f"wrote {out_path}: {len(first)} + {len(second)} messages")
    finally:
        if bird is not None:
            bird.terminate()
            bird.wait(10)
        for ns in (NS_BIRD, NS_US):
            sh("ip", "netns", "del", ns, check=False)
        subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
