"""Seed the fuzz corpus from a real lab run (root): cgwd against strongSwan + BIRD.

    .venv/bin/python tests/fuzz/capture_corpus.py [--out tests/fuzz/corpus]

Builds a lab (two AWS endpoints), captures with tcpdump on the WAN side of the customer
gateway (UDP 500/4500: IKE main/quick/informational messages, NAT-T keepalives, ESP) and on
the customer gateway's tunnel interfaces (TCP 179: BGP from BIRD and cgwd, in clear), runs
a ping, a `cgwctl rekey` (quick mode) and a SIGTERM (DELETE notifications), then writes one
file per distinct message:

    corpus/ike/<sha1>  an ISAKMP message (non-ESP marker removed)
    corpus/esp/<sha1>  an ESP packet as it arrives on UDP 4500 (SPI, sequence, ciphertext, ICV)
    corpus/ip/<sha1>   an inner IPv4 packet as it crossed the tunnel (the ESP harness encrypts it)
    corpus/bgp/<sha1>  one BGP message (header included)

The lab's PSKs and keys are never written: IKE messages after MM3 are encrypted with keys
that are thrown away with the lab, and inner packets carry BGP/ICMP only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, import_config, start_cgwd  # noqa: E402
from cgwd.lab.netns import run, wait_for  # noqa: E402
from cgwd.lab.topology import Lab, LabSpec, leftovers  # noqa: E402

MAX_PER_KIND = 40


def _save(out: str, kind: str, data: bytes, seen: dict) -> None:
    if not data or len(seen.setdefault(kind, set())) >= MAX_PER_KIND:
        return
    h = hashlib.sha1(data).hexdigest()[:16]
    if h in seen[kind]:
        return
    seen[kind].add(h)
    d = os.path.join(out, kind)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, h), "wb") as f:
        f.write(data)


def _bgp_messages(stream: bytes) -> list[bytes]:
    msgs, off = [], 0
    while off + 19 <= len(stream):
        n = int.from_bytes(stream[off + 16:off + 18], "big")
        if n < 19 or off + n > len(stream):
            break
        msgs.append(stream[off:off + n])
        off += n
    return msgs


def extract(wan_pcap: str, tun_pcap: str, out: str) -> dict:
    from scapy.all import IP, TCP, UDP, rdpcap  # scapy: tests only

    seen: dict = {}
    for pkt in rdpcap(wan_pcap):
        if UDP not in pkt:
            continue
        u = pkt[UDP]
        data = bytes(u.payload)
        if 500 in (u.sport, u.dport) and not (4500 in (u.sport, u.dport)):
            _save(out, "ike", data, seen)
        elif data == b"\xff":
            continue
        elif data[:4] == b"\0\0\0\0":
            _save(out, "ike", data[4:], seen)
        else:
            _save(out, "esp", data, seen)
    streams: dict = {}
    for pkt in rdpcap(tun_pcap):
        if IP not in pkt:
            continue
        ip = pkt[IP]
        _save(out, "ip", bytes(ip)[: ip.len], seen)
        if TCP in pkt:
            t = pkt[TCP]
            payload = bytes(t.payload)[: max(0, ip.len - ip.ihl * 4 - t.dataofs * 4)]
            if payload:
                key = (ip.src, t.sport, ip.dst, t.dport)
                streams.setdefault(key, {})[t.seq] = payload
    for segs in streams.values():
        stream = b"".join(segs[s] for s in sorted(segs))
        for m in _bgp_messages(stream):
            _save(out, "bgp", m, seen)
    return {k: len(v) for k, v in seen.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "corpus"))
    args = ap.parse_args()
    lab = Lab(LabSpec(prefix=f"fz{os.getpid() % 1000}", tunnels=2))
    caps = []
    try:
        lab.up()
        wan = os.path.join(lab.workdir, "wan.pcap")
        tun = os.path.join(lab.workdir, "tun.pcap")
        caps.append(lab.wan.popen(["tcpdump", "-U", "-n", "-s", "0", "-i", "cgw0", "-w", wan,
                                   "udp port 500 or udp port 4500"]))
        caps.append(lab.cgw.popen(["tcpdump", "-U", "-n", "-s", "0", "-i", "any", "-w", tun,
                                   "net 169.254.0.0/16 or net 10.0.0.0/8"]))
        time.sleep(1.5)
        config = import_config(lab)
        proc = start_cgwd(lab, config)
        wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 90, interval=0.5, what="cgwd ready")
        lab.wait_ping(30)
        lab.ping(5)
        name = cgwctl_status(lab, as_json=True)["tunnels"][0]["name"]
        run(cgwctl_command("rekey", name, "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
        time.sleep(4)
        lab.ping(3)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        time.sleep(1.5)
        for c in caps:
            c.send_signal(signal.SIGINT)
            c.wait(10)
        counts = extract(wan, tun, args.out)
        print("corpus:", counts)
        return 0
    finally:
        for c in caps:
            if c.poll() is None:
                c.kill()
                c.wait()
        lab.down()
        left = leftovers(lab.spec.prefix)
        if left:
            print("left behind:", left, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
