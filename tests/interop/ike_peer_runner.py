"""Run one IkePeer on an IkeEndpoint (inside a network namespace) for interop tests.

Usage: python ike_peer_runner.py CONFIG.json. Prints one JSON object per line: events
({"event": ...}) and, every second and at exit, {"status": peer.status()}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

from cgwd.ike.endpoint import IkeEndpoint
from cgwd.ike.events import IpsecSaDown, IpsecSaUp, NatDetected, PeerDead, Phase1Down, Phase1Up
from cgwd.ike.v1 import IkePeer, IkePeerConfig


def out(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def describe(ev) -> dict:
    if isinstance(ev, IpsecSaUp):
        p = ev.pair
        return {"event": "IpsecSaUp", "spi_in": f"{p.spi_in:08x}", "spi_out": f"{p.spi_out:08x}",
                "encryption": p.encryption, "integrity": p.integrity, "udp_encap": p.udp_encap,
                "pfs_group": p.pfs_group, "replaces": None if p.replaces_spi_in is None else f"{p.replaces_spi_in:08x}",
                "remote_port": p.remote_port}
    if isinstance(ev, IpsecSaDown):
        return {"event": "IpsecSaDown", "spi_in": f"{ev.spi_in:08x}", "spi_out": f"{ev.spi_out:08x}", "reason": ev.reason}
    if isinstance(ev, Phase1Up):
        return {"event": "Phase1Up", "algorithms": ev.algorithms}
    if isinstance(ev, Phase1Down):
        return {"event": "Phase1Down", "reason": ev.reason}
    if isinstance(ev, NatDetected):
        return {"event": "NatDetected", "local": ev.local_behind_nat, "peer": ev.peer_behind_nat}
    if isinstance(ev, PeerDead):
        return {"event": "PeerDead"}
    return {"event": repr(ev)}


async def main() -> None:
    cfg = json.load(open(sys.argv[1]))
    pc = dict(cfg["peer"])
    pc["psk"] = pc["psk"].encode()
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    peer = IkePeer(IkePeerConfig(**pc), name="interop")
    ep = IkeEndpoint(pc["local_address"])
    ep.event_handler = lambda p, ev: out(describe(ev))
    ep.esp_handler = lambda data, remote: None
    ep.open()
    ep.add_peer(peer)
    if cfg.get("start", True):
        ep.start_peer(peer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    while not stop.is_set():
        out({"status": peer.status(), "endpoint": ep.counters})
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    ep.stop_peer(peer)
    await asyncio.sleep(0.2)
    out({"status": peer.status(), "endpoint": ep.counters, "final": True})
    ep.close()


if __name__ == "__main__":
    asyncio.run(main())
