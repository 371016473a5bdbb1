"""The daemon's status, assembled in one place from what each room reports.

Every tunnel returns its own status (built from its parts: IKE engine, data path, route
source); the daemon adds the process, the routing tables, the supervised tasks and the last
reload. ``cgwctl status`` renders it (``status_format.py``), ``/metrics`` exposes it
(``metrics.py``); nothing else builds status.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import TYPE_CHECKING

from . import __version__
from .esp.espsock import ESP_SOCKETS
from .routing.static import route_report
from .tunnel.static_part import StaticPart

if TYPE_CHECKING:
    from .daemon import Daemon


def process_stats() -> dict:
    """Resource use of this process (leak checks: flaps must not make these grow)."""
    out: dict = {"asyncio_tasks": len(asyncio.all_tasks())}
    try:
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def mono_to_wall(t: float | None) -> float | None:
    if t is None:
        return None
    return time.time() - (asyncio.get_running_loop().time() - t)


def _drops(d: "Daemon") -> dict[str, int]:
    out = dict(d.drops)
    for sock in ESP_SOCKETS.stats().values():  # raw ESP for no tunnel's SPI, per local address
        for k, v in (sock.get("drops") or {}).items():
            out[f"esp_{k}"] = out.get(f"esp_{k}", 0) + v
    for ep in d.endpoints.values():
        for k, v in ep.counters.items():
            if k.startswith("drop"):
                key = f"ike_{k.removeprefix('drop_')}"
                out[key] = out.get(key, 0) + v
    for t in d.tunnels.values():
        for k, n in t.bgp_drop_counts().items():
            out[f"bgp_{k}"] = out.get(f"bgp_{k}", 0) + n
    return out


def vpn_status(name: str, routing, tunnels: list[dict] = ()) -> dict:
    """What the VPN's routing table runs with (read from the running objects, not the config);
    a static VPN connection's routes with the tunnel carrying each (and why none does) from
    its ``tunnels``' status."""
    rib = routing.rib
    st = {**routing.status(), "name": name, "ecmp": rib.ecmp, "max_prefix": rib.max_prefix,
          "max_prefix_action": rib.max_prefix_action, "import_policy": routing.import_policy.to_config()}
    if st.get("routing") == "static":
        st["static"] = route_report(st.get("carriers") or {}, [t for t in tunnels if t.get("vpn") == name])
    return st


def build_status(d: "Daemon") -> dict:
    routes = []
    for r in d.routing.values():
        routes.extend(r.routes())
    cfg = d.config
    tunnels = [t.status(mono_to_wall) for t in d.tunnels.values()]
    return {
        "version": __version__, "pid": os.getpid(), "started_at": mono_to_wall(d.started_mono), "now": time.time(),
        "hostname": socket.gethostname(), "config": d.config_path,
        "datapath": {"requested": cfg.daemon.datapath, "kind": d.datapath_kind, "reason": d.datapath_reason},
        "tunnels": tunnels,
        "vpns": [vpn_status(name, r, tunnels) for name, r in d.routing.items()],
        "routes": routes,
        "lan": d.lan.status(),
        "drops": _drops(d),
        "tasks": d.supervisor.status(),
        "system": [f.as_dict() for f in d.check_system()],
        "esp_sockets": ESP_SOCKETS.stats(),
        "last_reload": d.last_reload and {**d.last_reload, "at": mono_to_wall(d.last_reload["at"])},
        "process": process_stats(),
    }


def summary(d: "Daemon") -> str:
    ups = [t.summary_up() for t in d.tunnels.values()]
    ipsec = sum(1 for sa, _ in ups if sa)
    bgp = sum(1 for _, b in ups if b)
    routes = sum(len(r.routes()) for r in d.routing.values())
    static = [t.routes for t in d.tunnels.values() if isinstance(t.routes, StaticPart)]
    carrying = f", {sum(p.carrying for p in static)} carrying static routes" if static else ""
    return f"{ipsec}/{len(ups)} tunnels up, {bgp} BGP established{carrying}, {routes} routes"
