"""cgwd's IKEv1 engine and its userspace ESP data path, without the daemon, inside a network
namespace: for interop tests of the data path against strongSwan (whose SAs only IKE can
make).

Usage: python esp_ike_peer.py CONFIG.json, where CONFIG holds ``peer`` (IkePeerConfig
fields; ``psk`` as text) and ``datapath`` (``ifname``, ``inside``). Every IpsecSaUp is
installed in the data path (a refusal is reported with its reason), IpsecSaDown removes the
pair. Prints one JSON object per line: events, and ``{"stats": ...}`` (secret-free) every
second and at exit (SIGTERM).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import signal
import sys

from cgwd.esp.datapath import SaInstallError, make_datapath
from cgwd.ike.endpoint import IkeEndpoint
from cgwd.ike.events import IpsecSaDown, IpsecSaUp
from cgwd.ike.session import IkePeer, IkePeerConfig


def out(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def main() -> None:
    cfg = json.load(open(sys.argv[1]))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    pc = dict(cfg["peer"])
    pc["psk"] = pc["psk"].encode()
    peer = IkePeer(IkePeerConfig(**pc), name="esp-interop")
    ep = IkeEndpoint(pc["local_address"])
    d = cfg["datapath"]
    dp = make_datapath("userspace", name="esp-interop", ifname=d["ifname"], inside=ipaddress.ip_interface(d["inside"]),
                       send_udp=ep.send_esp, udp_socket=lambda: ep.natt_socket, on_event=lambda ev: out({"event": repr(ev)}),
                       local_address=pc["local_address"])
    await dp.open()

    def on_ike(p, ev) -> None:
        if isinstance(ev, IpsecSaUp):
            try:
                dp.install(ev.pair)
                out({"event": "installed", "pair": ev.pair.describe(), "inner": ev.pair.inner_family})
            except SaInstallError as exc:
                out({"event": "install_failed", "reason": exc.reason, "detail": str(exc)})
        elif isinstance(ev, IpsecSaDown):
            dp.remove(ev.spi_in)
            out({"event": "removed", "spi_in": f"{ev.spi_in:08x}"})
        else:
            out({"event": type(ev).__name__})

    ep.event_handler = on_ike
    ep.esp_handler = dp.receive_esp
    ep.open()
    ep.add_peer(peer)
    ep.start_peer(peer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    while not stop.is_set():
        out({"stats": dp.stats(), "ike": peer.status().get("state")})
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    out({"stats": dp.stats(), "final": True})
    ep.stop_peer(peer)
    await asyncio.sleep(0.2)
    await dp.close()
    ep.close()


if __name__ == "__main__":
    asyncio.run(main())
