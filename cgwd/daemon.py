"""`cgwd`: one asyncio process that keeps every configured AWS tunnel up.

Per tunnel: an IKEv1 peer (cgwd.ike) negotiates the ISAKMP and IPsec SAs; each IPsec SA
pair goes to the tunnel's data path (cgwd.esp: userspace TUN or kernel XFRM), which owns
the interface carrying the inside /30; once an SA pair carries traffic, a BGP session
(cgwd.bgp) runs over the inside addresses and its routes go through the VPN connection's
RIB into the kernel. The control socket answers `cgwctl`; SIGHUP reloads, SIGTERM tears down.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import socket
import sys
import time

from . import __version__
from .bgp import message as bgpmsg
from .bgp.kernel import KernelRoutes
from .bgp.routing import RoutingTable
from .bgp.session import BgpPeerConfig, BgpSession, SessionDown, SessionUp
from .bgp.speaker import BgpSpeaker
from .config import Config, ConfigError, TunnelConfig, VpnConfig, load_config
from .control import ControlError, ControlServer
from .esp.datapath import choose_datapath, make_datapath
from .esp.events import SaExpiring, SequenceExhausted
from .ike.endpoint import IkeEndpoint
from .ike.events import IpsecSaDown, IpsecSaUp, NatDetected, PeerDead, Phase1Down, Phase1Up
from .ike.session import IkePeer, IkePeerConfig
from .logging_setup import register_secret, setup_logging
from .sdnotify import SdNotifier

log = logging.getLogger("cgwd")


ESP_LIVENESS_INTERVAL = 1.0  # seconds between looks at the data path's inbound counters
def _same_spi(a, b) -> bool:
    """SPIs as the IKE engine and the data path write them ("0x1a2b3c4d" or hex)."""
    try:
        return a is not None and b is not None and int(str(a), 16) == int(str(b), 16)
    except ValueError:
        return False


OUTBOUND_GRACE = 1.0  # seconds a pair of our rekey waits for the peer (see _hold_rekeyed_pair)


def feed_esp_liveness(peer: IkePeer, sas: list[dict], seen: dict[str, int], now: float) -> bool:
    """Tell the IKE peer it is alive when inbound ESP arrived since the last look.

    RFC 3706: DPD asks R-U-THERE only after a period without traffic from the peer, so
    authenticated ESP counts as traffic. ``sas`` are the data path's per-SA stats
    (``spi_in``, ``packets_in``); ``seen`` is the previous look's counts, updated in place.
    Returns whether any SA received packets.
    """
    alive = False
    current: dict[str, int] = {}
    for sa in sas:
        spi = str(sa.get("spi_in") or "")
        n = int(sa.get("packets_in") or 0)
        if not spi:
            continue
        current[spi] = n
        if n > seen.get(spi, 0):
            alive = True
    seen.clear()
    seen.update(current)
    if alive:
        peer.peer_alive(now)
    return alive


class Tunnel:
    """The runtime of one configured tunnel: IKE peer, data path, BGP speaker."""

    def __init__(self, daemon: "Daemon", cfg: TunnelConfig, routing: RoutingTable, index: int):
        self.daemon = daemon
        self.cfg = cfg
        self.name = cfg.name
        self.routing = routing
        self.index = index
        self.endpoint: IkeEndpoint | None = None
        self.peer: IkePeer | None = None
        self.datapath = None
        self.session: BgpSession | None = None
        self.speaker: BgpSpeaker | None = None
        self.pairs: dict[int, object] = {}  # spi_in -> IpsecSaPair
        self.nat = {"local_behind_nat": False, "peer_behind_nat": False, "udp_encap": False}
        self.bgp_up_since: float | None = None
        self.last_bgp_error: str | None = None
        self.ipsec_up_since: float | None = None
        self.admin_up = cfg.enabled
        self._bgp_task: asyncio.Task | None = None
        self.bgp_drops: dict[str, int] = {}  # from speakers already stopped (hostile TCP 179 input)
        self._esp_seen: dict[str, int] = {}  # spi_in -> packets_in at the last liveness look

    def esp_liveness(self) -> bool:
        """Inbound ESP since the last call resets the peer's DPD idle timer."""
        if self.peer is None or self.endpoint is None or self.datapath is None:
            return False
        alive = feed_esp_liveness(self.peer, self.datapath.stats().get("sas", []), self._esp_seen,
                                  self.endpoint.now())
        if alive:
            self.endpoint.service(self.peer)
        return alive

    # ------------------------------------------------------------------ lifecycle
    async def start(self, endpoint: IkeEndpoint, datapath_kind: str) -> None:
        c = self.cfg
        self.endpoint = endpoint
        self.datapath = make_datapath(
            datapath_kind, name=c.name, ifname=c.ifname, inside=c.inside_local, mtu=c.mtu, mss=c.mss,
            replay_window=c.replay_window, send_udp=endpoint.send_esp, on_event=self._on_datapath_event,
            local_address=str(c.local_address))
        await self.datapath.open()
        self.peer = IkePeer(IkePeerConfig(
            local_address=str(c.local_address), remote_address=str(c.remote_address), psk=c.psk,
            local_id=c.local_id or str(c.public_address), remote_id=c.remote_id or None,
            ike_proposals=list(c.ike_proposals), esp_proposals=list(c.esp_proposals),
            ike_lifetime=c.ike_lifetime, ipsec_lifetime=c.esp_lifetime, rekey_margin=c.rekey_margin,
            rekey_fuzz=c.rekey_fuzz, dpd_interval=c.dpd_interval, dpd_retries=c.dpd_retries,
            dpd_action=c.dpd_action, nat_traversal=c.nat_traversal), name=c.name)
        endpoint.add_peer(self.peer)
        self.session = BgpSession(BgpPeerConfig(
            local_address=str(c.inside_local.ip), remote_address=str(c.inside_remote),
            local_asn=c.local_asn, remote_asn=c.remote_asn, router_id=str(c.public_address),
            hold_time=c.hold_time, connect_retry=2))
        self.session.announce(self._exports())
        if self.admin_up:
            endpoint.start_peer(self.peer)
            log.info("tunnel=%s event=start remote=%s local=%s datapath=%s", c.name, c.remote_address,
                     c.local_address, self.datapath.kind)

    def _exports(self) -> list:
        c = self.cfg
        path = ((bgpmsg.AS_SEQUENCE, (c.local_asn,) * c.prepend),) if c.prepend else ()
        prefixes = [str(p) for p in c.advertise] + (["0.0.0.0/0"] if c.advertise_default else [])
        return [bgpmsg.Route(p, as_path=path, med=c.med) for p in prefixes]

    async def stop(self, reason: str = "shutdown") -> None:
        await self._stop_bgp(reason)
        if self.peer is not None and self.endpoint is not None:
            try:
                self.endpoint.stop_peer(self.peer)  # DELETE for the IPsec and ISAKMP SAs
            except Exception:  # noqa: BLE001 - teardown goes on whatever happens
                log.exception("tunnel=%s event=ike-stop-failed", self.name)
            self.endpoint.remove_peer(self.peer)
        self.routing.tunnel_down(self.name)
        if self.datapath is not None:
            await self.datapath.close()
        self.pairs.clear()
        log.info("tunnel=%s event=stopped reason=%s", self.name, reason)

    # ------------------------------------------------------------------ IKE events
    def on_ike_event(self, ev) -> None:
        if isinstance(ev, IpsecSaUp):
            pair = ev.pair
            if self._hold_rekeyed_pair(ev):
                return
            self._install_pair(pair)
        elif isinstance(ev, IpsecSaDown):
            self.pairs.pop(ev.spi_in, None)
            self.datapath.remove(ev.spi_in)
            log.info("tunnel=%s event=ipsec-down spi_in=0x%08x reason=%s", self.name, ev.spi_in, ev.reason)
            if not self.pairs:
                self._tunnel_lost(f"last IPsec SA deleted ({ev.reason})")
        elif isinstance(ev, PeerDead):
            log.warning("tunnel=%s event=peer-dead remote=%s", self.name, self.cfg.remote_address)
            self.datapath.remove_all()
            self.pairs.clear()
            self._tunnel_lost("DPD: peer dead")
        elif isinstance(ev, Phase1Up):
            log.info("tunnel=%s event=phase1-up algorithms=%s", self.name, ev.algorithms)
        elif isinstance(ev, Phase1Down):
            log.info("tunnel=%s event=phase1-down reason=%s", self.name, ev.reason)
        elif isinstance(ev, NatDetected):
            self.nat["local_behind_nat"] = ev.local_behind_nat
            self.nat["peer_behind_nat"] = ev.peer_behind_nat
            log.info("tunnel=%s event=nat local_behind_nat=%s peer_behind_nat=%s", self.name,
                     ev.local_behind_nat, ev.peer_behind_nat)

    def _install_pair(self, pair) -> None:
        try:
            self.datapath.install(pair)
        except Exception as exc:  # noqa: BLE001 - a data-path refusal must not kill the daemon
            log.error("tunnel=%s event=sa-install-failed %s error=%s", self.name, pair.describe(), exc)
            return
        self.pairs[pair.spi_in] = pair
        self.nat["udp_encap"] = pair.udp_encap
        log.info("tunnel=%s event=ipsec-up %s", self.name, pair.describe())
        if self.ipsec_up_since is None:
            self.ipsec_up_since = time.time()
            self.routing.tunnel_up(self.name, self.cfg.ifname, str(self.cfg.inside_remote), self.index)
            self._start_bgp()

    def _hold_rekeyed_pair(self, ev) -> bool:
        """Make-before-break for rekeys we start: keep sending on the older pair until the
        peer has the new one.

        The responder installs the new pair when our last quick-mode message reaches it
        (strongSwan: some 100 ms later on a busy machine); ESP on the new SPI before that is
        lost at its end. Where the data path can (``pending_outbound``: userspace, raw ESP
        and UDP-encapsulated alike), a pair of our own rekey is installed for receiving only;
        the data path switches outbound to it when the peer's first authenticated packet on
        it arrives, or the daemon does after OUTBOUND_GRACE seconds. A pair that lost a rekey
        collision is kept receive-only (the winner carries our traffic) unless the peer sends
        on it. Data paths without it (kernel XFRM) switch at once.
        """
        pair = ev.pair
        if not (self.pairs and getattr(self.datapath, "pending_outbound", False)):
            return False
        loser = self._collision_loser(pair.spi_in)
        if not loser and not getattr(ev, "initiator", False):
            return False
        try:
            self.datapath.install(pair, outbound=False)
        except Exception as exc:  # noqa: BLE001 - a data-path refusal must not kill the daemon
            log.error("tunnel=%s event=sa-install-failed %s error=%s", self.name, pair.describe(), exc)
            return True
        self.pairs[pair.spi_in] = pair
        if loser:
            log.info("tunnel=%s event=ipsec-up-standby %s (rekey collision: the other new pair carries traffic)",
                     self.name, pair.describe())
        else:
            asyncio.get_running_loop().call_later(OUTBOUND_GRACE, self.release_held, pair.spi_in, "grace time over")
            log.info("tunnel=%s event=ipsec-up-pending %s (older pair carries traffic until the peer uses this one)",
                     self.name, pair.describe())
        return True

    def _collision_loser(self, spi_in: int) -> bool:
        state = getattr(self.peer, "child_state", None)
        return state is not None and state(spi_in) == "rekeyed"

    def release_held(self, spi_in: int, why: str) -> None:
        """Send on a receive-only pair of our rekey now (grace time over)."""
        if self._collision_loser(spi_in) or self.datapath is None or spi_in not in self.pairs:
            return  # lost a rekey collision meanwhile (stays on standby), or gone
        if self.datapath.activate_outbound(spi_in, why):
            log.debug("tunnel=%s event=ipsec-switch spi_in=0x%08x reason=%s", self.name, spi_in, why)

    def _tunnel_lost(self, why: str) -> None:
        """No SA carries traffic: withdraw this tunnel's routes now, not at hold-timer expiry."""
        if self.ipsec_up_since is None:
            return
        self.ipsec_up_since = None
        self.routing.tunnel_down(self.name)
        log.warning("tunnel=%s event=tunnel-down reason=%s routes=withdrawn", self.name, why)
        self._bgp_task = asyncio.ensure_future(self._stop_bgp(why))

    def _on_datapath_event(self, ev) -> None:
        if self.peer is None or self.endpoint is None:
            return
        if isinstance(ev, (SaExpiring, SequenceExhausted)):
            hard = getattr(ev, "hard", True)
            self.peer.sa_expiring(ev.spi_in, hard, self.endpoint.now())
            self.endpoint.service(self.peer)

    # ------------------------------------------------------------------ BGP
    def _start_bgp(self) -> None:
        if self.speaker is not None:
            return
        c = self.cfg
        self.speaker = BgpSpeaker(
            self.session, local_address=str(c.inside_local.ip), remote_address=str(c.inside_remote),
            on_event=self.routing.event_handler(self.name, self.session, then=self._on_bgp_event))
        self._bgp_task = asyncio.ensure_future(self._run_speaker(self.speaker))

    async def _run_speaker(self, speaker: BgpSpeaker) -> None:
        try:
            await speaker.start()
        except Exception as exc:  # noqa: BLE001
            log.error("tunnel=%s event=bgp-start-failed error=%s", self.name, exc)

    def bgp_drop_counts(self) -> dict[str, int]:
        out = dict(self.bgp_drops)
        for k, v in (self.speaker.counters.items() if self.speaker is not None else ()):
            out[k] = out.get(k, 0) + v
        return out

    async def _stop_bgp(self, reason: str) -> None:
        speaker, self.speaker = self.speaker, None
        self.bgp_up_since = None
        if speaker is not None:
            for k, v in speaker.counters.items():
                self.bgp_drops[k] = self.bgp_drops.get(k, 0) + v
            try:
                await speaker.stop(reason)
            except Exception:  # noqa: BLE001
                log.exception("tunnel=%s event=bgp-stop-failed", self.name)

    def _on_bgp_event(self, ev) -> None:
        if isinstance(ev, SessionUp):
            self.bgp_up_since = time.time()
            self.last_bgp_error = None
            log.info("tunnel=%s event=bgp-established peer=%s hold=%s", self.name, self.cfg.inside_remote,
                     ev.hold_time)
        elif isinstance(ev, SessionDown):
            self.bgp_up_since = None
            self.last_bgp_error = ev.reason
            log.warning("tunnel=%s event=bgp-down reason=%s", self.name, ev.reason)

    # ------------------------------------------------------------------ operator commands
    def admin(self, action: str) -> str:
        now = self.endpoint.now()
        if action == "up":
            self.admin_up = True
            self.endpoint.start_peer(self.peer)
            return f"{self.name}: starting"
        if action == "down":
            self.admin_up = False
            self.endpoint.stop_peer(self.peer)
            self.datapath.remove_all()
            self.pairs.clear()
            self._tunnel_lost("administratively down")
            return f"{self.name}: stopped"
        if action == "rekey":
            self.peer.rekey_ipsec(now)
            self.endpoint.service(self.peer)
            return f"{self.name}: phase-2 rekey started"
        raise ValueError(action)

    # ------------------------------------------------------------------ status
    def status(self, mono_to_wall) -> dict:
        c = self.cfg
        ike = self.peer.status() if self.peer else {}
        dp = self.datapath.stats() if self.datapath else {}
        sas_dp = {int(str(s.get("spi_in")), 16): s for s in dp.get("sas", []) if s.get("spi_in")}
        sas = []
        for sa in ike.get("ipsec_sas", []):
            d = sas_dp.get(int(sa["spi_in"], 16), {})
            sas.append({
                "spi_in": sa["spi_in"], "spi_out": sa["spi_out"], "algorithms": sa["algorithms"],
                "udp_encap": sa["udp_encap"], "state": sa.get("state"),
                # None where the data path does not say which pair sends (kernel: the newest)
                "outbound": _same_spi(sa.get("spi_out"), dp["active_spi_out"]) if "active_spi_out" in dp else None,
                **{k: d.get(k, 0) for k in ("packets_in", "packets_out", "bytes_in", "bytes_out",
                                            "replay_drops", "auth_failures")},
                "drops": d.get("drops", {}),
                "established_at": mono_to_wall(sa.get("established_at")),
                "rekey_at": mono_to_wall(sa.get("rekey_at")),
                "expires_at": mono_to_wall(sa.get("expires_at")),
            })
        installed = [s for s in sas if int(s["spi_in"], 16) in self.pairs]
        bgp = self.session.status() if self.session else {}
        nat = dict(ike.get("nat") or {})
        nat.setdefault("udp_encap", self.nat["udp_encap"])
        dpd = ike.get("dpd") or {}
        return {
            "name": c.name, "vpn": c.vpn, "ifname": c.ifname, "enabled": self.admin_up,
            "outside": {"local": str(c.local_address), "remote": str(c.remote_address),
                        "public": str(c.public_address), "remote_port": ike.get("remote_port"),
                        "nat": {k: nat.get(k, False) for k in ("local_behind_nat", "peer_behind_nat",
                                                               "udp_encap")}},
            "ike": {"state": ike.get("state", "idle") if self.admin_up else "down",
                    "algorithms": ike.get("algorithms"), "role": ike.get("role"),
                    "established_at": mono_to_wall(ike.get("established_at")),
                    "rekey_at": mono_to_wall(ike.get("rekey_at")),
                    "expires_at": mono_to_wall(ike.get("expires_at")),
                    "last_error": ike.get("last_error"), "counters": ike.get("counters", {})},
            "ipsec": {"state": "installed" if installed else "none", "sas": sas,
                      # counters since the tunnel's data path opened, across rekeys, where the
                      # data path keeps them ("totals"); else those of the current SAs
                      **{k: int((dp.get("totals") or {}).get(k, sum(s[k] for s in sas)))
                         for k in ("packets_in", "packets_out", "bytes_in", "bytes_out")},
                      "datapath": dp.get("kind"), "drops": dp.get("drops", {}),
                      "mss": dp.get("mss"), "mss_clamp": dp.get("mss_clamp")},
            "dpd": {"interval": c.dpd_interval, "retries": c.dpd_retries, "action": c.dpd_action,
                    "last_seen": mono_to_wall(dpd.get("last_seen")),
                    "outstanding": dpd.get("outstanding", 0)},
            "bgp": {"state": (bgp.get("state") or "idle").lower() if self.speaker else "idle",
                    "peer": str(c.inside_remote), "local": str(c.inside_local.ip),
                    "remote_asn": c.remote_asn, "local_asn": c.local_asn,
                    "uptime_since": self.bgp_up_since, "hold_time": bgp.get("hold_time", c.hold_time),
                    "keepalive": bgp.get("keepalive"),
                    "prefixes_received": self.routing.rib.prefix_count(self.name),
                    "prefixes_advertised": bgp.get("prefixes_advertised", len(self._exports())),
                    "messages_in": bgp.get("messages_in"), "messages_out": bgp.get("messages_out"),
                    "last_error": self.last_bgp_error or bgp.get("last_error")},
        }


def _bgp_drops(tunnels) -> dict[str, int]:
    """BGP-side drops of every tunnel (e.g. TCP 179 connections from a stranger), by reason."""
    out: dict[str, int] = {}
    for t in tunnels:
        for k, n in t.bgp_drop_counts().items():
            out[f"bgp_{k}"] = out.get(f"bgp_{k}", 0) + n
    return out


def _process_stats() -> dict:
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


class Daemon:
    def __init__(self, config_path: str, socket_path: str | None = None):
        self.config_path = config_path
        self.socket_override = socket_path
        self.config: Config | None = None
        self.tunnels: dict[str, Tunnel] = {}
        self.routing: dict[str, RoutingTable] = {}
        self.endpoints: dict[str, IkeEndpoint] = {}
        self.by_remote: dict[str, Tunnel] = {}
        self.datapath_kind = "userspace"
        self.datapath_reason = ""
        self.control: ControlServer | None = None
        self.metrics = None
        self.notifier = SdNotifier()
        self.started_at = time.time()
        self.drops: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ helpers
    def _mono_to_wall(self, t):
        if t is None:
            return None
        return time.time() - (asyncio.get_running_loop().time() - t)

    def _count(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

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

    def _on_ike_event(self, peer: IkePeer, ev) -> None:
        t = self.by_remote.get(peer.config.remote_address)
        if t is None or t.peer is not peer:
            return
        try:
            t.on_ike_event(ev)
        except Exception:  # noqa: BLE001 - one tunnel's trouble must not take the others down
            log.exception("tunnel=%s event=ike-event-failed", t.name)

    def _on_udp_esp(self, data: bytes, remote: tuple[str, int]) -> None:
        t = self.by_remote.get(remote[0])
        if t is None or t.datapath is None:
            self._count("esp_from_unknown_peer")
            return
        t.datapath.receive_esp(data, remote)

    # ------------------------------------------------------------------ start / stop
    async def _start_tunnel(self, cfg: TunnelConfig, vpn: VpnConfig, index: int) -> None:
        routing = self.routing.get(vpn.name)
        if routing is None:
            d = self.config.daemon
            routing = RoutingTable(
                kernel=KernelRoutes(d.route_table, d.route_metric, d.route_protocol), ecmp=vpn.ecmp,
                import_policy=vpn.import_policy,  # refuses our own prefixes (config) max_prefix=vpn.max_prefix,
                max_prefix_action=vpn.max_prefix_action, own_prefixes=[str(p) for p in vpn.advertise])
            self.routing[vpn.name] = routing
        t = Tunnel(self, cfg, routing, index)
        register_secret(cfg.psk)
        self.tunnels[cfg.name] = t
        self.by_remote[str(cfg.remote_address)] = t
        try:
            await t.start(self._endpoint(str(cfg.local_address)), self.datapath_kind)
        except Exception as exc:
            log.error("tunnel=%s event=start-failed error=%s", cfg.name, exc)
            self.tunnels.pop(cfg.name, None)
            self.by_remote.pop(str(cfg.remote_address), None)
            if t.datapath is not None:
                await t.datapath.close()
            raise

    async def _stop_tunnel(self, name: str, reason: str) -> None:
        t = self.tunnels.pop(name, None)
        if t is None:
            return
        self.by_remote.pop(str(t.cfg.remote_address), None)
        await t.stop(reason)

    def _cleanup_previous_run(self) -> None:
        """Remove what a crashed run left: our routes (by protocol id) and stale tunnel interfaces."""
        d = self.config.daemon
        try:
            kr = KernelRoutes(d.route_table, d.route_metric, d.route_protocol)
            n = kr.flush_stale(d.route_protocol)
            kr.close()
            if n:
                log.warning("event=startup-cleanup removed_routes=%d (left by a previous run)", n)
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
        # All tunnels start at once: one tunnel's TUN/netlink set-up overlaps the others' IKE
        # exchanges instead of queueing behind them (bench/bringup_memory.py). Failures are
        # logged by _start_tunnel; the other tunnels go on.
        await asyncio.gather(*(self._start_tunnel(tcfg, vpn, i) for vpn in self.config.vpns
                               for i, tcfg in enumerate(vpn.tunnels)), return_exceptions=True)
        if self.config.daemon.metrics_listen:
            await self._start_metrics()
        for routing in self.routing.values():
            self._tasks.append(asyncio.ensure_future(routing.maintain(self.config.daemon.reconcile_interval)))
        self._tasks.append(asyncio.ensure_future(self._notify_loop()))
        self._tasks.append(asyncio.ensure_future(self._esp_liveness_loop()))
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
        return 0

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
        for task in self._tasks:
            task.cancel()
        for name in list(self.tunnels):
            await self._stop_tunnel(name, "shutdown")
        await asyncio.sleep(0.2)  # let the DELETE notifications leave the sockets
        for routing in self.routing.values():
            routing.clear()
            routing.close()
        for ep in self.endpoints.values():
            ep.close()
        if self.metrics is not None:
            await self.metrics.close()
        if self.control is not None:
            await self.control.close()
        log.info("event=stopped")

    async def reload(self) -> dict:
        self.notifier.reloading("cgwd: reloading configuration")
        try:
            new = load_config(self.config_path)
        except (ConfigError, OSError) as exc:
            log.error("event=reload-rejected error=%s", exc)
            self.notifier.ready(self.summary())
            return {"ok": False, "error": f"config rejected, running config kept: {exc}"}
        old_fp = {t.name: t.fingerprint() for t in self.config.tunnels}
        new_fp = {t.name: t.fingerprint() for t in new.tunnels}
        changed = [n for n in new_fp if n in old_fp and new_fp[n] != old_fp[n]]
        removed = [n for n in old_fp if n not in new_fp]
        added = [n for n in new_fp if n not in old_fp]
        if (new.daemon.datapath, new.daemon.socket) != (self.config.daemon.datapath, self.config.daemon.socket):
            log.warning("event=reload note=datapath-and-socket-changes-need-a-restart")
        for n in removed + changed:
            await self._stop_tunnel(n, "reload")
        self.config = new
        for vpn in new.vpns:
            # a VPN whose policy changed gets a fresh RIB with the new settings on its next start
            for i, tcfg in enumerate(vpn.tunnels):
                if tcfg.name in added or tcfg.name in changed:
                    try:
                        await self._start_tunnel(tcfg, vpn, i)
                    except Exception:  # noqa: BLE001
                        pass
        log.info("event=reloaded added=%s changed=%s removed=%s unchanged=%d", added, changed, removed,
                 len(new_fp) - len(added) - len(changed))
        self.notifier.ready(self.summary())
        return {"ok": True, "added": added, "changed": changed, "removed": removed}

    # ------------------------------------------------------------------ control + status
    def summary(self) -> str:
        ts = list(self.tunnels.values())
        ipsec = sum(1 for t in ts if t.pairs)
        bgp = sum(1 for t in ts if t.bgp_up_since)
        routes = sum(len(r.routes()) for r in self.routing.values())
        return f"{ipsec}/{len(ts)} tunnels up, {bgp} BGP established, {routes} routes"

    def status(self) -> dict:
        routes = []
        for r in self.routing.values():
            routes.extend(r.routes())
        return {
            "version": __version__, "pid": os.getpid(), "started_at": self.started_at, "now": time.time(),
            "hostname": socket.gethostname(), "config": self.config_path,
            "datapath": {"requested": self.config.daemon.datapath, "kind": self.datapath_kind,
                         "reason": self.datapath_reason},
            "tunnels": [t.status(self._mono_to_wall) for t in self.tunnels.values()],
            "routes": routes,
            "drops": {**self.drops, **{f"ike_{k.removeprefix('drop_')}": v for ep in self.endpoints.values()
                                       for k, v in ep.counters.items() if k.startswith("drop")},
                      **_bgp_drops(self.tunnels.values())},
            "process": _process_stats(),
        }

    async def handle_control(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "reload":
            return await self.reload()
        if cmd in ("up", "down", "rekey"):
            name = req.get("tunnel")
            t = self.tunnels.get(name)
            if t is None:
                return {"ok": False, "error": f"no tunnel named {name!r} (have: {', '.join(self.tunnels)})"}
            return {"ok": True, "message": t.admin(cmd)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}


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
