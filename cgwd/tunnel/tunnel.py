"""One configured tunnel: its IKE engine, its data path and its route source, each a part
with the same life cycle (cgwd.seams.TunnelPart), and what joins them.

IKE's events drive the rest: an IpsecSaUp installs the pair in the data path; the first
installed pair brings the tunnel UP (its routes become usable in the VPN's routing table and
the route source starts); PeerDead or the last pair gone takes it back to START at once (the
routes are withdrawn now, not at hold-timer expiry). Inbound ESP counts as DPD liveness.

States (BIRD's): DOWN -> START (parts running, no SA) -> UP (an SA pair carries traffic)
-> STOP -> DOWN; the transitions are the table below, nothing else moves the state.
"""

from __future__ import annotations

import enum
import logging
import time
from typing import Callable

from ..config import TunnelConfig
from ..esp.datapath import capabilities_for
from ..esp.events import SaExpiring, SequenceExhausted
from ..ike.endpoint import IkeEndpoint
from ..ike.events import IpsecSaDown, IpsecSaUp, NatDetected, PeerDead, Phase1Down, Phase1Up, SpiPending
from ..routing.table import RoutingTable
from ..seams import PartState, Reconfigured
from .bgp_part import BgpPart
from .changes import ADMIN, VPN_LEVEL
from .datapath_part import DatapathPart, InstallRefused
from .ike_part import IkePart
from .static_part import StaticPart

log = logging.getLogger("cgwd")


class TunnelEvent(enum.Enum):
    START = "start"
    CARRYING = "carrying"  # the first SA pair installed
    LOST = "lost"  # no SA pair carries traffic any more
    STOP = "stop"
    STOPPED = "stopped"


_TRANSITIONS: dict[tuple[PartState, TunnelEvent], PartState] = {
    (PartState.DOWN, TunnelEvent.START): PartState.START,
    (PartState.START, TunnelEvent.CARRYING): PartState.UP,
    (PartState.UP, TunnelEvent.LOST): PartState.START,
    (PartState.DOWN, TunnelEvent.STOP): PartState.STOP,
    (PartState.START, TunnelEvent.STOP): PartState.STOP,
    (PartState.UP, TunnelEvent.STOP): PartState.STOP,
    (PartState.STOP, TunnelEvent.STOPPED): PartState.DOWN,
}


class Tunnel:
    def __init__(self, cfg: TunnelConfig, routing: RoutingTable, index: int, *, endpoint: IkeEndpoint,
                 datapath_kind: str) -> None:
        self.cfg = cfg
        self.routing = routing
        self.index = index
        self.endpoint = endpoint
        self.state = PartState.DOWN
        self.ike = IkePart(cfg, endpoint, admin_up=cfg.enabled,
                           esp_allowed=capabilities_for(datapath_kind).esp_allowed())
        self.dp = DatapathPart(cfg, datapath_kind, send_udp=endpoint.send_esp, on_event=self._on_datapath_event,
                               child_state=self.ike.child_state, udp_socket=lambda: endpoint.natt_socket)
        # the route source: BGP, or the VPN's static routes (routing = "static")
        self.routes = (BgpPart(cfg, routing, on_silent=self._bgp_silent) if cfg.routing == "bgp"
                       else StaticPart(cfg, routing, index, on_silent=self._health_silent))
        self.nat = {"local_behind_nat": False, "peer_behind_nat": False}
        self.up_since: float | None = None
        self.last_install_error: str | None = None
        self._silent_rekey_at = float("-inf")  # when BGP's silence last made us rekey

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def engine(self):
        return self.ike.engine

    def _move(self, ev: TunnelEvent) -> bool:
        new = _TRANSITIONS.get((self.state, ev))
        if new is None:
            return False
        log.debug("tunnel=%s event=state %s -> %s (%s)", self.name, self.state.value, new.value, ev.value)
        self.state = new
        return True

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        self._move(TunnelEvent.START)
        await self.dp.start()
        await self.ike.start()
        if self.ike.admin_up:
            log.info("tunnel=%s event=start remote=%s local=%s datapath=%s", self.name, self.cfg.remote_address,
                     self.cfg.local_address, self.dp.kind)

    async def stop(self, reason: str = "shutdown") -> None:
        self._move(TunnelEvent.STOP)
        await self.routes.close(reason)
        await self.ike.stop(reason)
        self.routing.tunnel_down(self.name)
        self.up_since = None
        await self.dp.stop(reason)
        self._move(TunnelEvent.STOPPED)
        log.info("tunnel=%s event=stopped reason=%s", self.name, reason)

    def reconfigure(self, cfg: TunnelConfig) -> Reconfigured:
        """Apply a new config of this tunnel in place where every changed setting allows it;
        else apply nothing and return what needs the restart."""
        ch = self.cfg.changes(cfg)
        if ch.restart:
            return Reconfigured(restart=tuple(sorted(ch.restart)))
        changed = ch.in_place
        result = self.ike.reconfigure(cfg, changed) + self.dp.reconfigure(cfg, changed)
        result += self.routes.reconfigure(cfg, changed)
        if changed & ADMIN:
            self.admin("up" if cfg.enabled else "down")
            result += Reconfigured(applied=("enabled",))
        result += Reconfigured(applied=tuple(sorted(changed & VPN_LEVEL)))
        self.cfg = cfg
        return result

    # ------------------------------------------------------------------ IKE events
    def on_ike_event(self, ev) -> None:
        if isinstance(ev, IpsecSaUp):
            self._install(ev)
        elif isinstance(ev, SpiPending):
            self.dp.expect(ev.spi_in, ev.seconds)
        elif isinstance(ev, IpsecSaDown):
            last = self.dp.remove(ev.spi_in)
            log.info("tunnel=%s event=ipsec-down spi_in=0x%08x reason=%s", self.name, ev.spi_in, ev.reason)
            if last:
                self._lost(f"last IPsec SA deleted ({ev.reason})")
        elif isinstance(ev, PeerDead):
            log.warning("tunnel=%s event=peer-dead remote=%s", self.name, self.cfg.remote_address)
            self.dp.remove_all()
            self._lost("DPD: peer dead")
        elif isinstance(ev, Phase1Up):
            log.info("tunnel=%s event=phase1-up algorithms=%s", self.name, ev.algorithms)
        elif isinstance(ev, Phase1Down):
            log.info("tunnel=%s event=phase1-down reason=%s", self.name, ev.reason)
        elif isinstance(ev, NatDetected):
            self.nat = {"local_behind_nat": ev.local_behind_nat, "peer_behind_nat": ev.peer_behind_nat}
            log.info("tunnel=%s event=nat local_behind_nat=%s peer_behind_nat=%s", self.name,
                     ev.local_behind_nat, ev.peer_behind_nat)

    def _install(self, ev: IpsecSaUp) -> None:
        pair = ev.pair
        try:
            first = self.dp.install(pair, ours=ev.initiator)
        except InstallRefused as exc:
            self.last_install_error = f"{exc.reason}: {exc}"
            log.error("tunnel=%s event=sa-install-failed %s reason=%s error=%s", self.name, pair.describe(),
                      exc.reason, exc)
            self.ike.install_failed(pair.spi_in, exc.reason)
            return
        self.last_install_error = None
        if first and self._move(TunnelEvent.CARRYING):
            self.up_since = time.monotonic()
            self.routing.tunnel_up(self.name, self.cfg.ifname, str(self.cfg.inside_remote), self.index)
            self.routes.start_soon()

    def _lost(self, why: str) -> None:
        """No SA carries traffic: withdraw this tunnel's routes now, not at hold-timer expiry."""
        if not self._move(TunnelEvent.LOST):
            return
        self.up_since = None
        self.routing.tunnel_down(self.name)
        log.warning("tunnel=%s event=tunnel-down reason=%s routes=withdrawn", self.name, why)
        self.routes.stop_soon(why)

    def _health_silent(self, reason: str) -> None:
        """The static health check went unanswered (its routes are withdrawn already): the
        peer counts as dead, as with DPD, and the IKE part acts on ``dpd_action``."""
        action = self.cfg.dpd_action
        if action != "hold":
            then = ("IKE renegotiated (dpd_action restart)" if action == "restart"
                    else f"SAs deleted, down until `cgwctl up {self.name}` (dpd_action clear)")
            self.dp.remove_all()
            self._lost(f"{reason}; {then}")
        self.ike.peer_unresponsive()

    def _bgp_silent(self, reason: str) -> None:
        """BGP's hold timer ran out while IKE is up: the peer may have lost the pair without
        telling us (a peer that deleted it with an ISAKMP SA, or restarted its data path), which
        no IKEv1 exchange would show until the next rekey, up to an hour later. A fresh phase-2
        (or Child SA) rekey costs one exchange and repairs that; at most once per hold time."""
        now = time.monotonic()
        if not self.dp.pairs or now - self._silent_rekey_at < self.cfg.hold_time:
            return
        self._silent_rekey_at = now
        log.warning("tunnel=%s event=bgp-silent-rekey reason=%s: renewing the IPsec SA (the peer may have "
                    "lost it)", self.name, reason)
        try:
            self.ike.rekey()
        except Exception:  # noqa: BLE001 - a repair attempt must not take the tunnel down
            log.exception("tunnel=%s event=bgp-silent-rekey-failed", self.name)

    def _on_datapath_event(self, ev) -> None:
        if isinstance(ev, (SaExpiring, SequenceExhausted)):
            self.ike.sa_expiring(ev.spi_in, ev.hard if isinstance(ev, SaExpiring) else True)

    # ------------------------------------------------------------------ data path input, liveness
    def receive_esp(self, data: bytes, remote: tuple[str, int]) -> bool:
        return self.dp.receive_esp(data, remote)

    def esp_liveness(self) -> bool:
        """Inbound ESP since the last look resets the peer's DPD idle timer."""
        alive = self.dp.inbound_since_last_look()
        if alive:
            self.ike.alive()
        return alive

    # ------------------------------------------------------------------ operator commands
    def admin(self, action: str) -> str:
        if action == "up":
            self.ike.set_admin(True)
            return f"{self.name}: starting"
        if action == "down":
            self.ike.set_admin(False)
            self.dp.remove_all()
            self._lost("administratively down")
            return f"{self.name}: stopped"
        if action == "rekey":
            self.ike.rekey()
            return f"{self.name}: phase-2 rekey started"
        if action == "rekey-ike":
            self.ike.rekey_ike()
            return f"{self.name}: " + ("IKE SA rekey started" if self.engine.version == 2
                                       else "phase-1 re-authentication started")
        raise ValueError(action)

    # ------------------------------------------------------------------ status
    def summary_up(self) -> tuple[bool, bool]:
        """(an SA pair installed, BGP established)."""
        return bool(self.dp.pairs), self.routes.up_since is not None

    def bgp_drop_counts(self) -> dict[str, int]:
        return self.routes.drop_counts()

    def status(self, mono_to_wall: Callable) -> dict:
        c = self.cfg
        ike = self.ike.status()
        dp = self.dp.status()
        sas = _sa_status(ike, dp, mono_to_wall)
        installed = [s for s in sas if int(s["spi_in"], 16) in self.dp.pairs]
        nat = dict(ike.get("nat") or {})
        nat.setdefault("udp_encap", self.dp.udp_encap)
        dpd = ike.get("dpd") or {}
        return {
            "name": c.name, "vpn": c.vpn, "ifname": c.ifname, "enabled": self.ike.admin_up,
            "state": self.state.value,
            "inner_family": c.inner_family, "outer_family": c.outer_family,
            "outside": {"local": str(c.local_address), "remote": str(c.remote_address),
                        "public": str(c.public_address), "remote_port": ike.get("remote_port"),
                        "nat": {k: nat.get(k, False) for k in ("local_behind_nat", "peer_behind_nat",
                                                               "udp_encap")}},
            "ike": {"version": self.engine.version,
                    "state": ike.get("state", "idle") if self.ike.admin_up else "down",
                    "algorithms": ike.get("algorithms"), "role": ike.get("role"),
                    "spi": ike.get("ike_spi"),
                    "established_at": mono_to_wall(ike.get("established_at")),
                    "rekey_at": mono_to_wall(ike.get("rekey_at")),
                    "expires_at": mono_to_wall(ike.get("expires_at")),
                    "last_error": ike.get("last_error"), "counters": ike.get("counters", {})},
            "ipsec": {"state": "installed" if installed else "none", "sas": sas,
                      **_totals(dp, sas),
                      "datapath": dp.get("kind"), "drops": dp.get("drops", {}),
                      "mss": dp.get("mss"), "mss_clamp": dp.get("mss_clamp"),
                      "last_install_error": self.last_install_error},
            "dpd": {"interval": c.dpd_interval, "retries": c.dpd_retries, "action": c.dpd_action,
                    "last_seen": mono_to_wall(dpd.get("last_seen")),
                    "outstanding": dpd.get("outstanding", 0)},
            "bgp": self.routes.status(),
            **({"static": self.routes.static_status(mono_to_wall)} if c.routing == "static" else {}),
        }


def _outbound(sa: dict, dp: dict) -> bool | None:
    """Whether this pair carries our traffic; None where the data path does not say which
    pair sends (kernel: the newest)."""
    return int(sa["spi_out"], 16) == dp["active_spi_out"] if "active_spi_out" in dp else None


def _sa_status(ike: dict, dp: dict, mono_to_wall: Callable) -> list[dict]:
    sas_dp = {s["spi_in"]: s for s in dp.get("sas", []) if s.get("spi_in")}
    out = []
    for sa in ike.get("ipsec_sas", []):
        d = sas_dp.get(int(sa["spi_in"], 16), {})
        out.append({
            "spi_in": sa["spi_in"], "spi_out": sa["spi_out"], "algorithms": sa["algorithms"],
            "udp_encap": sa["udp_encap"], "state": sa.get("state"),
            "outbound": _outbound(sa, dp),
            **{k: d.get(k, 0) for k in ("packets_in", "packets_out", "bytes_in", "bytes_out",
                                        "replay_drops", "auth_failures")},
            "drops": d.get("drops", {}),
            "established_at": mono_to_wall(sa.get("established_at")),
            "rekey_at": mono_to_wall(sa.get("rekey_at")),
            "expires_at": mono_to_wall(sa.get("expires_at")),
        })
    return out


def _totals(dp: dict, sas: list[dict]) -> dict:
    """Counters since the tunnel's data path opened, across rekeys, where the data path keeps
    them ("totals"); else those of the current SAs."""
    totals = dp.get("totals") or {}
    return {k: int(totals.get(k, sum(s[k] for s in sas))) for k in ("packets_in", "packets_out", "bytes_in",
                                                                     "bytes_out")}
