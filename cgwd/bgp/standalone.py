"""BGP-only cgwd runner (no IPsec): sessions + RIB + kernel routes from a JSON file.

Used by the BGP interop tests inside network namespaces, and handy to debug BGP against
a peer over any link that already has the inside addresses configured.

Usage: python -m cgwd.bgp.standalone CONFIG.json
CONFIG: {"router_id", "local_asn", "tunnels": [{"name","ifname","local","remote","remote_asn",
         "hold_time"?, "prepend"?, "med"?}], "export": [...], "status_file", "ecmp"?,
         "max_prefix"?, "table"?, "metric"?}
Writes status JSON to status_file every 0.5 s; on SIGTERM stops the sessions
(Cease), removes its kernel routes, writes a final status and exits 0.
"""
import asyncio
import json
import logging
import os
import signal
import sys
import time

from ..routing.kernel import KernelRoutes
from ..routing.table import RoutingTable
from .policy import ExportPolicy
from .session import BgpPeerConfig, SessionDown, SessionUp
from .source import BgpRouteSource


async def main(cfg_path):
    cfg = json.load(open(cfg_path))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    kernel = KernelRoutes(cfg.get("table", 254), cfg.get("metric", 100))
    rt = RoutingTable(kernel=kernel, ecmp=cfg.get("ecmp", False), import_policy="aws-default",
                      max_prefix=cfg.get("max_prefix", 1000),
                      max_prefix_action=cfg.get("max_prefix_action", "warn"),
                      own_prefixes=cfg.get("export", []), fail_closed=cfg.get("fail_closed", False),
                      reconcile_interval=cfg.get("reconcile_interval", 5), name="standalone")
    rt.startup_cleanup()
    rt.start()
    history = []
    speakers = {}
    for i, t in enumerate(cfg["tunnels"]):
        peer = BgpPeerConfig(
            local_address=t["local"], remote_address=t["remote"], local_asn=cfg["local_asn"],
            remote_asn=t["remote_asn"], router_id=cfg["router_id"],
            hold_time=t.get("hold_time", 30), connect_retry=t.get("connect_retry", 2))

        def then(ev, name=t["name"]):
            if isinstance(ev, (SessionUp, SessionDown)):
                history.append({"tunnel": name, "event": type(ev).__name__,
                                "reason": getattr(ev, "reason", ""),
                                "notification": list(ev.notification[:2]) if getattr(ev, "notification", None) else None,
                                "t": time.monotonic()})
        exp = ExportPolicy(tuple(cfg.get("export", [])), prepend=t.get("prepend", 0), med=t.get("med"))
        src = BgpRouteSource(t["name"], rt, peer, exp, index=i, on_event=then, port=t.get("port", 179))
        speakers[t["name"]] = src
        rt.tunnel_up(t["name"], t["ifname"], t["remote"], index=i)
        await src.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    max_lag = [0.0]

    async def lag_probe():
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.05)
            max_lag[0] = max(max_lag[0], loop.time() - t0 - 0.05)

    probe = asyncio.ensure_future(lag_probe())

    def write_status(final=False):
        st = {"sessions": {n: sp.status() for n, sp in speakers.items()},
              "routes_count": len(rt.rib.selected),
              "installed_count": len(kernel.installed),
              "routes": rt.routes() if len(rt.rib.selected) <= 50 else [],
              "history": history, "max_loop_lag": max_lag[0], "final": final,
              "kernel_errors": rt.kernel_errors, "conflicts": len(kernel.conflicts)}
        tmp = cfg["status_file"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f, default=str)
        os.replace(tmp, cfg["status_file"])

    while not stop.is_set():
        write_status()
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass
    for sp in speakers.values():
        await sp.stop("cgwd test runner stopping")
    await rt.stop()
    probe.cancel()
    write_status(final=True)


def run(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit(__doc__)
    asyncio.run(main(argv[0]))


if __name__ == "__main__":
    run()
