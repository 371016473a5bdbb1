"""`cgwd`: the process room. One asyncio process that keeps every configured AWS tunnel up.

What lives here: the config (load, reload), signals, the UDP endpoints (one per local
address, shared by the tunnels on it), the VPNs' routing tables, the control socket, the
metrics endpoint and the supervisor of every long-lived task. What a tunnel is (IKE engine,
data path, route source and what joins them) lives in :mod:`cgwd.tunnel`; the status is
assembled in :mod:`cgwd.status`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

from . import __version__
from .routing.kernel import KernelRoutes
from .routing.table import RoutingSettings, RoutingTable
from .config import Config, ConfigError, TunnelConfig, VpnConfig, daemon_changes, load_config
from .control import ControlError, ControlServer
from .esp.datapath import choose_datapath
from .ike.endpoint import IkeEndpoint
from .logging_setup import register_secret, setup_logging
from .sdnotify import SdNotifier
from .status import build_status, summary
from .supervisor import Supervisor
from .system_checks import Finding, check_system
from .lan.part import LanBgp, lan_routing_settings
from .tunnel import Tunnel
from .tunnel.bgp_part import BgpPart

log = logging.getLogger("cgwd")


def _register_lan_passwords(config: Config) -> None:
    """The LAN neighbors' TCP MD5 passwords, redacted from every log line (as the PSKs are)."""
    for n in config.lan_neighbors:
        if n.password:
            register_secret(n.password)

ESP_LIVENESS_INTERVAL = 1.0  # seconds between looks at the data paths' inbound counters
SYSTEM_CHECK_INTERVAL = 60.0  # seconds between looks at what the box lacks (sysctls, /dev/net/tun)


class Daemon:
    def __init__(self, config_path: str, socket_path: str | None = None):
        self.config_path = config_path
        self.socket_override = socket_path
        self.config: Config | None = None
        self.tunnels: dict[str, Tunnel] = {}
        self.routing: dict[str, RoutingTable] = {}
        self.inherited_guards: set[str] = set()  # fail-closed prefixes a crashed run left (kept)
        self.endpoints: dict[str, IkeEndpoint] = {}
        self.by_remote: dict[str, Tunnel] = {}
        self.datapath_kind = "userspace"
        self.datapath_reason = ""
        self.control: ControlServer | None = None
        self.metrics = None
        self.notifier = SdNotifier()
        self.started_mono = time.monotonic()  # the event loop's clock; status shows it as wall time
        self.drops: dict[str, int] = {}
        self.last_reload: dict | None = None
        self.system_findings: list[Finding] = []
        self.exit_code = 0
        self.supervisor = Supervisor(self._fatal)
        self.lan = LanBgp(self._lan_targets)  # LAN-side BGP (cgwd.lan): [[lan_neighbor]]
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    # ------------------------------------------------------------------ helpers
    def _count(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _lan_targets(self) -> list[BgpPart]:
        return [t.routes for t in self.tunnels.values() if isinstance(t.routes, BgpPart)]

    def _fatal(self, task: str, reason: str) -> None:
        self.exit_code = 1
        self._stop.set()

    def _endpoint(self, local_address: str) -> IkeEndpoint:
        ep = self.endpoints.get(local_address)
        if ep is None:
            ep = IkeEndpoint(local_address)
            if self.datapath_kind == "kernel":
                ep.enable_kernel_encap()
            ep.event_handler = self._on_ike_event
            ep.esp_handler = self._on_udp_esp
            ep.open()
            self.endpoints[local_address] = ep
        return ep

    def _close_unused_endpoints(self) -> None:
        used = {str(t.cfg.local_address) for t in self.tunnels.values()}
        for addr in [a for a in self.endpoints if a not in used]:
            self.endpoints.pop(addr).close()
            log.info("event=endpoint-closed local=%s (no tunnel uses it)", addr)

    def _on_ike_event(self, peer, ev) -> None:
        t = self.by_remote.get(peer.config.remote_address)
        if t is None or t.engine is not peer:
            return
        try:
            t.on_ike_event(ev)
        except Exception:  # noqa: BLE001 - one tunnel's trouble must not take the others down
            log.exception("tunnel=%s event=ike-event-failed", t.name)

    def _on_udp_esp(self, data: bytes, remote: tuple[str, int]) -> None:
        t = self.by_remote.get(remote[0])
        if t is None or not t.receive_esp(data, remote):
            self._count("esp_from_unknown_peer")

    # ------------------------------------------------------------------ VPNs and tunnels
    def _routing_for(self, vpn: VpnConfig) -> RoutingTable:
        routing = self.routing.get(vpn.name)
        if routing is None:
            d = self.config.daemon
            routing = RoutingTable(RoutingSettings.from_config(self.config, vpn),
                                   kernel=KernelRoutes(d.route_table, d.route_metric, d.route_protocol),
                                   name=vpn.name)
            if vpn.fail_closed and self.inherited_guards:  # a crashed run's: guarded until carried
                routing.inherit_guards(self.inherited_guards)
            routing.start(maintenance=False)  # fail-closed routes now; the supervisor runs maintain()
            self.routing[vpn.name] = routing
            self.lan.attach(vpn.name, routing)
            self._spawn_maintenance(vpn.name, routing)
        return routing

    def _spawn_maintenance(self, name: str, routing: RoutingTable) -> None:
        interval = self.config.daemon.reconcile_interval
        self.supervisor.spawn(f"routing:{name}", lambda: routing.maintain(interval))

    async def _drop_routing(self, name: str) -> None:
        routing = self.routing.pop(name, None)
        if routing is None:
            return
        self.lan.detach(name)
        await self.supervisor.stop(f"routing:{name}")
        routing.clear()
        await asyncio.to_thread(routing.close)

    async def _start_tunnel(self, cfg: TunnelConfig, vpn: VpnConfig, index: int) -> None:
        t = Tunnel(cfg, self._routing_for(vpn), index, endpoint=self._endpoint(str(cfg.local_address)),
                   datapath_kind=self.datapath_kind)
        register_secret(cfg.psk)
        self.tunnels[cfg.name] = t
        self.by_remote[str(cfg.remote_address)] = t
        try:
            await t.start()
        except Exception as exc:
            log.error("tunnel=%s event=start-failed error=%s", cfg.name, exc)
            self.tunnels.pop(cfg.name, None)
            self.by_remote.pop(str(cfg.remote_address), None)
            await t.stop("start failed")
            raise

    async def _stop_tunnel(self, name: str, reason: str) -> None:
        t = self.tunnels.pop(name, None)
        if t is None:
            return
        if self.by_remote.get(str(t.cfg.remote_address)) is t:
            del self.by_remote[str(t.cfg.remote_address)]
        await t.stop(reason)

    async def _start_tunnels(self, items: list[tuple[TunnelConfig, VpnConfig, int]]) -> list[str]:
        """Start tunnels at once (one tunnel's TUN/netlink set-up overlaps the others' IKE
        exchanges; bench/bringup_memory.py); returns the names that failed (logged)."""
        res = await asyncio.gather(*(self._start_tunnel(c, v, i) for c, v, i in items), return_exceptions=True)
        return [c.name for (c, _v, _i), r in zip(items, res) if isinstance(r, BaseException)]

    def _cleanup_previous_run(self) -> None:
        """Remove what a crashed run left: our routes (by protocol id) and stale tunnel interfaces."""
        d = self.config.daemon
        try:
            kr = KernelRoutes(d.route_table, d.route_metric, d.route_protocol)
            keep = any(v.fail_closed for v in self.config.vpns)
            n = kr.flush_stale(d.route_protocol, keep_unreachable=keep)
            kr.close()
            self.inherited_guards = set(kr.kept)
            if n:
                log.warning("event=startup-cleanup removed_routes=%d (left by a previous run)", n)
            if kr.kept:
                log.warning("event=startup-cleanup kept_fail_closed=%d (left by a previous run: unreachable "
                            "until a tunnel carries them)", len(kr.kept))
        except Exception as exc:  # noqa: BLE001
            log.warning("event=startup-cleanup-failed what=routes error=%s", exc)
        try:
            from pyroute2 import IPRoute
            with IPRoute() as ipr:
                for t in self.config.tunnels:
                    idx = ipr.link_lookup(ifname=t.ifname)
                    if idx:
                        ipr.link("del", index=idx[0])
                        log.warning("event=startup-cleanup removed_interface=%s (left by a previous run)",
                                    t.ifname)
        except Exception as exc:  # noqa: BLE001
            log.warning("event=startup-cleanup-failed what=interfaces error=%s", exc)

    # ------------------------------------------------------------------ run / stop
    async def run(self) -> int:
        try:
            self.config = load_config(self.config_path)
        except ConfigError as exc:
            print(f"cgwd: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"cgwd: cannot read config {self.config_path}: {exc.strerror}", file=sys.stderr)
            return 2
        setup_logging(self.config.daemon.log_level)
        for w in self.config.warnings:
            log.warning("event=config-warning %s", w)
        self.datapath_kind, self.datapath_reason = choose_datapath(self.config.daemon.datapath)
        log.info("event=datapath kind=%s reason=%s", self.datapath_kind, self.datapath_reason)
        loop = asyncio.get_running_loop()
        for sig, fn in ((signal.SIGTERM, self._stop.set), (signal.SIGINT, self._stop.set),
                        (signal.SIGHUP, self._reload.set)):
            loop.add_signal_handler(sig, fn)
        await asyncio.to_thread(self._cleanup_previous_run)
        sock = self.socket_override or self.config.daemon.socket
        self.control = ControlServer(sock, self.handle_control)
        try:
            await self.control.start()
        except (OSError, ControlError) as exc:  # e.g. another cgwd already listens there
            log.error("event=control-socket-failed path=%s error=%s", sock, exc)
            return 1
        await self._start_tunnels([(t, v, i) for v in self.config.vpns for i, t in enumerate(v.tunnels)])
        _register_lan_passwords(self.config)
        d = self.config.daemon
        self.lan.table = RoutingTable(lan_routing_settings(self.config), name="lan",
                                      kernel=KernelRoutes(d.route_table, d.route_metric, d.route_protocol))
        await self.lan.start(self.config.lan_neighbors)
        if self.config.daemon.metrics_listen:
            await self._start_metrics()
        self.supervisor.spawn("notify", self._notify_loop)
        self.supervisor.spawn("esp-liveness", self._esp_liveness_loop)
        self.check_system()
        self.supervisor.spawn("system-checks", self._system_check_loop)
        self.notifier.ready(self.summary())
        log.info("event=ready tunnels=%d socket=%s", len(self.tunnels), sock)
        while True:
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            for f in (stop, reload):
                f.cancel()
            if self._stop.is_set():
                break
            self._reload.clear()
            await self.reload()
        await self.shutdown()
        return self.exit_code

    async def _start_metrics(self) -> None:
        from .metrics import MetricsServer
        try:
            self.metrics = MetricsServer(self.config.daemon.metrics_listen, self.status)
            await self.metrics.start()
            log.info("event=metrics listen=%s", self.config.daemon.metrics_listen)
        except Exception as exc:  # noqa: BLE001
            log.error("event=metrics-failed listen=%s error=%s", self.config.daemon.metrics_listen, exc)
            self.metrics = None

    async def _esp_liveness_loop(self) -> None:
        while True:
            await asyncio.sleep(ESP_LIVENESS_INTERVAL)
            for t in list(self.tunnels.values()):
                try:
                    t.esp_liveness()
                except Exception:  # noqa: BLE001 - one tunnel's trouble must not stop the loop
                    log.exception("tunnel=%s event=esp-liveness-failed", t.name)

    def check_system(self) -> list[Finding]:
        """What the box lacks for the configured tunnels (forwarding off, strict rp_filter,
        no /dev/net/tun...): kept for status and metrics, each new one logged once."""
        tunnels = list(self.tunnels.values())
        found = check_system(inner_families={t.cfg.inner_family for t in tunnels} or {4},
                             interfaces=[t.cfg.ifname for t in tunnels], datapath=self.datapath_kind)
        known = {f.name for f in self.system_findings}
        for f in found:
            if f.name not in known:
                log.warning("event=system-check problem=%s what=%s fix=%s", f.name, f.what, f.fix)
        for name in known - {f.name for f in found}:
            log.info("event=system-check problem=%s resolved", name)
        self.system_findings = found
        return found

    async def _system_check_loop(self) -> None:
        while True:
            await asyncio.sleep(SYSTEM_CHECK_INTERVAL)
            await asyncio.to_thread(self.check_system)

    async def _notify_loop(self) -> None:
        interval = self.notifier.watchdog_interval()
        while True:
            await asyncio.sleep(min(interval or 5.0, 5.0))
            if interval:
                self.notifier.watchdog()
            self.notifier.status(self.summary())

    async def shutdown(self) -> None:
        self.notifier.stopping("cgwd: stopping, deleting SAs and withdrawing routes")
        log.info("event=shutdown tunnels=%d", len(self.tunnels))
        await self.supervisor.stop_all()
        await self.lan.stop("shutdown")
        if self.lan.table is not None:
            self.lan.table.clear()
            await asyncio.to_thread(self.lan.table.close)
        for name in list(self.tunnels):
            await self._stop_tunnel(name, "shutdown")
        await asyncio.sleep(0.2)  # let the DELETE notifications leave the sockets
        for name in list(self.routing):
            await self._drop_routing(name)
        for ep in self.endpoints.values():
            ep.close()
        self.endpoints.clear()
        if self.metrics is not None:
            await self.metrics.close()
        if self.control is not None:
            await self.control.close()
        log.info("event=stopped")

    # ------------------------------------------------------------------ reload
    async def reload(self) -> dict:
        """Re-read the config: one reload at a time (SIGHUP and `cgwctl reload` queue here).

        Each tunnel applies what it can in place (MED, prepend, advertise, DPD timers, BGP
        session settings, enabled); only identity, addresses, PSK, proposals, lifetimes and
        the data path restart it. A VPN's routing settings (import policy, ECMP, limits, static
        routing, fail closed) apply in place to its routing table; a VPN whose identity
        changed gets a new routing table and its tunnels restart. Daemon settings that need a
        restart are reported."""
        async with self._reload_lock:
            result = await self._apply_reload()
        self.last_reload = {"at": time.monotonic(), **result}  # status shows "at" as wall time
        return result

    async def _apply_reload(self) -> dict:
        self.notifier.reloading("cgwd: reloading configuration")
        try:
            new = load_config(self.config_path)
        except (ConfigError, OSError) as exc:
            log.error("event=reload-rejected error=%s", exc)
            self.notifier.ready(self.summary())
            return {"ok": False, "error": f"config rejected, running config kept: {exc}"}
        old = self.config
        dch = daemon_changes(old.daemon, new.daemon)
        daemon_restart = sorted(dch.restart)
        for k in daemon_restart:
            log.warning("event=reload-ignored setting=daemon.%s reason=needs-a-daemon-restart", k)
        if "log_level" in dch.in_place:
            setup_logging(new.daemon.log_level)
        old_vpns = {v.name: v for v in old.vpns}
        new_vpns = {v.name: v for v in new.vpns}
        old_tunnels = {t.name: t for t in old.tunnels}
        new_tunnels = {t.name: t for t in new.tunnels}
        removed = [n for n in old_tunnels if n not in new_tunnels]
        added = [n for n in new_tunnels if n not in old_tunnels]
        applied: dict[str, list[str]] = {}
        restarted: dict[str, list[str]] = {}
        for n in removed:
            await self._stop_tunnel(n, "reload: removed")
        self.config = new
        # a VPN whose settings changed, or that is gone: a new routing table (built with the
        # new settings), its tunnels restart
        for name, vpn in old_vpns.items():
            nv = new_vpns.get(name)
            vch = vpn.changes(nv) if nv is not None else None
            changed = sorted(vch.in_place | vch.restart) if vch is not None else ["removed"]
            if not changed:
                continue
            if vch is not None and not vch.restart and name in self.routing:
                # import policy, ECMP, limits, static routing, fail closed: the running table
                # takes them in place (its tunnels' static parts read them in reconfigure below)
                done = self.routing[name].reconfigure(RoutingSettings.from_config(new, nv))
                applied[f"vpn:{name}"] = sorted(set(done) | set(vch.in_place))
                continue
            for t in vpn.tunnels:
                if t.name in self.tunnels:
                    await self._stop_tunnel(t.name, "reload: VPN routing settings changed")
                    if t.name in new_tunnels:
                        restarted[t.name] = [f"vpn.{k}" for k in changed]
            await self._drop_routing(name)
        if "reconcile_interval" in dch.in_place:
            for name, routing in self.routing.items():
                await self.supervisor.stop(f"routing:{name}")
                self._spawn_maintenance(name, routing)
        to_start: list[tuple[TunnelConfig, VpnConfig, int]] = []
        for vpn in new.vpns:
            for i, tcfg in enumerate(vpn.tunnels):
                t = self.tunnels.get(tcfg.name)
                if t is None:
                    to_start.append((tcfg, vpn, i))
                    continue
                r = t.reconfigure(tcfg)
                if r.needs_restart:
                    await self._stop_tunnel(tcfg.name, "reload: " + ", ".join(r.restart) + " changed")
                    restarted[tcfg.name] = list(r.restart)
                    to_start.append((tcfg, vpn, i))
                elif r.applied:
                    applied[tcfg.name] = list(r.applied)
                    log.info("tunnel=%s event=reconfigured applied=%s", tcfg.name, ",".join(r.applied))
        failed = await self._start_tunnels(to_start)
        self._close_unused_endpoints()
        _register_lan_passwords(new)
        if self.lan.table is not None:
            self.lan.table.reconfigure(lan_routing_settings(new))
        lan = await self.lan.reconfigure(new.lan_neighbors)  # and the restarted tunnels' LAN exports
        applied.update({f"lan:{n}": f for n, f in lan["applied"].items()})
        restarted.update({f"lan:{n}": f for n, f in lan["restarted"].items()})
        added += [f"lan:{n}" for n in lan["added"]]
        removed += [f"lan:{n}" for n in lan["removed"]]
        log.info("event=reloaded added=%s removed=%s applied=%s restarted=%s failed=%s", added, removed,
                 applied, restarted, failed)
        self.notifier.ready(self.summary())
        out = {"ok": not failed, "added": added, "removed": removed, "changed": sorted(restarted),
               "applied": applied, "restarted": restarted, "failed": failed,
               "needs_daemon_restart": [f"daemon.{k}" for k in daemon_restart]}
        if failed:
            out["error"] = f"tunnels failed to start: {', '.join(failed)} (see the log)"
        parts = []
        if applied:
            parts.append("applied in place: " + "; ".join(f"{n} ({', '.join(f)})" for n, f in applied.items()))
        if restarted:
            parts.append("restarted: " + "; ".join(f"{n} ({', '.join(f)})" for n, f in restarted.items()))
        if added or removed:
            parts.append(f"added {len(added)}, removed {len(removed)}")
        out["message"] = "reload: " + ("; ".join(parts) if parts else "nothing changed")
        out["warnings"] = [f"daemon.{k} changed: needs a restart of cgwd to take effect" for k in daemon_restart]
        return out

    # ------------------------------------------------------------------ control + status
    def summary(self) -> str:
        return summary(self)

    def status(self) -> dict:
        return build_status(self)

    async def handle_control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "reload":
            return await self.reload()
        if cmd == "memory":
            return memory_report()
        if cmd in ("up", "down", "rekey"):
            name = req.get("tunnel")
            t = self.tunnels.get(name)
            if t is None:
                return {"ok": False, "error": f"no tunnel named {name!r} (have: {', '.join(self.tunnels)})"}
            if cmd == "rekey" and req.get("sa") == "ike":
                cmd = "rekey-ike"
            return {"ok": True, "message": t.admin(cmd)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}


def memory_report(top: int = 60) -> dict:
    """Where the daemon's Python memory is (the ``memory`` control command, for
    bench/scale.py --tracemalloc): live traced bytes grouped by package or module, when cgwd
    was started with PYTHONTRACEMALLOC=1 (tracing costs CPU and memory, so never by default)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return {"ok": False, "error": "allocations are not traced: start cgwd with PYTHONTRACEMALLOC=1"}
    groups: dict[str, int] = {}
    for st in tracemalloc.take_snapshot().statistics("filename"):
        path = st.traceback[0].filename
        if "/cgwd/" in path:
            key = "cgwd/" + path.rsplit("/cgwd/", 1)[1]
        elif "-packages/" in path:
            key = path.rsplit("-packages/", 1)[1].split("/", 1)[0]
        else:
            key = "stdlib/" + path.rsplit("/", 1)[-1]
        groups[key] = groups.get(key, 0) + st.size
    best = sorted(groups.items(), key=lambda kv: -kv[1])[:top]
    return {"ok": True, "memory": {"traced_bytes": tracemalloc.get_traced_memory()[0], "by_file": dict(best)}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cgwd", description="Customer-gateway daemon for AWS Site-to-Site VPN "
                                "(IKEv1 + ESP + BGP). Runs in the foreground; logs to stderr.")
    p.add_argument("--config", "-c", required=True, help="the TOML configuration (see `cgwctl import aws`)")
    p.add_argument("--socket", help="control socket path (default: daemon.socket from the config, "
                   "/run/cgwd/cgwd.sock)")
    p.add_argument("--version", action="version", version=f"cgwd {__version__}")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("cgwd: needs root or CAP_NET_ADMIN + CAP_NET_RAW + CAP_NET_BIND_SERVICE", file=sys.stderr)
    from .pyroute2_lite import install as pyroute2_lite
    pyroute2_lite()  # only the pyroute2 classes cgwd uses: ~6 MiB less RSS (bench/bringup_memory.py)
    try:
        return asyncio.run(Daemon(args.config, args.socket).run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
