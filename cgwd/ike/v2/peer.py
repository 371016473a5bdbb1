"""Sans-IO IKEv2 engine: one :class:`Ikev2Peer` per configured tunnel (RFC 7296, PSK).

It implements :class:`cgwd.ike.engine.IkeEngine` (``version = 2``) with the events and status
keys of the IKEv1 engine, so the daemon and :class:`cgwd.ike.endpoint.IkeEndpoint` drive
either unchanged. The exchanges live in their own modules (``ike_sa_init``, ``ike_auth``,
``create_child``, ``ike_rekey``, ``informational``); this module is the task manager around
them: message-ID windows and retransmission (2.1-2.3), protection, NAT-T (2.23), the Child SA
bookkeeping with make-before-break and rekey collisions (2.8), liveness, dead-peer actions,
and the one schedule of deadlines (:class:`~cgwd.ike.v2.schedule.Schedule`).

The engine never reads a clock, opens a socket or sleeps.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from cgwd.ike.crypto import IkeCryptoError
from cgwd.ike.engine import ChildState
from cgwd.ike.events import Datagram, IkeEvent
from cgwd.ike.retransmit import Retransmission
from cgwd.ike.schedule import Schedule

from . import create_child, ike_auth, ike_rekey, ike_sa_init, informational
from .child_sas import DELETE_WAIT, REMOVE_DELAY, RETRY_DELAY, ChildSaBook
from .codec import (
    Header,
    IdPayload,
    Ikev2DecodeError,
    NotifyPayload,
    Payload,
    SaPayload,
    SkPayload,
    TrafficSelector,
    decode_header,
    decode_payloads,
    encode_message,
    first,
)
from .constants import HEADER_LEN, IKE_PORT, NATT_PORT, Exchange, Flag, Notify, Protocol
from .create_child import CreateChildInitiator
from .exchange import Drop, InitiatorExchange, Received, Step
from .identity import describe_id, narrow, parse_identity, within
from .ike_sa_init import CookieJar, IkeSaInitInitiator
from .ike_sas import HALF_OPEN_TIMEOUT, KEEPALIVE_INTERVAL, IkeSaBook
from .informational import InfoKind, InformationalInitiator
from .proposals import parse_esp_proposal, parse_ike_proposal
from .protect import Ikev2IntegrityError
from .sa import ChildSa, ChildSaState, IkeSa, IkeSaState, Request
from .timers import Timer

__all__ = ["Ikev2Peer", "Ikev2PeerConfig", "NatResult", "REMOVE_DELAY", "DELETE_WAIT", "RETRY_DELAY",
           "HALF_OPEN_TIMEOUT", "KEEPALIVE_INTERVAL"]

log = logging.getLogger("cgwd.ike")

DEFER_DELAY = 2.0  # after TEMPORARY_FAILURE (2.25)
MAX_TIMER_ROUNDS = 64


# --------------------------------------------------------------------------- configuration


@dataclass
class Ikev2PeerConfig:
    """One tunnel's IKEv2 settings (defaults are AWS's). Proposals in strongSwan's syntax."""

    local_address: str
    remote_address: str
    psk: bytes = field(repr=False)
    local_id: str | None = None
    remote_id: str | None = None
    ike_proposals: list[str] = field(default_factory=lambda: ["aes128-sha1-modp1024"])
    esp_proposals: list[str] = field(default_factory=lambda: ["aes128-sha1-modp1024"])
    ike_lifetime: int = 28800
    ipsec_lifetime: int = 3600
    ipsec_lifetime_kb: int = 0
    rekey_margin: int = 540
    rekey_fuzz: int = 100
    dpd_interval: float = 10
    dpd_retries: int = 3
    dpd_action: str = "restart"
    nat_traversal: str = "auto"
    local_ts: str = "0.0.0.0/0"
    remote_ts: str = "0.0.0.0/0"
    retransmit_timeout: float = 2.0
    retransmit_tries: int = 5
    # False: responder only (AWS's startup action "start"): wait for the peer's IKE_SA_INIT
    initiator: bool = True
    cookie_threshold: int = 2  # half-open IKE SAs before IKE_SA_INIT needs a COOKIE (2.6)
    half_open_limit: int = 8  # beyond it the oldest half-open IKE SA is dropped

    def __post_init__(self) -> None:
        if isinstance(self.psk, str):
            self.psk = self.psk.encode()
        if not self.psk:
            raise ValueError("empty pre-shared key")
        if not self.ike_proposals or not self.esp_proposals:
            raise ValueError("need at least one IKE and one ESP proposal")
        self.ike_algs = [parse_ike_proposal(p) for p in self.ike_proposals]
        self.esp_algs = [parse_esp_proposal(p) for p in self.esp_proposals]
        if self.dpd_action not in ("clear", "restart", "hold"):
            raise ValueError(f"dpd_action must be clear|restart|hold, not {self.dpd_action!r}")
        if self.nat_traversal not in ("auto", "force", "off"):
            raise ValueError(f"nat_traversal must be auto|force|off, not {self.nat_traversal!r}")
        if not self.retransmit_timeout > 0 or self.retransmit_tries < 1:
            raise ValueError("retransmit_timeout must be > 0 and retransmit_tries >= 1")
        if self.dpd_interval < 0 or self.dpd_retries < 1:
            raise ValueError("dpd_interval must be >= 0 (0: off) and dpd_retries >= 1")
        if self.ike_lifetime < 60 or self.ipsec_lifetime < 30:
            raise ValueError("ike_lifetime must be >= 60 s and ipsec_lifetime >= 30 s")
        if not 0 <= self.rekey_fuzz <= 200 or self.rekey_margin < 0:
            raise ValueError("rekey_margin must be >= 0 and rekey_fuzz 0-200 (%)")
        ipaddress.ip_address(self.local_address)
        ipaddress.ip_address(self.remote_address)
        self.local_ts_net = ipaddress.ip_network(self.local_ts, strict=False)
        self.remote_ts_net = ipaddress.ip_network(self.remote_ts, strict=False)
        if self.local_ts_net.version != self.remote_ts_net.version:
            raise ValueError("local_ts and remote_ts must be of one family (IPv4 or IPv6 inside the tunnel)")
        if ipaddress.ip_address(self.local_address).version != ipaddress.ip_address(self.remote_address).version:
            raise ValueError("local_address and remote_address must be of one family")
        self.local_id_tuple = parse_identity(self.local_id or self.local_address)
        self.remote_id_tuple = parse_identity(self.remote_id or self.remote_address)


@dataclass(frozen=True)
class NatResult:
    local_behind_nat: bool
    peer_behind_nat: bool

    @property
    def any(self) -> bool:
        return self.local_behind_nat or self.peer_behind_nat


def _nat_hash(spi_i: bytes, spi_r: bytes, addr: str, port: int) -> bytes:
    # RFC 7296 2.23: SHA-1 (a protocol constant, not a security primitive) of SPIs, address, port
    return hashlib.sha1(spi_i + spi_r + ipaddress.ip_address(addr).packed + struct.pack("!H", port)).digest()


# --------------------------------------------------------------------------- the engine


class Ikev2Peer(ChildSaBook, IkeSaBook):
    """The IKEv2 state of one tunnel (one remote address)."""

    version = 2

    def __init__(self, config: Ikev2PeerConfig, *, random_bytes: Callable[[int], bytes] = os.urandom,
                 name: str = "") -> None:
        self.config = config
        self._rand = random_bytes
        self.name = name or config.remote_address
        self._out: list[Datagram] = []
        self._events: deque[IkeEvent] = deque()
        self._sas: list[IkeSa] = []
        self._children: list[ChildSa] = []
        self._schedule: Schedule[tuple[Timer, object]] = Schedule()
        self._started = False
        self._failures = 0
        self._child_failures = 0
        self.local_port = IKE_PORT
        self.remote_port = IKE_PORT
        self.local_behind_nat = False
        self.peer_behind_nat = False
        self.udp_encap = False
        self._last_seen: float | None = None
        self._phase1_up = False
        self._cookies = CookieJar(self)
        self.counters: dict[str, int] = {"retransmits": 0, "rekeys_ipsec": 0, "rekeys_ike": 0}
        self.last_error: str | None = None
        # what each entry of the schedule does when it is due
        self._timer_actions: dict[Timer, Callable[[object, float], None]] = {
            Timer.RETRANSMIT: self._on_retransmit, Timer.HALF_OPEN: self._on_half_open,
            Timer.IKE_REKEY: self._on_ike_rekey, Timer.IKE_EXPIRE: self._on_ike_expire,
            Timer.IKE_FORGET: self._on_ike_forget, Timer.DEFERRED: self._on_deferred,
            Timer.CHILD_REKEY: self._on_child_rekey, Timer.CHILD_EXPIRE: self._on_child_expire,
            Timer.CHILD_REMOVE: self._on_child_remove, Timer.CHILD_RETRY: self._on_child_retry,
            Timer.LIVENESS: self._liveness, Timer.KEEPALIVE: self._on_keepalive, Timer.RECONNECT: self._on_reconnect,
        }
        assert set(self._timer_actions) == set(Timer)
        # the responder of each exchange on an established IKE SA (IKE_AUTH: see _request)
        self._responders = {Exchange.INFORMATIONAL: self._respond_informational,
                            Exchange.CREATE_CHILD_SA: self._respond_create_child_sa}

    # ================================================================== IkeEngine API

    def start(self, now: float) -> None:
        self._started = True
        self._failures = 0
        if self.config.initiator and not self._connecting() and self._current() is None:
            self._initiate(now)
        self._flush(now)

    def stop(self, now: float) -> None:
        self._started = False
        self._schedule.cancel(Timer.RECONNECT)
        self._schedule.cancel(Timer.CHILD_RETRY)
        for sa in list(self._sas):
            self._delete_ike_now(sa)
        for c in list(self._children):
            self._drop_child(c, "stopped")
        self._forget_all("stopped")

    def receive_datagram(self, data: bytes, remote: tuple[str, int], local_port: int, now: float) -> None:
        try:
            self._receive(bytes(data), (remote[0], int(remote[1])), local_port, now)
        except Drop as d:
            self._drop(d.reason, d.detail)
        except Ikev2DecodeError as e:
            self._drop("malformed_" + e.reason, e.detail)
        except Ikev2IntegrityError as e:
            self._drop("integrity", str(e))
        except IkeCryptoError as e:
            self._drop("bad_key_exchange", str(e))
        except Exception as e:  # noqa: BLE001 - nothing escapes the engine
            log.debug("%s: internal error on input", self.name, exc_info=True)
            self._drop("internal_error", repr(e))
        try:
            self._flush(now)
        except Exception:  # noqa: BLE001
            log.warning("%s: internal error after input", self.name, exc_info=True)
            self._count("internal_error")

    def handle_timer(self, now: float) -> None:
        try:
            self._handle_timer(now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: internal error in timer: %r", self.name, e, exc_info=True)
            self._count("timer_internal_error")
        self._settle(now)

    def get_timer(self) -> float | None:
        return self._schedule.next_deadline()

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    def rekey_ipsec(self, now: float) -> None:
        try:
            sa = self._current()
            if sa is None:
                if self._started and self.config.initiator and not self._connecting():
                    self._initiate(now)
            else:
                installed = [c for c in self._children if c.state is ChildSaState.INSTALLED]
                if installed:
                    self._rekey_child(max(installed, key=lambda c: c.established_at), now)
                elif self._creating_child() is None:
                    self.queue(sa, CreateChildInitiator(self, sa))
            self._flush(now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: rekey_ipsec failed: %r", self.name, e, exc_info=True)

    def rekey_ike(self, now: float) -> None:
        try:
            sa = self._current()
            if sa is None:
                if self._started and self.config.initiator and not self._connecting():
                    self._initiate(now)
            else:
                self._rekey_ike(sa)
            self._flush(now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: rekey_ike failed: %r", self.name, e, exc_info=True)

    def sa_expiring(self, spi_in: int, hard: bool, now: float) -> None:
        try:
            c = self.child_by_spi_in(spi_in)
            if c is not None and (hard or c.state is ChildSaState.INSTALLED):
                self._schedule.set(Timer.CHILD_EXPIRE if hard else Timer.CHILD_REKEY, now, c)
            self._handle_timer(now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: sa_expiring failed: %r", self.name, e, exc_info=True)
        self._settle(now)

    def peer_alive(self, now: float) -> None:
        """Authenticated ESP from the peer arrived: it counts as liveness (RFC 7296 2.4)."""
        self._last_seen = now
        self._arm_liveness()

    def reconfigure(self, config: Ikev2PeerConfig, now: float) -> None:
        """New DPD and rekey timers from a config of the same identity (see IkeEngine): the
        liveness timer moves now, rekey margins and fuzz apply from the next SA's lifetime."""
        if (config.local_address, config.remote_address) != (self.config.local_address, self.config.remote_address):
            raise ValueError("reconfigure cannot change the tunnel's addresses")
        self.config = config
        if config.dpd_interval > 0:
            self._arm_liveness()
        else:
            self._schedule.cancel(Timer.LIVENESS)
        self._settle(now)

    def child_state(self, spi_in: int) -> ChildState | None:
        c = self.child_by_spi_in(spi_in)
        return c.public_state if c is not None else None

    def install_failed(self, spi_in: int, reason: str, now: float) -> None:
        try:
            c = self.child_by_spi_in(spi_in)
            if c is None:
                return
            self._error(f"data path refused {c.pair.describe()}: {reason}")
            self._count("install_failures")
            self._delete_children([c], now)
            self._drop_child(c, "install failed")
            self._child_failures += 1
            if not any(x.state is ChildSaState.INSTALLED for x in self._children):
                self._schedule.set(Timer.CHILD_RETRY, now + self._child_backoff())
            self._flush(now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: install_failed failed: %r", self.name, e, exc_info=True)

    def status(self) -> dict:
        sa = self._current()
        if sa is not None:
            state = "established"
        elif self._connecting():
            state = "connecting"
        elif self._started and not self.config.initiator:
            state = "waiting"
        else:
            state = "idle"
        live = self._liveness_request()
        return {
            "name": self.name,
            "version": 2,
            "state": state,
            "waiting_for_peer": state == "waiting",
            "local_address": self.config.local_address,
            "remote_address": self.config.remote_address,
            "local_port": self.local_port,
            "remote_port": self.remote_port,
            "algorithms": sa.proposal.name if sa and sa.proposal else None,
            "role": ("initiator" if sa.initiator else "responder") if sa else None,
            "ike_spi": {"initiator": sa.spi_i.hex(), "responder": sa.spi_r.hex()} if sa else None,
            "established_at": sa.established_at if sa else None,
            "expires_at": sa.expires_at if sa else None,
            "rekey_at": self._schedule.get(Timer.IKE_REKEY, sa) if sa else None,
            "ike_sas": [{"spi_i": s.spi_i.hex(), "spi_r": s.spi_r.hex(), "state": s.state.value,
                         "role": "initiator" if s.initiator else "responder"} for s in self._sas],
            "nat": {
                "local_behind_nat": self.local_behind_nat,
                "peer_behind_nat": self.peer_behind_nat,
                "udp_encap": self.udp_encap,
                "method": "rfc7296" if self.udp_encap else None,
            },
            "ipsec_sas": [
                {
                    "spi_in": f"{c.spi_in:08x}",
                    "spi_out": f"{c.spi_out:08x}",
                    "algorithms": c.proposal.name,
                    "state": c.public_state.value,
                    "udp_encap": c.pair.udp_encap,
                    "initiator": c.initiator,
                    "established_at": c.established_at,
                    "expires_at": c.expires_at,
                    "rekey_at": self._schedule.get(Timer.CHILD_REKEY, c),
                }
                for c in self._children
            ],
            "dpd": {
                "interval": self.config.dpd_interval,
                "retries": self.config.dpd_retries,
                "action": self.config.dpd_action,
                "peer_supports": True,
                "last_seen": self._last_seen,
                "outstanding": live.rt.tries + 1 if live else 0,
            },
            "counters": dict(self.counters),
            "last_error": self.last_error,
        }

    # ================================================================== Context (for exchanges)

    def rand(self, n: int) -> bytes:
        return self._rand(n)

    def rand_fn(self) -> Callable[[int], bytes]:
        return self._rand

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    _count = count

    def error(self, msg: str) -> None:
        self.last_error = msg
        log.info("%s: %s", self.name, msg)

    _error = error

    def emit(self, ev: IkeEvent) -> None:
        self._events.append(ev)

    def queue(self, sa: IkeSa, ex: InitiatorExchange, front: bool = False) -> None:
        ex.sa = sa
        if front:
            sa.queue.appendleft(ex)
        else:
            sa.queue.append(ex)

    def defer(self, sa: IkeSa, ex: InitiatorExchange, now: float) -> None:
        """Queue ``ex`` after a pause (the peer answered TEMPORARY_FAILURE, 2.25)."""
        sa.deferred.append(ex)
        self._schedule.set_earliest(Timer.DEFERRED, now + DEFER_DELAY + self._jitter(DEFER_DELAY), sa)

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self._rand(8)
            if spi != bytes(8) and all(spi not in (s.spi_i, s.spi_r) for s in self._sas):
                return spi

    def new_child_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._rand(4), "big")
            if spi >= 0x100 and all(c.spi_in != spi for c in self._children):
                return spi

    def psk(self) -> bytes:
        return self.config.psk

    def my_id(self) -> IdPayload:
        t, d = self.config.local_id_tuple
        return IdPayload(t, d)

    def check_peer_id(self, idp: IdPayload) -> None:
        want = self.config.remote_id_tuple
        if (idp.id_type, idp.data) != want:
            msg = (f"peer identity {describe_id(idp.id_type, idp.data)} does not match the expected "
                   f"{describe_id(*want)}")
            self._error(msg)
            self._count("id_mismatch")
            raise Drop("id_mismatch", msg)

    def nat_notifies(self, spi_i: bytes, spi_r: bytes, path: tuple[int, tuple[str, int]] | None = None
                     ) -> list[NotifyPayload]:
        """NAT_DETECTION_SOURCE_IP / DESTINATION_IP. ``path``: (our port, the peer's address and
        port) of the message being answered; by default the engine's current ports."""
        if self.config.nat_traversal == "off":
            return []
        local_port, remote = path if path else (self.local_port, (self.config.remote_address, self.remote_port))
        if self.config.nat_traversal == "force":
            src = hashlib.sha1(self._rand(20)).digest()
        else:
            src = _nat_hash(spi_i, spi_r, self.config.local_address, local_port)
        dst = _nat_hash(spi_i, spi_r, remote[0], remote[1])
        return [NotifyPayload(Notify.NAT_DETECTION_SOURCE_IP, data=src),
                NotifyPayload(Notify.NAT_DETECTION_DESTINATION_IP, data=dst)]

    def detect_nat(self, sa: IkeSa, spi_r: bytes, payloads: list[Payload], remote: tuple[str, int],
                   local_port: int) -> None:
        """Compare the peer's NAT-D hashes (2.23); the result is applied when ``sa`` is
        authenticated. An initiator moves to port 4500 for IKE_AUTH at once when NAT is found."""
        if self.config.nat_traversal == "off":
            return
        src = [p.data for p in payloads if isinstance(p, NotifyPayload) and p.notify_type == Notify.NAT_DETECTION_SOURCE_IP]
        dst = [p.data for p in payloads
               if isinstance(p, NotifyPayload) and p.notify_type == Notify.NAT_DETECTION_DESTINATION_IP]
        if not src or not dst:
            sa.nat = NatResult(self.config.nat_traversal == "force", False)
        else:
            peer_behind = _nat_hash(sa.spi_i, spi_r, remote[0], remote[1]) not in src
            local_behind = _nat_hash(sa.spi_i, spi_r, self.config.local_address, local_port) not in dst
            sa.nat = NatResult(local_behind or self.config.nat_traversal == "force", peer_behind)
        if sa.initiator and sa.nat.any and self.local_port == IKE_PORT:
            self.local_port = NATT_PORT
            self.remote_port = NATT_PORT

    def adopt_path(self, remote: tuple[str, int], local_port: int) -> None:
        """The peer authenticated from ``remote`` to our ``local_port``: answer there from now on."""
        if local_port != self.local_port or remote[1] != self.remote_port:
            self.local_port = local_port
            self.remote_port = remote[1]

    def ts_offer(self) -> tuple[list[TrafficSelector], list[TrafficSelector]]:
        return ([TrafficSelector.from_network(self.config.local_ts_net)],
                [TrafficSelector.from_network(self.config.remote_ts_net)])

    def narrow(self, tsi: list[TrafficSelector], tsr: list[TrafficSelector], initiator: bool):
        if initiator:
            local, remote = within(tsi, self.config.local_ts_net), within(tsr, self.config.remote_ts_net)
        else:
            local, remote = narrow(tsr, self.config.local_ts_net), narrow(tsi, self.config.remote_ts_net)
        if local is None or remote is None:
            return None
        return local, remote

    def liveness_answered(self, now: float) -> None:
        self._count("liveness_ok")

    # ================================================================== receive path

    def _receive(self, data: bytes, remote: tuple[str, int], local_port: int, now: float) -> None:
        if remote[0] != self.config.remote_address:
            raise Drop("wrong_address", remote[0])
        if len(data) >= 18 and data[17] >> 4 != 2:
            raise Drop("wrong_version", f"IKE major version {data[17] >> 4} on an IKEv2 tunnel")
        hdr = decode_header(data)
        try:
            payloads = decode_payloads(hdr.next_payload, data[HEADER_LEN:], HEADER_LEN)
        except Ikev2DecodeError as e:
            if e.reason == "unsupported_critical" and hdr.exchange == Exchange.IKE_SA_INIT and not hdr.is_response:
                self._answer_plain(hdr, [NotifyPayload(Notify.UNSUPPORTED_CRITICAL_PAYLOAD,
                                                       data=bytes([e.payload_type]))], remote, local_port)
            raise
        if hdr.exchange == Exchange.IKE_SA_INIT:
            if hdr.is_response:
                self._init_response(hdr, payloads, data, remote, local_port, now)
            else:
                self._init_request(hdr, payloads, data, remote, local_port, now)
            return
        if hdr.exchange not in (Exchange.IKE_AUTH, Exchange.CREATE_CHILD_SA, Exchange.INFORMATIONAL):
            raise Drop("unsupported_exchange", str(hdr.exchange))
        sa = next((s for s in self._sas if s.spi_i == hdr.spi_i and s.spi_r == hdr.spi_r), None)
        if sa is None:
            raise Drop("unknown_spi", f"{hdr.spi_i.hex()}/{hdr.spi_r.hex()}")
        if hdr.from_initiator == sa.initiator:
            raise Drop("bad_flags", "initiator flag of our own role")
        sk = payloads[-1] if payloads and isinstance(payloads[-1], SkPayload) else None
        if sk is None or len(payloads) != 1:
            self._count("unprotected_ignored")
            raise Drop("unprotected", f"exchange {hdr.exchange} without (only) an SK payload")
        if not sa.has_keys:
            raise Drop("no_keys")
        if hdr.is_response:
            self._response(sa, hdr, sk, data, remote, local_port, now)
        else:
            self._request(sa, hdr, sk, data, remote, local_port, now)

    def _authenticated(self, sa: IkeSa, remote: tuple[str, int], local_port: int, now: float) -> None:
        """A message protected by ``sa`` verified: liveness, and following the peer's NAT port."""
        self._last_seen = now
        self._arm_liveness()
        if not sa.established and sa.state is not IkeSaState.REKEYED:
            return
        if local_port == NATT_PORT and (remote[1] != self.remote_port or self.local_port != NATT_PORT):
            log.info("%s: peer moved to port %d (was %d/%d)", self.name, remote[1], self.local_port, self.remote_port)
            self._count("peer_port_changes")
            self.local_port = NATT_PORT
            self.remote_port = remote[1]

    def _response(self, sa: IkeSa, hdr: Header, sk: SkPayload, data: bytes, remote, local_port: int,
                  now: float) -> None:
        req = sa.outstanding
        if req is None or hdr.message_id != req.mid or hdr.exchange != req.exchange.exchange:
            raise Drop("unexpected_response", f"message ID {hdr.message_id}")
        inner = sa.unprotect(data, sk)
        self._authenticated(sa, remote, local_port, now)
        self._finish(sa, req, Step.DONE)
        req.exchange.on_response(Received(hdr, inner, data, remote, local_port), now)

    def _finish(self, sa: IkeSa, req: Request, step: Step) -> None:
        sa.outstanding = None
        self._schedule.cancel(Timer.RETRANSMIT, sa)
        req.exchange.go(step)

    def _request(self, sa: IkeSa, hdr: Header, sk: SkPayload, data: bytes, remote, local_port: int,
                 now: float) -> None:
        mid = hdr.message_id
        if sa.last_request is not None and mid == sa.peer_mid - 1:
            if data == sa.last_request and sa.last_response is not None:
                self._out.append(Datagram(sa.last_response, remote, local_port))
                self._count("retransmits_answered")
                return
            raise Drop("duplicate_message_id", f"{mid}")
        if mid != sa.peer_mid:
            raise Drop("bad_message_id", f"{mid}, expected {sa.peer_mid}")
        after: Callable[[], None] | None = None
        try:
            inner = sa.unprotect(data, sk)
        except Ikev2DecodeError as e:
            if e.reason != "unsupported_critical":
                raise
            resp: list[Payload] = [NotifyPayload(Notify.UNSUPPORTED_CRITICAL_PAYLOAD, data=bytes([e.payload_type]))]
            self._count("unsupported_critical_answered")
        else:
            msg = Received(hdr, inner, data, remote, local_port)
            if sa.state is IkeSaState.INIT_DONE:
                if hdr.exchange != Exchange.IKE_AUTH:
                    raise Drop("before_ike_auth", f"exchange {hdr.exchange} on a half-open IKE SA")
                resp, ok = ike_auth.respond(self, sa, msg, now)
                if not ok:
                    after = lambda: self._forget(sa)  # noqa: E731
                else:
                    self._authenticated(sa, remote, local_port, now)
            elif sa.state in (IkeSaState.INIT_SENT, IkeSaState.AUTH_SENT):
                raise Drop("before_ike_auth", "a request from the responder before IKE_AUTH completed")
            else:
                self._authenticated(sa, remote, local_port, now)
                resp, after = self._dispatch(sa, msg, now)
        sa.peer_mid = mid + 1
        out = sa.protect(Exchange(hdr.exchange), mid, True, resp)
        sa.last_request = data
        sa.last_response = out
        self._out.append(Datagram(out, remote, local_port))
        if after is not None:
            after()

    def _dispatch(self, sa: IkeSa, msg: Received, now: float) -> tuple[list[Payload], Callable[[], None] | None]:
        handler = self._responders.get(msg.hdr.exchange)
        if handler is None:
            raise Drop("unexpected_ike_auth", "IKE_AUTH on an established IKE SA")
        return handler(sa, msg, now)

    def _respond_informational(self, sa: IkeSa, msg: Received, now: float):
        return informational.respond(self, sa, msg, now)

    def _respond_create_child_sa(self, sa: IkeSa, msg: Received, now: float):
        if not sa.established:
            self._count("temporary_failures_sent")
            return [NotifyPayload(Notify.TEMPORARY_FAILURE)], None
        sap = first(msg.payloads, SaPayload)
        if sap is not None and sap.proposals and sap.proposals[0].protocol == Protocol.IKE:
            return ike_rekey.respond(self, sa, msg, now), None
        return create_child.respond(self, sa, msg, now), None

    # ------------------------------------------------------------------ IKE_SA_INIT

    def _answer_plain(self, hdr: Header, payloads: list[Payload], remote, local_port: int) -> None:
        h = Header(hdr.spi_i, hdr.spi_r, 0, hdr.exchange, int(Flag.RESPONSE), hdr.message_id)
        self._out.append(Datagram(encode_message(h, payloads), remote, local_port))

    def _init_request(self, hdr: Header, payloads, data: bytes, remote, local_port: int, now: float) -> None:
        existing = next((s for s in self._sas if s.spi_i == hdr.spi_i and not s.initiator), None)
        if existing is not None:
            if data == existing.init_request and existing.init_response:
                self._out.append(Datagram(existing.init_response, remote, local_port))
                self._count("retransmits_answered")
                return
            raise Drop("duplicate_spi", "IKE_SA_INIT for an IKE SA we already have")
        half_open = [s for s in self._sas if s.state is IkeSaState.INIT_DONE]
        msg = Received(hdr, payloads, data, remote, local_port)
        resp, sa = ike_sa_init.respond(self, msg, now, need_cookie=len(half_open) >= self.config.cookie_threshold,
                                       jar=self._cookies)
        if sa is not None:
            self.detect_nat(sa, bytes(8), payloads, remote, local_port)
            resp += self.nat_notifies(sa.spi_i, sa.spi_r, (local_port, remote))
        h = Header(hdr.spi_i, sa.spi_r if sa else bytes(8), 0, Exchange.IKE_SA_INIT, int(Flag.RESPONSE), 0)
        out = encode_message(h, resp)
        self._out.append(Datagram(out, remote, local_port))
        if sa is None:
            return
        sa.init_response = out
        sa.last_response = None
        while len(half_open) >= self.config.half_open_limit:
            oldest = min(half_open, key=lambda s: s.created_at)
            half_open.remove(oldest)
            self._forget(oldest)
            self._count("half_open_evicted")
        self._sas.append(sa)
        self._schedule.set(Timer.HALF_OPEN, now + HALF_OPEN_TIMEOUT, sa)
        log.info("%s: answered IKE_SA_INIT (%s)", self.name, sa.proposal.name)

    def _init_response(self, hdr: Header, payloads, data: bytes, remote, local_port: int, now: float) -> None:
        sa = next((s for s in self._sas if s.initiator and s.spi_i == hdr.spi_i
                   and s.state is IkeSaState.INIT_SENT), None)
        if sa is None:
            raise Drop("unknown_spi", "IKE_SA_INIT response for no IKE SA of ours")
        req = sa.outstanding
        if req is None or not isinstance(req.exchange, IkeSaInitInitiator) or hdr.message_id != req.mid:
            raise Drop("unexpected_response", "IKE_SA_INIT response")
        if hdr.from_initiator:
            raise Drop("bad_flags", "IKE_SA_INIT response with the initiator flag")
        req.exchange.on_response(Received(hdr, payloads, data, remote, local_port), now)
        if sa.outstanding is req:
            self._finish(sa, req, Step.DONE)

    # ================================================================== sending

    def _send(self, data: bytes) -> None:
        self._out.append(Datagram(data, (self.config.remote_address, self.remote_port), self.local_port))

    def _pump(self, now: float) -> None:
        """Send the next queued request of every IKE SA whose window is free (window size 1)."""
        for sa in list(self._sas):
            while sa in self._sas and sa.outstanding is None and sa.queue:
                ex = sa.queue.popleft()
                if ex.step is not Step.QUEUED:
                    continue
                payloads = ex.request(now)
                if payloads is None:
                    ex.go(Step.OBSOLETE)
                    continue
                if ex.exchange == Exchange.IKE_SA_INIT:
                    sa.my_mid = 0
                    mid = sa.take_mid()
                    data = encode_message(Header(sa.spi_i, bytes(8), 0, Exchange.IKE_SA_INIT, int(Flag.INITIATOR), mid),
                                          payloads)
                    sa.init_request = data
                else:
                    mid = sa.take_mid()
                    data = sa.protect(ex.exchange, mid, False, payloads)
                interval, tries = ex.retransmission()
                fixed = isinstance(ex, InformationalInitiator) and ex.kind is InfoKind.LIVENESS
                rt = Retransmission(Datagram(data, (self.config.remote_address, self.remote_port), self.local_port),
                                    interval)
                sa.outstanding = Request(ex, mid, data, rt, tries, fixed)
                ex.go(Step.SENT)
                self._send(data)
                self._schedule.set(Timer.RETRANSMIT, now + interval, sa)

    def _flush(self, now: float) -> None:
        self._pump(now)
        self._settle(now)

    def _settle(self, now: float) -> None:
        """Run what became due meanwhile, so that the next deadline is later than ``now``."""
        for _ in range(MAX_TIMER_ROUNDS):
            nd = self._schedule.next_deadline()
            if nd is None or nd > now:
                return
            try:
                self._handle_timer(now)
            except Exception as e:  # noqa: BLE001
                log.warning("%s: internal error in timer: %r", self.name, e, exc_info=True)
                self._count("timer_internal_error")
        for deadline, action, owner in list(self._schedule):
            if deadline <= now:
                self._count("timer_overrun")
                self._schedule.set(action, now + 1.0, owner)

    # ================================================================== timers

    def _handle_timer(self, now: float) -> None:
        self._schedule.run(now, self._fire)
        self._pump(now)

    def _fire(self, what: Timer, owner: object, now: float) -> None:
        self._timer_actions[what](owner, now)

    def _on_retransmit(self, owner: object, now: float) -> None:
        if isinstance(owner, IkeSa) and owner in self._sas:
            self._retransmit(owner, now)

    def _on_keepalive(self, owner: object, now: float) -> None:
        if self.udp_encap and self.local_behind_nat and self._current() is not None:
            self._out.append(Datagram(b"\xff", (self.config.remote_address, self.remote_port), NATT_PORT, raw=True))
            self._count("keepalives_sent")
            self._schedule.set(Timer.KEEPALIVE, now + KEEPALIVE_INTERVAL)

    def _retransmit(self, sa: IkeSa, now: float) -> None:
        req = sa.outstanding
        if req is None:
            return
        if req.fixed:
            # liveness: dpd_retries sends dpd_interval apart (AWS's DPD timeout semantics)
            deadline = None
            if req.rt.tries < req.max_tries:
                req.rt.tries += 1
                deadline = now + req.rt.interval
        else:
            deadline = req.rt.next_try(now, req.max_tries)
        if deadline is None:
            self._finish(sa, req, Step.FAILED)
            req.exchange.on_timeout(now)
            return
        self._send(req.data)
        self._count("retransmits")
        self._schedule.set(Timer.RETRANSMIT, deadline, sa)

    def _liveness(self, owner: object, now: float) -> None:
        sa = self._current()
        interval = float(self.config.dpd_interval)
        if sa is None or interval <= 0 or self._last_seen is None:
            return
        if now < self._last_seen + interval:
            self._schedule.set(Timer.LIVENESS, self._last_seen + interval)
            return
        if sa.outstanding is not None or sa.queue:
            # a request is on its way: its answer (or its retransmissions running out) tells
            self._schedule.set(Timer.LIVENESS, now + interval)
            return
        self.queue(sa, InformationalInitiator(self, sa, InfoKind.LIVENESS))
        self._schedule.set(Timer.LIVENESS, now + interval)

    def _arm_liveness(self) -> None:
        if self.config.dpd_interval > 0 and self._last_seen is not None and self._current() is not None:
            self._schedule.set(Timer.LIVENESS, self._last_seen + float(self.config.dpd_interval))

    def _liveness_request(self) -> Request | None:
        for sa in self._sas:
            r = sa.outstanding
            if r is not None and isinstance(r.exchange, InformationalInitiator) and r.exchange.kind is InfoKind.LIVENESS:
                return r
        return None

    # ================================================================== helpers

    def _drop(self, reason: str, detail: str = "") -> None:
        self._count("drop_" + reason)
        log.debug("%s: dropped message: %s %s", self.name, reason, detail)

    def _jitter(self, span: float) -> float:
        return span * int.from_bytes(self._rand(2), "big") / 65536

    def _rekey_time(self, now: float, lifetime: float) -> float:
        margin = min(float(self.config.rekey_margin), lifetime / 2)
        fuzz_max = margin * self.config.rekey_fuzz / 100.0
        fuzz_max = min(fuzz_max, max(0.0, lifetime - margin) / 2)
        r = int.from_bytes(self._rand(4), "big") / 2**32
        return now + lifetime - margin - r * fuzz_max
