"""The tunnel's IKE part: one IKE engine (IkeEngine) on the shared UDP endpoint of its
local address."""

from __future__ import annotations

import logging
from ..config import TunnelConfig
from ..ike.endpoint import IkeEndpoint
from ..ike.engine import ChildState, IkeEngine
from ..ike.v1 import IkePeer, IkePeerConfig
from ..seams import PartState, Reconfigured
from .changes import IKE_IN_PLACE

log = logging.getLogger("cgwd")


def selectors(c: TunnelConfig) -> dict:
    """AWS's route-based traffic selectors: everything of the tunnel's inner family
    (0.0.0.0/0, or ::/0 for an IPv6 VPN) on both sides."""
    any_ = "::/0" if c.inner_family == 6 else "0.0.0.0/0"
    return {"local_ts": any_, "remote_ts": any_}


def _settings(c: TunnelConfig) -> dict:
    """What both IKE versions' engine configs take from the tunnel's config."""
    return dict(
        local_address=str(c.local_address), remote_address=str(c.remote_address), psk=c.psk,
        local_id=c.local_id or str(c.public_address), remote_id=c.remote_id or None,
        ike_proposals=list(c.ike_proposals), esp_proposals=list(c.esp_proposals),
        ike_lifetime=c.ike_lifetime, ipsec_lifetime=c.esp_lifetime, rekey_margin=c.rekey_margin,
        rekey_fuzz=c.rekey_fuzz, dpd_interval=c.dpd_interval, dpd_retries=c.dpd_retries,
        dpd_action=c.dpd_action, nat_traversal=c.nat_traversal, **selectors(c))


def engine_config(c: TunnelConfig, esp_allowed: frozenset[str] | None = None) -> IkePeerConfig:
    return IkePeerConfig(**_settings(c), esp_allowed=esp_allowed)


def engine_config_v2(c: TunnelConfig):
    from ..ike.v2.peer import Ikev2PeerConfig

    return Ikev2PeerConfig(**_settings(c), initiator=c.startup_action != "start")


def make_engine(c: TunnelConfig, esp_allowed: frozenset[str] | None = None) -> IkeEngine:
    """The tunnel's IKE engine: IKEv1 (IkePeer) or IKEv2 (Ikev2Peer), by ``ike_version``;
    ``esp_allowed``: the algorithms the data path can install (only those are offered)."""
    if c.ike_version == 2:
        from ..ike.v2.peer import Ikev2Peer

        return Ikev2Peer(engine_config_v2(c), name=c.name)
    return IkePeer(engine_config(c, esp_allowed), name=c.name)


class IkePart:
    def __init__(self, cfg: TunnelConfig, endpoint: IkeEndpoint, *, admin_up: bool,
                 esp_allowed: frozenset[str] | None = None) -> None:
        self.cfg = cfg
        self.endpoint = endpoint
        self.esp_allowed = esp_allowed
        self.engine: IkeEngine = make_engine(cfg, esp_allowed)
        self.admin_up = admin_up
        self._state = PartState.DOWN

    @property
    def state(self) -> PartState:
        return self._state

    @property
    def name(self) -> str:
        return self.cfg.name

    def now(self) -> float:
        return self.endpoint.now()

    async def start(self) -> None:
        self._state = PartState.START
        self.endpoint.add_peer(self.engine)
        self.endpoint.set_enabled(self.engine, self.admin_up)
        if self.admin_up:
            self.endpoint.start_peer(self.engine)
        self._state = PartState.UP

    async def stop(self, reason: str) -> None:
        if self._state is PartState.DOWN:
            return
        self._state = PartState.STOP
        try:
            self.endpoint.stop_peer(self.engine)
        except Exception:  # noqa: BLE001 - teardown goes on whatever happens
            log.exception("tunnel=%s event=ike-stop-failed", self.name)
        self.endpoint.remove_peer(self.engine)
        self._state = PartState.DOWN

    def reconfigure(self, cfg: TunnelConfig, changed: frozenset[str]) -> Reconfigured:
        applied = tuple(sorted(changed & IKE_IN_PLACE))
        if applied:
            new = engine_config_v2(cfg) if cfg.ike_version == 2 else engine_config(cfg, self.esp_allowed)
            self.engine.reconfigure(new, self.now())
            self.endpoint.service(self.engine)
        self.cfg = cfg
        return Reconfigured(applied=applied)

    # ------------------------------------------------------------------ operator / data path
    def set_admin(self, up: bool) -> None:
        self.admin_up = up
        self.endpoint.set_enabled(self.engine, up)
        if up:
            self.endpoint.start_peer(self.engine)
        else:
            self.endpoint.stop_peer(self.engine)

    def rekey(self) -> None:
        self.engine.rekey_ipsec(self.now())
        self.endpoint.service(self.engine)

    def rekey_ike(self) -> None:
        self.engine.rekey_ike(self.now())
        self.endpoint.service(self.engine)

    def alive(self) -> None:
        """Inbound ESP arrived: liveness for DPD."""
        self.engine.peer_alive(self.now())
        self.endpoint.service(self.engine)

    def sa_expiring(self, spi_in: int, hard: bool) -> None:
        self.engine.sa_expiring(spi_in, hard, self.now())
        self.endpoint.service(self.engine)

    def peer_unresponsive(self) -> None:
        """Something besides DPD found the peer dead (the static health check went silent):
        act as DPD's death would with the tunnel's ``dpd_action``. ``restart``: delete the SAs
        at the peer and negotiate anew at once; ``clear``: delete them and stay down until
        `cgwctl up`; ``hold``: nothing here (the SAs stay, the caller withdraws the routes)."""
        action = self.cfg.dpd_action
        if action == "hold":
            return
        now = self.now()
        self.engine.stop(now)
        if action == "restart" and self.admin_up:
            self.engine.start(now)
        self.endpoint.service(self.engine)

    def install_failed(self, spi_in: int, reason: str) -> None:
        self.engine.install_failed(spi_in, reason, self.now())
        self.endpoint.service(self.engine)

    def child_state(self, spi_in: int) -> ChildState | None:
        return self.engine.child_state(spi_in)

    def status(self) -> dict:
        return self.engine.status()
