"""One end of data-path tests inside a network namespace: the kernel XFRM data path or the
userspace one, with hand-made SA pairs (no IKE). Used by guest_datapath.py in the QEMU guest,
whose kernel has ESP, to run cgwd's kernel path against its userspace path (an independent
ESP implementation: Linux's) and against itself. Long-lived (Python starts slowly under
TCG): one process serves every scenario, one data path at a time.

stdin, one JSON object per line, each answered with one JSON line on stdout:

* ``{"op": "open", ...}``: a data path with ``kind`` ("kernel" | "userspace"), ``ifname``,
  ``inside`` (IPv4 /30 or IPv6 /126), ``local_address``, ``remote_address`` (either family),
  ``udp_encap``, ``ts`` (selectors, e.g. "::/0"), ``pairs`` (keys as hex), optionally
  ``packet_limits`` [soft, hard] (the kernel's sequence-number limits, lowered for a test);
  answers ``{"ready": true}`` or ``{"error": ...}``;
* ``{"op": "stats"}``: ``{"stats": ..., "events": [...]}``;
* ``{"op": "close"}``: ``{"final": stats, "events": [...]}`` and everything removed;
* end of stdin: the open data path is closed, the process exits.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import traceback

from cgwd.esp import sa as sa_mod
from cgwd.esp.datapath import make_datapath
from cgwd.ipsec_sa import SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP, IpsecSaPair

_FOR_PAIR = sa_mod.Lifetime.for_pair.__func__


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, ref):
        self.ref = ref

    def datagram_received(self, data, addr):
        dp = self.ref[0]
        if dp is not None and data[:4] != b"\0\0\0\0" and data != b"\xff":
            dp.receive_esp(data, addr)


def pair_of(p: dict, cfg: dict) -> IpsecSaPair:
    ts = {"local_ts": cfg["ts"], "remote_ts": cfg["ts"]} if cfg.get("ts") else {}
    return IpsecSaPair(
        spi_in=p["spi_in"], spi_out=p["spi_out"], encryption=p["encryption"], integrity=p.get("integrity"),
        enc_key_in=bytes.fromhex(p["enc_key_in"]), enc_key_out=bytes.fromhex(p["enc_key_out"]),
        integ_key_in=bytes.fromhex(p.get("integ_key_in", "")), integ_key_out=bytes.fromhex(p.get("integ_key_out", "")),
        local_address=cfg["local_address"], remote_address=cfg["remote_address"],
        udp_encap=cfg.get("udp_encap", False), lifetime_seconds=p.get("lifetime_seconds", 3600), **ts)


def set_packet_limits(limits) -> None:
    """Lower the sequence-number packet limits of every pair installed from now on."""
    if not limits:
        sa_mod.Lifetime.for_pair = classmethod(_FOR_PAIR)
        return
    soft, hard = limits

    def for_pair(cls, pair, soft_margin=sa_mod.DEFAULT_SOFT_MARGIN_SECONDS):
        lt = _FOR_PAIR(cls, pair, soft_margin)
        lt.soft_packets, lt.hard_packets = soft, hard
        return lt

    sa_mod.Lifetime.for_pair = classmethod(for_pair)


class Session:
    def __init__(self) -> None:
        self.ref = [None]
        self.events: list[str] = []
        self.transport = None

    async def open(self, cfg: dict) -> dict:
        if self.ref[0] is not None:
            await self.close()
        loop = asyncio.get_running_loop()
        set_packet_limits(cfg.get("packet_limits"))
        self.events = []
        if cfg.get("udp_encap"):
            self.transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.ref),
                                                                    local_addr=(cfg["local_address"], 4500))
            if cfg["kind"] == "kernel":  # the kernel takes ESP-in-UDP off this socket itself
                self.transport.get_extra_info("socket").setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
        tr = self.transport
        dp = make_datapath(cfg["kind"], name=cfg["ifname"], ifname=cfg["ifname"],
                           inside=ipaddress.ip_interface(cfg["inside"]), mtu=cfg.get("mtu"),
                           send_udp=(lambda d, a: tr.sendto(d, a)) if tr else None,
                           on_event=lambda ev: self.events.append(repr(ev)), local_address=cfg["local_address"])
        await dp.open()
        self.ref[0] = dp
        for p in cfg.get("pairs", []):
            dp.install(pair_of(p, cfg))
        return {"ready": True}

    async def close(self) -> dict:
        dp, self.ref[0] = self.ref[0], None
        if dp is None:
            return {"final": None, "events": self.events}
        stats = dp.stats()
        await dp.close()
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        return {"final": stats, "events": self.events}


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    s = Session()
    print(json.dumps({"started": True}), flush=True)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        try:
            if cmd["op"] == "open":
                out = await s.open(cmd)
            elif cmd["op"] == "stats":
                out = {"stats": s.ref[0].stats(), "events": s.events}
            elif cmd["op"] == "close":
                out = await s.close()
            else:
                out = {"error": f"unknown op {cmd['op']!r}"}
        except Exception as exc:  # noqa: BLE001 - the guest script reports it
            out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        print(json.dumps(out), flush=True)
    await s.close()


if __name__ == "__main__":
    asyncio.run(main())
