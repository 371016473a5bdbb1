"""One end of the userspace ESP self-interop test (run inside a network namespace).

Reads a JSON description from stdin's first line (SA keys as hex, addresses of either
family, optional ``ts`` selectors such as "::/0", the inside address of the TUN: an IPv4
/30 or an IPv6 /126), opens a UserspaceDatapath with its TUN, owns a UDP socket on port
4500 standing in for the IKE endpoint, prints "READY" and runs until stdin closes; then
prints the stats as JSON (secret-free) and removes everything.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import sys

from cgwd.esp.datapath import make_datapath
from cgwd.ipsec_sa import IpsecSaPair


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, dp_ref):
        self.dp_ref = dp_ref

    def datagram_received(self, data, addr):
        dp = self.dp_ref[0]
        if dp is None:
            return
        if data[:4] == b"\0\0\0\0":  # non-ESP marker: IKE, not ours
            return
        if data == b"\xff":  # NAT-T keepalive
            return
        dp.receive_esp(data, addr)


async def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    loop = asyncio.get_running_loop()
    ref = [None]
    events = []
    transport = None
    if cfg.get("udp_encap", True):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(ref), local_addr=(cfg["local_address"], 4500)
        )
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    dp = make_datapath(
        "userspace",
        name="test",
        ifname=cfg["ifname"],
        inside=ipaddress.ip_interface(cfg["inside"]),
        mtu=cfg.get("mtu"),
        replay_window=cfg.get("replay_window", 1024),
        send_udp=(lambda data, addr: transport.sendto(data, addr)) if transport else None,
        on_event=events.append,
        local_address=cfg["local_address"],
    )
    await dp.open()
    ref[0] = dp
    ts = {"local_ts": cfg["ts"], "remote_ts": cfg["ts"]} if cfg.get("ts") else {}
    for p in cfg["pairs"]:
        dp.install(
            IpsecSaPair(
                spi_in=p["spi_in"],
                spi_out=p["spi_out"],
                encryption=p["encryption"],
                integrity=p.get("integrity"),
                enc_key_in=bytes.fromhex(p["enc_key_in"]),
                enc_key_out=bytes.fromhex(p["enc_key_out"]),
                integ_key_in=bytes.fromhex(p.get("integ_key_in", "")),
                integ_key_out=bytes.fromhex(p.get("integ_key_out", "")),
                local_address=cfg["local_address"],
                remote_address=cfg["remote_address"],
                udp_encap=cfg.get("udp_encap", True),
                **ts,
            )
        )
    print("READY", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd.get("op") == "install":
            p = cmd["pair"]
            dp.install(
                IpsecSaPair(
                    spi_in=p["spi_in"],
                    spi_out=p["spi_out"],
                    encryption=p["encryption"],
                    integrity=p.get("integrity"),
                    enc_key_in=bytes.fromhex(p["enc_key_in"]),
                    enc_key_out=bytes.fromhex(p["enc_key_out"]),
                    integ_key_in=bytes.fromhex(p.get("integ_key_in", "")),
                    integ_key_out=bytes.fromhex(p.get("integ_key_out", "")),
                    local_address=cfg["local_address"],
                    remote_address=cfg["remote_address"],
                    udp_encap=cfg.get("udp_encap", True),
                    **ts,
                )
            )
        elif cmd.get("op") == "remove":
            dp.remove(cmd["spi_in"])
        elif cmd.get("op") == "stats":
            print(json.dumps(dp.stats()), flush=True)
    stats = dp.stats()
    await dp.close()
    if transport:
        transport.close()
    print(json.dumps({"final": stats, "events": [repr(e) for e in events]}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
