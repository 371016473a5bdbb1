"""Sans-IO IKEv1 engine: one :class:`IkePeer` per configured tunnel.

Main mode with pre-shared keys (initiator and responder), quick mode (initiator and
responder, PFS), protected informational exchanges (DELETE, INITIAL-CONTACT, DPD), NAT-T
(RFC 3947 and the drafts strongSwan speaks), lifetimes, rekeying and retransmission.

The engine never reads a clock, opens a socket or sleeps: inputs take ``now`` (monotonic
seconds), outputs are polled (``datagrams_to_send``, ``next_event``, ``get_timer``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

from cgwd.ipsec_sa import ENC_KEY_BYTES, GCM_SALT_BYTES, INTEG_KEY_BYTES, IpsecSaPair, is_aead

from . import constants as C
from . import crypto
from .codec import (
    Attribute,
    DeletePayload,
    Header,
    HashPayload,
    IdPayload,
    IkeDecodeError,
    KePayload,
    NatDPayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    Transform,
    VendorIdPayload,
    decode_header,
    decode_payloads,
    describe_id,
    encode_message,
    encode_payloads,
    id_to_network,
    parse_identity,
    subnet_id,
)
from .events import (
    Datagram,
    IkeEvent,
    IpsecSaDown,
    IpsecSaUp,
    NatDetected,
    PeerDead,
    Phase1Down,
    Phase1Up,
)

log = logging.getLogger("cgwd.ike")

IKE_PORT = 500
NATT_PORT = 4500
NONCE_LEN = 32
DELETE_DELAY = 5.0  # seconds a rekeyed IPsec SA pair lives on (make-before-break)
HALF_OPEN_LIMIT = 8
HALF_OPEN_TIMEOUT = 30.0
KEEPALIVE_INTERVAL = 20.0
RESTART_BACKOFF_MIN = 5.0
RESTART_BACKOFF_MAX = 300.0
QM_RETRY_DELAY = 10.0
RX_CACHE = 32


class _Drop(Exception):
    """Internal: drop the message being processed with a counted reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- algorithms

_ENC_BITS = {"aes128": 128, "aes256": 256}
_HASH_ALIASES = {"sha1": "sha1", "sha": "sha1", "sha256": "sha256", "sha2_256": "sha256",
                 "sha384": "sha384", "sha2_384": "sha384", "sha512": "sha512", "sha2_512": "sha512"}


@dataclass(frozen=True)
class IkeAlgs:
    enc_bits: int
    hash: str
    group: int

    @property
    def name(self) -> str:
        return f"aes{self.enc_bits}-{self.hash}-{C.GROUP_NAMES[self.group]}"

    def attributes(self, lifetime: int) -> list[Attribute]:
        return [
            Attribute(C.P1_ENCRYPTION, C.P1_ENC_AES_CBC),
            Attribute(C.P1_KEY_LENGTH, self.enc_bits),
            Attribute(C.P1_HASH, C.P1_HASH_BY_NAME[self.hash]),
            Attribute(C.P1_AUTH, C.P1_AUTH_PSK),
            Attribute(C.P1_GROUP, self.group),
            Attribute(C.P1_LIFE_TYPE, C.LIFE_SECONDS),
            Attribute(C.P1_LIFE_DURATION, lifetime),
        ]


@dataclass(frozen=True)
class EspAlgs:
    encryption: str
    integrity: str | None
    group: int | None

    @property
    def name(self) -> str:
        parts = [self.encryption]
        if self.integrity:
            parts.append(self.integrity)
        if self.group:
            parts.append(C.GROUP_NAMES[self.group])
        return "-".join(parts)

    def keymat_len(self) -> int:
        n = ENC_KEY_BYTES[self.encryption]
        if is_aead(self.encryption):
            return n + GCM_SALT_BYTES
        return n + INTEG_KEY_BYTES[self.integrity or "sha1"]


def parse_ike_proposal(text: str) -> IkeAlgs:
    parts = text.strip().lower().split("-")
    if len(parts) != 3 or parts[0] not in _ENC_BITS or parts[1] not in _HASH_ALIASES or parts[2] not in C.GROUP_BY_NAME:
        raise ValueError(f"unsupported IKE proposal {text!r} (want aes128|aes256-sha1|sha256|sha384|sha512-<dh group>)")
    return IkeAlgs(_ENC_BITS[parts[0]], _HASH_ALIASES[parts[1]], C.GROUP_BY_NAME[parts[2]])


def parse_esp_proposal(text: str) -> EspAlgs:
    parts = text.strip().lower().split("-")
    if not parts or parts[0] not in ENC_KEY_BYTES:
        raise ValueError(f"unsupported ESP proposal {text!r}")
    enc = parts.pop(0)
    integ = None
    if not is_aead(enc):
        if not parts or parts[0] not in _HASH_ALIASES:
            raise ValueError(f"ESP proposal {text!r} needs an integrity algorithm")
        integ = _HASH_ALIASES[parts.pop(0)]
    group = None
    if parts:
        if parts[0] not in C.GROUP_BY_NAME:
            raise ValueError(f"unsupported DH group in ESP proposal {text!r}")
        group = C.GROUP_BY_NAME[parts.pop(0)]
    if parts:
        raise ValueError(f"trailing junk in ESP proposal {text!r}")
    return EspAlgs(enc, integ, group)


def _ike_algs_from_transform(t: Transform) -> tuple[IkeAlgs, int] | None:
    """(algorithms, lifetime seconds or 0) of a phase-1 transform we support, else None."""
    if t.transform_id != C.KEY_IKE:
        return None
    a: dict[int, int] = {}
    lifetime = 0
    life_type = None
    for attr in t.attributes:
        if attr.type == C.P1_LIFE_TYPE:
            life_type = attr.value
        elif attr.type == C.P1_LIFE_DURATION:
            if life_type == C.LIFE_SECONDS:
                lifetime = attr.value
        else:
            a.setdefault(attr.type, attr.value)
    if a.get(C.P1_ENCRYPTION) != C.P1_ENC_AES_CBC or a.get(C.P1_AUTH) != C.P1_AUTH_PSK:
        return None
    bits = a.get(C.P1_KEY_LENGTH)
    h = C.P1_HASH_NAMES.get(a.get(C.P1_HASH, -1))
    g = a.get(C.P1_GROUP)
    if bits not in (128, 256) or h is None or g not in crypto.SUPPORTED_GROUPS:
        return None
    return IkeAlgs(bits, h, g), lifetime


@dataclass
class _EspChoice:
    algs: EspAlgs
    encap_mode: int
    lifetime: int
    lifetime_kb: int


def _esp_algs_from_transform(t: Transform) -> _EspChoice | None:
    a: dict[int, int] = {}
    lifetime = 0
    kb = 0
    life_type = None
    for attr in t.attributes:
        if attr.type == C.P2_LIFE_TYPE:
            life_type = attr.value
        elif attr.type == C.P2_LIFE_DURATION:
            if life_type == C.LIFE_SECONDS:
                lifetime = attr.value
            elif life_type == C.LIFE_KILOBYTES:
                kb = attr.value
        else:
            a.setdefault(attr.type, attr.value)
    bits = a.get(C.P2_KEY_LENGTH)
    if t.transform_id == C.ESP_AES_CBC:
        enc = {128: "aes128", 256: "aes256"}.get(bits or 0)
        integ = C.P2_AUTH_NAMES.get(a.get(C.P2_AUTH, -1))
        if integ is None:
            return None
    elif t.transform_id == C.ESP_AES_GCM_16:
        enc = {128: "aes128gcm16", 256: "aes256gcm16"}.get(bits or 0)
        integ = None
        if C.P2_AUTH in a:
            return None
    else:
        return None
    if enc is None:
        return None
    group = a.get(C.P2_GROUP)
    if group is not None and group not in crypto.SUPPORTED_GROUPS:
        return None
    mode = a.get(C.P2_ENCAP_MODE, C.ENCAP_TUNNEL)
    if mode not in (C.ENCAP_TUNNEL, C.ENCAP_UDP_TUNNEL_RFC, C.ENCAP_UDP_TUNNEL_DRAFT):
        return None
    return _EspChoice(EspAlgs(enc, integ, group), mode, lifetime, kb)


def _esp_transform(algs: EspAlgs, number: int, encap_mode: int, lifetime: int, kb: int) -> Transform:
    attrs = [Attribute(C.P2_LIFE_TYPE, C.LIFE_SECONDS), Attribute(C.P2_LIFE_DURATION, lifetime)]
    if kb:
        attrs += [Attribute(C.P2_LIFE_TYPE, C.LIFE_KILOBYTES), Attribute(C.P2_LIFE_DURATION, kb)]
    if algs.group:
        attrs.append(Attribute(C.P2_GROUP, algs.group))
    attrs.append(Attribute(C.P2_ENCAP_MODE, encap_mode))
    if algs.integrity:
        attrs.append(Attribute(C.P2_AUTH, C.P2_AUTH_BY_NAME[algs.integrity]))
    attrs.append(Attribute(C.P2_KEY_LENGTH, ENC_KEY_BYTES[algs.encryption] * 8))
    tid = C.ESP_AES_GCM_16 if is_aead(algs.encryption) else C.ESP_AES_CBC
    return Transform(number, tid, attrs)


# --------------------------------------------------------------------------- configuration


@dataclass
class IkePeerConfig:
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
    initiator: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.psk, str):
            self.psk = self.psk.encode()
        if not self.psk:
            raise ValueError("empty pre-shared key")
        self.ike_algs = [parse_ike_proposal(p) for p in self.ike_proposals]
        self.esp_algs = [parse_esp_proposal(p) for p in self.esp_proposals]
        if not self.ike_algs or not self.esp_algs:
            raise ValueError("need at least one IKE and one ESP proposal")
        if self.dpd_action not in ("clear", "restart", "hold"):
            raise ValueError(f"dpd_action must be clear|restart|hold, not {self.dpd_action!r}")
        if self.nat_traversal not in ("auto", "force", "off"):
            raise ValueError(f"nat_traversal must be auto|force|off, not {self.nat_traversal!r}")
        ipaddress.ip_address(self.local_address)
        ipaddress.ip_address(self.remote_address)
        self.local_ts_net = ipaddress.ip_network(self.local_ts, strict=False)
        self.remote_ts_net = ipaddress.ip_network(self.remote_ts, strict=False)
        self.local_id_tuple = parse_identity(self.local_id or self.local_address)
        self.remote_id_tuple = parse_identity(self.remote_id or self.remote_address)


# --------------------------------------------------------------------------- state objects


@dataclass
class _Pending:
    """An initiator message awaiting its answer (retransmitted with backoff)."""

    datagram: Datagram
    deadline: float
    interval: float
    tries: int = 0


class _IsakmpSa:
    def __init__(self, icookie: bytes, rcookie: bytes, initiator: bool, now: float) -> None:
        self.icookie = icookie
        self.rcookie = rcookie
        self.initiator = initiator
        self.state = "MM_I1" if initiator else "MM_R0"
        self.created_at = now
        self.algs: IkeAlgs | None = None
        self.lifetime = 0
        self.dh: crypto.DiffieHellman | None = None
        self.ni = b""
        self.nr = b""
        self.gxi = b""
        self.gxr = b""
        self.keys: crypto.Phase1Keys | None = None
        self.iv = b""
        self.p1_last_block = b""
        self.sai_b = b""
        self.natt: str | None = None  # "rfc" | "draft" | None
        self.natt_vid = C.VID_NATT_DRAFT_02N
        self.peer_dpd = False
        self.peer_vids: list[bytes] = []
        self.established_at: float | None = None
        self.expires_at: float | None = None
        self.rekey_at: float | None = None
        self.rekey_started = False
        self.pending: _Pending | None = None
        self.send_initial_contact = False
        self.qm: dict[int, _QuickMode] = {}
        self.done_mids: OrderedDict[int, None] = OrderedDict()
        self.replaces: _IsakmpSa | None = None

    @property
    def established(self) -> bool:
        return self.state == "ESTABLISHED"

    @property
    def cookies(self) -> bytes:
        return self.icookie + self.rcookie

    def hash_size(self) -> int:
        return crypto.HASH_SIZES[self.algs.hash] if self.algs else 20


class _QuickMode:
    def __init__(self, mid: int, initiator: bool, now: float) -> None:
        self.mid = mid
        self.initiator = initiator
        self.state = "QM_I1" if initiator else "QM_R1"
        self.created_at = now
        self.iv = b""
        self.ni = b""
        self.nr = b""
        self.dh: crypto.DiffieHellman | None = None
        self.gxy = b""
        self.spi_in = 0
        self.spi_out = 0
        self.offered: list[EspAlgs] = []
        self.choice: _EspChoice | None = None
        self.pending: _Pending | None = None
        self.replaces: int | None = None  # spi_in of the pair this rekeys
        self.commit = False
        self.id_ci: tuple[int, bytes] | None = None
        self.id_cr: tuple[int, bytes] | None = None
        self.connected_deadline: float | None = None
        # when we sent the message on which the peer installs the pair (QM3 as initiator,
        # QM2 as responder): the peer's order of installation in a rekey collision
        self.peer_install_at = 0.0


@dataclass
class _Child:
    pair: IpsecSaPair
    established_at: float
    expires_at: float
    rekey_at: float | None
    state: str = "installed"  # installed | rekeyed
    delete_at: float | None = None
    rekeying: bool = False
    initiator: bool = True  # negotiated by a quick mode we started
    peer_install_at: float = 0.0  # see _QuickMode.peer_install_at
    lingering: bool = False  # lost a rekey collision: kept (not deleted) until replaced or expired


# --------------------------------------------------------------------------- the peer


class IkePeer:
    """The IKEv1 state of one tunnel (one remote address)."""

    def __init__(self, config: IkePeerConfig, *, random_bytes: Callable[[int], bytes] = os.urandom, name: str = "") -> None:
        self.config = config
        self._rand = random_bytes
        self.name = name or config.remote_address
        self._out: list[Datagram] = []
        self._events: deque[IkeEvent] = deque()
        self._sas: list[_IsakmpSa] = []
        self._children: list[_Child] = []
        self._started = False
        self._first_phase1 = True
        self._reconnect_at: float | None = None
        self._failures = 0
        self._child_retry_at: float | None = None
        self.local_port = IKE_PORT
        self.remote_port = IKE_PORT
        self.local_behind_nat = False
        self.peer_behind_nat = False
        self.udp_encap = False
        self._natt_kind: str | None = None
        self._dpd_last_seen: float | None = None
        self._dpd_outstanding = 0
        self._dpd_seq = int.from_bytes(self._rand(4), "big") & 0x7FFFFFFF
        self._dpd_last_sent: float | None = None
        self._keepalive_at: float | None = None
        self._rx_cache: OrderedDict[bytes, list[Datagram]] = OrderedDict()
        self.counters: dict[str, int] = {"retransmits": 0, "rekeys_ipsec": 0, "rekeys_ike": 0}
        self.last_error: str | None = None
        self._phase1_was_up = False
        # RFC 2408 4.8 commit bit: set it on our quick-mode responses (then send CONNECTED)
        self.commit_bit = False
        # Which PFS group our quick modes lead with (index into _pfs_groups()): see _esp_offer
        self._pfs_index = 0

    # ------------------------------------------------------------------ public API

    def start(self, now: float) -> None:
        self._started = True
        self._first_phase1 = True
        self._failures = 0
        if not self._connecting() and not self._current_sa():
            self._initiate_main_mode(now)

    def stop(self, now: float) -> None:
        self._started = False
        self._reconnect_at = None
        self._child_retry_at = None
        sa = self._current_sa()
        for child in list(self._children):
            if sa:
                self._send_delete_esp(sa, [child.pair.spi_in])
            self._remove_child(child, "stopped")
        for s in list(self._sas):
            if s.established:
                self._send_info(s, [DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[s.cookies])])
        self._drop_all_isakmp("stopped")

    def receive_datagram(self, data: bytes, remote: tuple[str, int], local_port: int, now: float) -> None:
        try:
            self._receive(bytes(data), remote, local_port, now)
        except _Drop as d:
            self._drop(d.reason, d.detail)
        except IkeDecodeError as e:
            self._drop("malformed_" + e.reason, e.detail)
        except crypto.IkeCryptoError as e:
            self._drop("bad_key_exchange", str(e))
        except Exception as e:  # noqa: BLE001 - nothing escapes the engine
            log.debug("%s: internal error on input", self.name, exc_info=True)
            self._drop("internal_error", repr(e))

    def handle_timer(self, now: float) -> None:
        try:
            self._handle_timer(now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: internal error in timer: %r", self.name, e, exc_info=True)
            self._count("timer_internal_error")

    def get_timer(self) -> float | None:
        ds: list[float] = []
        for sa in self._sas:
            if sa.pending:
                ds.append(sa.pending.deadline)
            if sa.established:
                if sa.rekey_at is not None and not sa.rekey_started and self._started and self.config.initiator:
                    ds.append(sa.rekey_at)
                if sa.expires_at is not None:
                    ds.append(sa.expires_at)
            elif not sa.initiator:
                ds.append(sa.created_at + HALF_OPEN_TIMEOUT)
            for qm in sa.qm.values():
                if qm.pending:
                    ds.append(qm.pending.deadline)
                elif qm.connected_deadline is not None:
                    ds.append(qm.connected_deadline)
                elif not qm.initiator:
                    ds.append(qm.created_at + HALF_OPEN_TIMEOUT)
        for c in self._children:
            ds.append(c.expires_at)
            if c.delete_at is not None:
                ds.append(c.delete_at)
            if c.rekey_at is not None and c.state == "installed" and not c.rekeying and self._may_rekey():
                ds.append(c.rekey_at)
        for t in (self._reconnect_at, self._child_retry_at, self._dpd_deadline(), self._keepalive_deadline()):
            if t is not None:
                ds.append(t)
        return min(ds) if ds else None

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    def rekey_ipsec(self, now: float) -> None:
        try:
            sa = self._current_sa()
            if sa is None:
                if self._started and not self._connecting():
                    self._initiate_main_mode(now)
                return
            installed = [c for c in self._children if c.state == "installed"]
            if installed:
                c = installed[-1]
                c.rekeying = True
                self._initiate_quick_mode(sa, now, replaces=c.pair.spi_in)
            else:
                self._initiate_quick_mode(sa, now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: rekey_ipsec failed: %r", self.name, e)

    def rekey_ike(self, now: float) -> None:
        try:
            if not any(sa.initiator and not sa.established for sa in self._sas):
                cur = self._current_sa()
                if cur:
                    cur.rekey_started = True
                self._initiate_main_mode(now, replaces=cur)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: rekey_ike failed: %r", self.name, e)

    def sa_expiring(self, spi_in: int, hard: bool, now: float) -> None:
        try:
            for c in self._children:
                if c.pair.spi_in == spi_in:
                    if hard:
                        c.expires_at = now
                    elif c.state == "installed" and c.rekey_at is not None:
                        c.rekey_at = min(c.rekey_at, now)
                    elif c.state == "installed":
                        c.rekey_at = now
            self._handle_timer(now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: sa_expiring failed: %r", self.name, e)

    def peer_alive(self, now: float) -> None:
        """The data path saw authenticated traffic from the peer (resets DPD idleness)."""
        self._dpd_last_seen = now
        self._dpd_outstanding = 0

    def status(self) -> dict:
        sa = self._current_sa()
        if sa:
            state = "established"
        elif self._connecting():
            state = "connecting"
        else:
            state = "idle"
        return {
            "name": self.name,
            "state": state,
            "local_address": self.config.local_address,
            "remote_address": self.config.remote_address,
            "local_port": self.local_port,
            "remote_port": self.remote_port,
            "algorithms": sa.algs.name if sa and sa.algs else None,
            "role": ("initiator" if sa.initiator else "responder") if sa else None,
            "ike_spi": {"initiator": sa.icookie.hex(), "responder": sa.rcookie.hex()} if sa else None,
            "established_at": sa.established_at if sa else None,
            "expires_at": sa.expires_at if sa else None,
            "rekey_at": sa.rekey_at if sa else None,
            "nat": {
                "local_behind_nat": self.local_behind_nat,
                "peer_behind_nat": self.peer_behind_nat,
                "udp_encap": self.udp_encap,
                "method": self._natt_kind,
            },
            "ipsec_sas": [
                {
                    "spi_in": f"{c.pair.spi_in:08x}",
                    "spi_out": f"{c.pair.spi_out:08x}",
                    "algorithms": c.pair.encryption
                    + (f"-{c.pair.integrity}" if c.pair.integrity else "")
                    + (f"-{C.GROUP_NAMES[c.pair.pfs_group]}" if c.pair.pfs_group else ""),
                    "state": c.state,
                    "udp_encap": c.pair.udp_encap,
                    "established_at": c.established_at,
                    "expires_at": c.expires_at,
                    "rekey_at": c.rekey_at,
                }
                for c in self._children
            ],
            "dpd": {
                "interval": self.config.dpd_interval,
                "retries": self.config.dpd_retries,
                "action": self.config.dpd_action,
                "peer_supports": bool(sa and sa.peer_dpd),
                "last_seen": self._dpd_last_seen,
                "outstanding": self._dpd_outstanding,
            },
            "counters": dict(self.counters),
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ helpers

    def _count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def _drop(self, reason: str, detail: str = "") -> None:
        self._count("drop_" + reason)
        log.debug("%s: dropped message: %s %s", self.name, reason, detail)

    def _emit(self, ev: IkeEvent) -> None:
        self._events.append(ev)

    def _error(self, msg: str) -> None:
        self.last_error = msg
        log.info("%s: %s", self.name, msg)

    def _current_sa(self) -> _IsakmpSa | None:
        est = [s for s in self._sas if s.established]
        return max(est, key=lambda s: s.established_at or 0) if est else None

    def _connecting(self) -> bool:
        return any(s.initiator and not s.established for s in self._sas)

    def _may_rekey(self) -> bool:
        return self._started and self.config.initiator

    def _send(self, data: bytes) -> Datagram:
        d = Datagram(data, (self.config.remote_address, self.remote_port), self.local_port)
        self._out.append(d)
        return d

    def _new_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._rand(4), "big")
            if spi >= 0x100 and all(c.pair.spi_in != spi for c in self._children):
                return spi

    def _new_mid(self, sa: _IsakmpSa) -> int:
        while True:
            mid = int.from_bytes(self._rand(4), "big")
            if mid and mid not in sa.qm and mid not in sa.done_mids:
                return mid

    def _lifetime_rekey(self, now: float, lifetime: float) -> float:
        margin = min(float(self.config.rekey_margin), lifetime / 2)
        fuzz_max = margin * self.config.rekey_fuzz / 100.0
        fuzz_max = min(fuzz_max, max(0.0, lifetime - margin) / 2)
        r = int.from_bytes(self._rand(4), "big") / 2**32
        return now + lifetime - margin - r * fuzz_max

    def _vendor_ids(self) -> list[Payload]:
        vids = [VendorIdPayload(data=C.VID_DPD)]
        if self.config.nat_traversal != "off":
            vids += [VendorIdPayload(data=v) for v in (C.VID_NATT_RFC3947, *C.NATT_DRAFT_VIDS)]
        return vids

    # ------------------------------------------------------------------ encryption helpers

    def _encrypt(self, sa: _IsakmpSa, exch: int, mid: int, payloads: list[Payload], iv: bytes, flags: int = 0) -> tuple[bytes, bytes]:
        first, body = encode_payloads(payloads)
        ct = crypto.encrypt(sa.keys.enc_key, iv, body)
        hdr = Header(sa.icookie, sa.rcookie, first, exch, flags | C.FLAG_ENCRYPTION, mid)
        return hdr.encode(len(ct)) + ct, ct[-crypto.BLOCK :]

    def _decrypt(self, sa: _IsakmpSa, hdr: Header, data: bytes, iv: bytes) -> tuple[list[Payload], bytes]:
        if not hdr.flags & C.FLAG_ENCRYPTION:
            raise _Drop("unencrypted", f"exchange {hdr.exchange} without E flag")
        if sa.keys is None:
            raise _Drop("no_keys")
        ct = data[C.HEADER_LEN :]
        try:
            pt = crypto.decrypt(sa.keys.enc_key, iv, ct)
        except crypto.IkeCryptoError:
            raise _Drop("bad_ciphertext_length")
        try:
            payloads = decode_payloads(hdr.next_payload, pt, allow_padding=True)
        except IkeDecodeError as e:
            raise _Drop("decrypt_failed", e.reason)
        return payloads, ct[-crypto.BLOCK :]

    def _hash_payloads(self, sa: _IsakmpSa, mid: int, rest: list[Payload], extra: bytes = b"") -> list[Payload]:
        _, rb = encode_payloads(rest)
        h = crypto.prf(sa.algs.hash, sa.keys.skeyid_a, mid.to_bytes(4, "big"), extra, rb)
        return [HashPayload(data=h), *rest]

    def _check_hash(self, sa: _IsakmpSa, mid: int, payloads: list[Payload], extra: bytes = b"") -> list[Payload]:
        if not payloads or not isinstance(payloads[0], HashPayload):
            raise _Drop("missing_hash")
        rb = b"".join(p.raw for p in payloads[1:])
        want = crypto.prf(sa.algs.hash, sa.keys.skeyid_a, mid.to_bytes(4, "big"), extra, rb)
        if not _ct_eq(payloads[0].data, want):
            raise _Drop("bad_hash")
        return payloads[1:]

    def _send_info(self, sa: _IsakmpSa, payloads: list[Payload]) -> None:
        if not sa.keys or not sa.p1_last_block:
            return
        mid = self._new_mid(sa)
        iv = crypto.phase2_iv(sa.algs.hash, sa.p1_last_block, mid)
        msg, _ = self._encrypt(sa, C.EXCH_INFORMATIONAL, mid, self._hash_payloads(sa, mid, payloads), iv)
        self._send(msg)

    def _send_delete_esp(self, sa: _IsakmpSa, spis_in: list[int]) -> None:
        self._send_info(sa, [DeletePayload(protocol=C.PROTO_IPSEC_ESP, spi_size=4, spis=[s.to_bytes(4, "big") for s in spis_in])])

    # ------------------------------------------------------------------ receive path

    def _receive(self, data: bytes, remote: tuple[str, int], local_port: int, now: float) -> None:
        if remote[0] != self.config.remote_address:
            raise _Drop("wrong_address", remote[0])
        hdr = decode_header(data)
        if hdr.exchange not in (C.EXCH_MAIN, C.EXCH_QUICK, C.EXCH_INFORMATIONAL):
            raise _Drop("unsupported_exchange", str(hdr.exchange))
        cached = self._rx_cache.get(data)
        if cached is not None:
            self._rx_cache.move_to_end(data)
            if cached:
                for d in cached:
                    self._out.append(d)
                self._count("retransmits_answered")
                log.debug("%s: duplicate message, resent last response", self.name)
            else:
                self._drop("duplicate")
            return
        sa = self._find_sa(hdr)
        mark = len(self._out)
        if sa is None:
            if hdr.exchange == C.EXCH_MAIN and hdr.rcookie == bytes(8) and hdr.message_id == 0:
                self._respond_main_mode_1(hdr, data, remote, local_port, now)
            else:
                raise _Drop("unknown_cookies")
        elif hdr.exchange == C.EXCH_MAIN:
            self._main_mode(sa, hdr, data, remote, local_port, now)
        elif hdr.exchange == C.EXCH_QUICK:
            self._quick_mode(sa, hdr, data, remote, local_port, now)
        else:
            self._informational(sa, hdr, data, remote, local_port, now)
        self._rx_cache[data] = [d for d in self._out[mark:] if not d.raw]
        while len(self._rx_cache) > RX_CACHE:
            self._rx_cache.popitem(last=False)

    def _find_sa(self, hdr: Header) -> _IsakmpSa | None:
        for sa in self._sas:
            if sa.icookie == hdr.icookie:
                if sa.rcookie == hdr.rcookie:
                    return sa
                if sa.initiator and sa.state == "MM_I1" and sa.rcookie == bytes(8) and hdr.exchange == C.EXCH_MAIN:
                    return sa
        return None

    def _authenticated(self, sa: _IsakmpSa, remote: tuple[str, int], local_port: int, now: float) -> None:
        """A message protected by ``sa`` arrived: liveness and NAT port following."""
        self._dpd_last_seen = now
        self._dpd_outstanding = 0
        if local_port == NATT_PORT and self.udp_encap and remote[1] != self.remote_port:
            log.info("%s: peer port changed %d -> %d", self.name, self.remote_port, remote[1])
            self._count("peer_port_changes")
            self.remote_port = remote[1]

    # ------------------------------------------------------------------ main mode

    def _initiate_main_mode(self, now: float, replaces: _IsakmpSa | None = None) -> None:
        if not self.config.initiator and replaces is None and not self._started:
            return
        self._reconnect_at = None
        sa = _IsakmpSa(self._rand(8), bytes(8), True, now)
        sa.send_initial_contact = self._first_phase1 and replaces is None
        sa.replaces = replaces
        if replaces is None:
            # a fresh connection starts on port 500 (float again after NAT-D)
            self.local_port = IKE_PORT
            self.remote_port = IKE_PORT
        transforms = [Transform(i + 1, C.KEY_IKE, a.attributes(self.config.ike_lifetime)) for i, a in enumerate(self.config.ike_algs)]
        sa_payload = SaPayload(proposals=[Proposal(1, C.PROTO_ISAKMP, b"", transforms)])
        hdr = Header(sa.icookie, sa.rcookie, 0, C.EXCH_MAIN, 0, 0)
        msg = encode_message(hdr, [sa_payload, *self._vendor_ids()])
        sa.sai_b = sa_payload.body
        self._sas.append(sa)
        self._send_pending(sa, msg, now)
        log.info("%s: initiating main mode (%s)", self.name, ", ".join(a.name for a in self.config.ike_algs))

    def _send_pending(self, obj: _IsakmpSa | _QuickMode, msg: bytes, now: float) -> None:
        d = self._send(msg)
        obj.pending = _Pending(d, now + self.config.retransmit_timeout, self.config.retransmit_timeout)

    def _respond_main_mode_1(self, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        half_open = [s for s in self._sas if not s.initiator and not s.established]
        if len(half_open) >= HALF_OPEN_LIMIT:
            raise _Drop("half_open_limit")
        if hdr.flags & C.FLAG_ENCRYPTION:
            raise _Drop("unexpected_encryption")
        payloads = decode_payloads(hdr.next_payload, data[C.HEADER_LEN :])
        sap = [p for p in payloads if isinstance(p, SaPayload)]
        if len(sap) != 1 or len(sap[0].proposals) != 1:
            raise _Drop("bad_mm1", "need exactly one SA payload with one proposal")
        prop = sap[0].proposals[0]
        if prop.protocol != C.PROTO_ISAKMP:
            raise _Drop("bad_mm1", "not an ISAKMP proposal")
        chosen = None
        for t in prop.transforms:
            r = _ike_algs_from_transform(t)
            if r and r[0] in self.config.ike_algs:
                chosen = (t, *r)
                break
        if chosen is None:
            self._error("main mode: no acceptable proposal from peer")
            self._send_plain_notify(hdr, C.N_NO_PROPOSAL_CHOSEN)
            raise _Drop("no_proposal_chosen")
        t, algs, lifetime = chosen
        sa = _IsakmpSa(hdr.icookie, self._rand(8), False, now)
        sa.algs = algs
        sa.lifetime = lifetime or self.config.ike_lifetime
        sa.sai_b = sap[0].body
        self._note_vids(sa, payloads)
        reply = [SaPayload(proposals=[Proposal(prop.number, C.PROTO_ISAKMP, b"", [t])]), VendorIdPayload(data=C.VID_DPD)]
        if sa.natt == "rfc":
            reply.append(VendorIdPayload(data=C.VID_NATT_RFC3947))
        elif sa.natt == "draft":
            reply.append(VendorIdPayload(data=sa.natt_vid))
        sa.state = "MM_R2"
        if self._current_sa() is None:  # unauthenticated: must not redirect an established tunnel
            self.local_port = local_port
            self.remote_port = remote[1]
        self._sas.append(sa)
        self._send(encode_message(Header(sa.icookie, sa.rcookie, 0, C.EXCH_MAIN, 0, 0), reply))
        log.info("%s: responding to main mode (%s)", self.name, algs.name)

    def _send_plain_notify(self, hdr: Header, ntype: int) -> None:
        n = NotifyPayload(notify_type=ntype, protocol=C.PROTO_ISAKMP, spi=hdr.icookie + hdr.rcookie)
        self._send(encode_message(Header(hdr.icookie, hdr.rcookie, 0, C.EXCH_INFORMATIONAL, 0, 0), [n]))

    def _note_vids(self, sa: _IsakmpSa, payloads: list[Payload]) -> None:
        vids = [p.data for p in payloads if isinstance(p, VendorIdPayload)]
        sa.peer_vids = vids
        sa.peer_dpd = C.VID_DPD in vids
        if self.config.nat_traversal == "off":
            sa.natt = None
        elif C.VID_NATT_RFC3947 in vids:
            sa.natt = "rfc"
        else:
            for v in C.NATT_DRAFT_VIDS[::-1]:
                if v in vids:
                    sa.natt = "draft"
                    sa.natt_vid = v
                    break

    def _main_mode(self, sa: _IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        if hdr.message_id != 0:
            raise _Drop("bad_message_id")
        st = sa.state
        if sa.initiator:
            if st == "MM_I1":
                self._mm_i2(sa, hdr, data, now)
            elif st == "MM_I3":
                self._mm_i4(sa, hdr, data, now)
            elif st == "MM_I5":
                self._mm_i6(sa, hdr, data, remote, local_port, now)
            else:
                raise _Drop("unexpected_main_mode")
        else:
            if st == "MM_R2":
                self._mm_r3(sa, hdr, data, remote, local_port, now)
            elif st == "MM_R4":
                self._mm_r5(sa, hdr, data, remote, local_port, now)
            else:
                raise _Drop("unexpected_main_mode")

    def _plain(self, hdr: Header, data: bytes) -> list[Payload]:
        if hdr.flags & C.FLAG_ENCRYPTION:
            raise _Drop("unexpected_encryption")
        return decode_payloads(hdr.next_payload, data[C.HEADER_LEN :])

    def _mm_i2(self, sa: _IsakmpSa, hdr: Header, data: bytes, now: float) -> None:
        payloads = self._plain(hdr, data)
        sap = [p for p in payloads if isinstance(p, SaPayload)]
        if len(sap) != 1 or len(sap[0].proposals) != 1 or len(sap[0].proposals[0].transforms) != 1:
            raise _Drop("bad_mm2")
        r = _ike_algs_from_transform(sap[0].proposals[0].transforms[0])
        if r is None or r[0] not in self.config.ike_algs:
            raise _Drop("bad_mm2", "responder chose a transform we did not offer")
        sa.rcookie = hdr.rcookie
        if sa.rcookie == bytes(8):
            raise _Drop("bad_mm2", "zero responder cookie")
        sa.algs, lifetime = r
        sa.lifetime = min(lifetime or self.config.ike_lifetime, self.config.ike_lifetime)
        self._note_vids(sa, payloads)
        sa.dh = crypto.DiffieHellman(sa.algs.group)
        sa.gxi = sa.dh.public
        sa.ni = self._rand(NONCE_LEN)
        out: list[Payload] = [KePayload(data=sa.gxi), NoncePayload(data=sa.ni)]
        out += self._nat_d_payloads(sa)
        sa.state = "MM_I3"
        self._send_pending(sa, encode_message(Header(sa.icookie, sa.rcookie, 0, C.EXCH_MAIN, 0, 0), out), now)

    def _nat_d_payloads(self, sa: _IsakmpSa) -> list[Payload]:
        if not sa.natt:
            return []
        draft = sa.natt == "draft"
        h_remote = self._nat_hash(sa, self.config.remote_address, self.remote_port)
        if self.config.nat_traversal == "force":
            h_local = crypto.hash_(sa.algs.hash, self._rand(32))
        else:
            h_local = self._nat_hash(sa, self.config.local_address, self.local_port)
        return [NatDPayload(data=h_remote, draft=draft), NatDPayload(data=h_local, draft=draft)]

    def _nat_hash(self, sa: _IsakmpSa, addr: str, port: int) -> bytes:
        return crypto.hash_(sa.algs.hash, sa.icookie + sa.rcookie + ipaddress.ip_address(addr).packed + struct.pack("!H", port))

    def _detect_nat(self, sa: _IsakmpSa, payloads: list[Payload], remote, local_port: int) -> None:
        if not sa.natt:
            return
        nd = [p.data for p in payloads if isinstance(p, NatDPayload)]
        if len(nd) < 2:
            log.info("%s: peer sent NAT-T vendor id but no NAT-D payloads", self.name)
            sa.natt = None
            return
        local_behind = nd[0] != self._nat_hash(sa, self.config.local_address, local_port)
        peer_behind = self._nat_hash(sa, remote[0], remote[1]) not in nd[1:]
        if self.config.nat_traversal == "force":
            local_behind = True
        self.local_behind_nat = local_behind
        self.peer_behind_nat = peer_behind
        self._natt_kind = sa.natt
        if local_behind or peer_behind:
            self.udp_encap = True
        log.info("%s: NAT detection: local behind NAT=%s, peer behind NAT=%s", self.name, local_behind, peer_behind)
        self._emit(NatDetected(local_behind, peer_behind))

    def _compute_keys(self, sa: _IsakmpSa, peer_ke: bytes) -> None:
        gxy = sa.dh.shared_secret(peer_ke)
        skeyid = crypto.skeyid_psk(sa.algs.hash, self.config.psk, sa.ni, sa.nr)
        sa.keys = crypto.derive_phase1(sa.algs.hash, skeyid, gxy, sa.icookie, sa.rcookie, sa.algs.enc_bits // 8)
        sa.iv = crypto.phase1_iv(sa.algs.hash, sa.gxi, sa.gxr)
        sa.dh = None  # forget the private value

    def _hash_i(self, sa: _IsakmpSa, idii_b: bytes) -> bytes:
        return crypto.prf(sa.algs.hash, sa.keys.skeyid, sa.gxi, sa.gxr, sa.icookie, sa.rcookie, sa.sai_b, idii_b)

    def _hash_r(self, sa: _IsakmpSa, idir_b: bytes) -> bytes:
        return crypto.prf(sa.algs.hash, sa.keys.skeyid, sa.gxr, sa.gxi, sa.rcookie, sa.icookie, sa.sai_b, idir_b)

    def _my_id(self) -> IdPayload:
        t, d = self.config.local_id_tuple
        return IdPayload(id_type=t, protocol=0, port=0, data=d)

    def _mm_i4(self, sa: _IsakmpSa, hdr: Header, data: bytes, now: float) -> None:
        payloads = self._plain(hdr, data)
        ke = [p for p in payloads if isinstance(p, KePayload)]
        nonce = [p for p in payloads if isinstance(p, NoncePayload)]
        if len(ke) != 1 or len(nonce) != 1:
            raise _Drop("bad_mm4", "need KE and nonce")
        if len(ke[0].data) != crypto.ke_length(sa.algs.group):
            raise _Drop("bad_ke_length")
        sa.gxr = ke[0].data
        sa.nr = nonce[0].data
        self._compute_keys(sa, sa.gxr)
        self._detect_nat(sa, payloads, (self.config.remote_address, self.remote_port), self.local_port)
        if self.udp_encap and self.local_port == IKE_PORT:
            self.local_port = NATT_PORT
            self.remote_port = NATT_PORT
        idp = self._my_id()
        _, idb = encode_payloads([idp])
        out: list[Payload] = [idp, HashPayload(data=self._hash_i(sa, idp.body))]
        if sa.send_initial_contact:
            out.append(NotifyPayload(notify_type=C.N_INITIAL_CONTACT, protocol=C.PROTO_ISAKMP, spi=sa.cookies))
        msg, last = self._encrypt(sa, C.EXCH_MAIN, 0, out, sa.iv)
        sa.iv = last
        sa.state = "MM_I5"
        self._send_pending(sa, msg, now)

    def _check_peer_id(self, idp: IdPayload) -> None:
        want = self.config.remote_id_tuple
        if (idp.id_type, idp.data) != want:
            self._error(f"peer identity {idp.describe()} does not match expected {describe_id(*want)}")
            raise _Drop("id_mismatch", idp.describe())

    def _mm_i6(self, sa: _IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        payloads, last = self._decrypt_mm(sa, hdr, data)
        idp = [p for p in payloads if isinstance(p, IdPayload)]
        hp = [p for p in payloads if isinstance(p, HashPayload)]
        if len(idp) != 1 or len(hp) != 1:
            raise _Drop("bad_mm6")
        if not _ct_eq(hp[0].data, self._hash_r(sa, idp[0].body)):
            self._error("main mode: HASH_R mismatch (pre-shared key wrong?)")
            raise _Drop("bad_hash")
        self._check_peer_id(idp[0])
        sa.p1_last_block = last
        self._notifies_in_mm(sa, payloads)
        self._established(sa, remote, local_port, now)

    def _mm_r3(self, sa: _IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        payloads = self._plain(hdr, data)
        ke = [p for p in payloads if isinstance(p, KePayload)]
        nonce = [p for p in payloads if isinstance(p, NoncePayload)]
        if len(ke) != 1 or len(nonce) != 1:
            raise _Drop("bad_mm3", "need KE and nonce")
        if len(ke[0].data) != crypto.ke_length(sa.algs.group):
            raise _Drop("bad_ke_length")
        sa.dh = crypto.DiffieHellman(sa.algs.group)
        sa.gxi = ke[0].data
        sa.gxr = sa.dh.public
        sa.ni = nonce[0].data
        sa.nr = self._rand(NONCE_LEN)
        self._compute_keys(sa, sa.gxi)
        self._detect_nat(sa, payloads, remote, local_port)
        out: list[Payload] = [KePayload(data=sa.gxr), NoncePayload(data=sa.nr)]
        out += self._nat_d_payloads(sa)
        sa.state = "MM_R4"
        self._send(encode_message(Header(sa.icookie, sa.rcookie, 0, C.EXCH_MAIN, 0, 0), out))

    def _decrypt_mm(self, sa: _IsakmpSa, hdr: Header, data: bytes) -> tuple[list[Payload], bytes]:
        try:
            return self._decrypt(sa, hdr, data, sa.iv)
        except _Drop as d:
            if d.reason == "decrypt_failed":
                self._error("main mode: cannot decrypt the peer's identity message (pre-shared key mismatch?)")
                self._count("auth_failures")
            raise

    def _mm_r5(self, sa: _IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        payloads, last = self._decrypt_mm(sa, hdr, data)
        idp = [p for p in payloads if isinstance(p, IdPayload)]
        hp = [p for p in payloads if isinstance(p, HashPayload)]
        if len(idp) != 1 or len(hp) != 1:
            raise _Drop("bad_mm5")
        if not _ct_eq(hp[0].data, self._hash_i(sa, idp[0].body)):
            self._error("main mode: HASH_I mismatch (pre-shared key wrong?)")
            self._count("auth_failures")
            raise _Drop("bad_hash")
        self._check_peer_id(idp[0])
        if local_port == NATT_PORT:
            self.local_port = NATT_PORT
            self.remote_port = remote[1]
        idr = self._my_id()
        out: list[Payload] = [idr, HashPayload(data=self._hash_r(sa, idr.body))]
        msg, last6 = self._encrypt(sa, C.EXCH_MAIN, 0, out, last)
        sa.p1_last_block = last6
        self._send(msg)
        self._notifies_in_mm(sa, payloads)
        self._established(sa, remote, local_port, now)

    def _notifies_in_mm(self, sa: _IsakmpSa, payloads: list[Payload]) -> None:
        for p in payloads:
            if isinstance(p, NotifyPayload) and p.notify_type == C.N_INITIAL_CONTACT:
                self._initial_contact(sa)

    def _initial_contact(self, keep: _IsakmpSa) -> None:
        log.info("%s: INITIAL-CONTACT from peer: dropping old SAs", self.name)
        self._count("initial_contact_received")
        for s in list(self._sas):
            if s is not keep and s.established:
                self._sas.remove(s)
        for c in list(self._children):
            self._remove_child(c, "initial-contact")

    def _established(self, sa: _IsakmpSa, remote, local_port: int, now: float) -> None:
        sa.state = "ESTABLISHED"
        sa.pending = None
        sa.established_at = now
        sa.expires_at = now + sa.lifetime
        sa.rekey_at = self._lifetime_rekey(now, sa.lifetime)
        self._dpd_last_seen = now
        self._dpd_outstanding = 0
        self._failures = 0
        self._reconnect_at = None
        if sa.initiator and sa.send_initial_contact:
            self._first_phase1 = False
        if self.udp_encap and self.local_behind_nat and self._keepalive_at is None:
            self._keepalive_at = now + KEEPALIVE_INTERVAL
        log.info(
            "%s: ISAKMP SA established (%s, %s) %s/%s",
            self.name, sa.algs.name, "initiator" if sa.initiator else "responder", sa.icookie.hex(), sa.rcookie.hex(),
        )
        self._phase1_was_up = True
        self._emit(Phase1Up(sa.algs.name))
        old = sa.replaces
        if old is not None and old in self._sas:
            self._count("rekeys_ike")
            self._send_info(old, [DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[old.cookies])])
            self._sas.remove(old)
        if self._may_rekey() or (self._started and sa.initiator):
            self._ensure_child(sa, now)

    def _ensure_child(self, sa: _IsakmpSa, now: float) -> None:
        if any(qm.initiator for qm in sa.qm.values()):
            return
        installed = [c for c in self._children if c.state == "installed"]
        if not installed:
            self._initiate_quick_mode(sa, now)
            return
        for c in installed:
            if c.rekey_at is not None and c.rekey_at <= now and not c.rekeying:
                c.rekeying = True
                self._initiate_quick_mode(sa, now, replaces=c.pair.spi_in)
                return

    # ------------------------------------------------------------------ quick mode

    def _encap_mode(self) -> int:
        if not self.udp_encap:
            return C.ENCAP_TUNNEL
        return C.ENCAP_UDP_TUNNEL_RFC if self._natt_kind == "rfc" else C.ENCAP_UDP_TUNNEL_DRAFT

    def _ts_ids(self) -> tuple[IdPayload, IdPayload]:
        ti, di = subnet_id(self.config.local_ts_net)
        tr, dr = subnet_id(self.config.remote_ts_net)
        return IdPayload(id_type=ti, data=di), IdPayload(id_type=tr, data=dr)

    def _initiate_quick_mode(self, sa: _IsakmpSa, now: float, replaces: int | None = None) -> None:
        self._child_retry_at = None
        qm = _QuickMode(self._new_mid(sa), True, now)
        qm.replaces = replaces
        qm.spi_in = self._new_spi()
        qm.ni = self._rand(NONCE_LEN)
        qm.offered = self._esp_offer()
        group = qm.offered[0].group
        mode = self._encap_mode()
        spi = qm.spi_in.to_bytes(4, "big")
        props = [
            Proposal(i + 1, C.PROTO_IPSEC_ESP, spi,
                     [_esp_transform(a, 1, mode, self.config.ipsec_lifetime, self.config.ipsec_lifetime_kb)])
            for i, a in enumerate(qm.offered)
        ]
        rest: list[Payload] = [SaPayload(proposals=props), NoncePayload(data=qm.ni)]
        if group:
            qm.dh = crypto.DiffieHellman(group)
            rest.append(KePayload(data=qm.dh.public))
        idci, idcr = self._ts_ids()
        qm.id_ci = (idci.id_type, idci.data)
        qm.id_cr = (idcr.id_type, idcr.data)
        rest += [idci, idcr]
        qm.iv = crypto.phase2_iv(sa.algs.hash, sa.p1_last_block, qm.mid)
        msg, last = self._encrypt(sa, C.EXCH_QUICK, qm.mid, self._hash_payloads(sa, qm.mid, rest), qm.iv)
        qm.iv = last
        sa.qm[qm.mid] = qm
        self._send_pending(qm, msg, now)
        log.info("%s: initiating quick mode mid=%08x (%s)%s", self.name, qm.mid,
                 ", ".join(a.name for a in qm.offered), " rekey" if replaces else "")

    def _pfs_groups(self) -> list[int | None]:
        """The distinct PFS groups of the configured ESP proposals, in configuration order
        (None: a proposal without PFS)."""
        out: list[int | None] = []
        for a in self.config.esp_algs:
            if a.group not in out:
                out.append(a.group)
        return out

    def _esp_offer(self) -> list[EspAlgs]:
        """Every configured ESP proposal, those of the leading PFS group first.

        A quick mode carries at most one KE payload (RFC 2409 5.5), so when the proposals
        name different PFS groups the KE is computed for the group of the first proposal
        (as strongSwan does) and the responder has to pick a proposal with that group. The
        leading group starts as the first proposal's; after a quick mode fails (rejected or
        unanswered) the next group leads, and the group of the last successful quick mode
        stays in front for the rekeys that follow.
        """
        algs = list(self.config.esp_algs)
        groups = self._pfs_groups()
        if len(groups) < 2:
            return algs
        lead = groups[self._pfs_index % len(groups)]
        return [a for a in algs if a.group == lead] + [a for a in algs if a.group != lead]

    def _quick_mode(self, sa: _IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        if not sa.established:
            raise _Drop("quick_mode_before_phase1")
        mid = hdr.message_id
        if mid == 0:
            raise _Drop("bad_message_id")
        if mid in sa.done_mids:
            raise _Drop("replay", f"mid {mid:08x}")
        qm = sa.qm.get(mid)
        if qm is None:
            self._qm_r1(sa, hdr, data, remote, local_port, now)
        elif qm.initiator and qm.state == "QM_I1":
            self._qm_i2(sa, qm, hdr, data, remote, local_port, now)
        elif not qm.initiator and qm.state == "QM_R2":
            self._qm_r3(sa, qm, hdr, data, remote, local_port, now)
        else:
            raise _Drop("unexpected_quick_mode")

    def _on_connected(self, sa: _IsakmpSa, n: NotifyPayload, now: float) -> None:
        for qm in list(sa.qm.values()):
            if qm.state == "QM_WAIT_CONNECTED" and (not n.spi or int.from_bytes(n.spi, "big") == qm.spi_out):
                del sa.qm[qm.mid]
                self._mark_done(sa, qm.mid)
                self._install(sa, qm, now)
                return
        self._count("connected_unexpected")

    @staticmethod
    def _ke_group(sap: SaPayload, ke: bytes | None) -> int | None:
        """The PFS group the initiator's KE payload belongs to (IKEv1 does not say).

        Initiators compute the KE for the group of their first proposal that has one
        (strongSwan, cgwd): the first offered group whose public value has the KE's length.
        Groups of equal length (modp2048 / modp2048s224 / modp2048s256) are told apart by
        that order, not guessed from the length alone.
        """
        if ke is None:
            return None
        for prop in sap.proposals:
            if prop.protocol != C.PROTO_IPSEC_ESP:
                continue
            for t in prop.transforms:
                for attr in t.attributes:
                    if attr.type == C.P2_GROUP:
                        g = attr.value
                        if g in crypto.SUPPORTED_GROUPS and crypto.ke_length(g) == len(ke):
                            return g
                        break
        return None

    def _qm_i2(self, sa: _IsakmpSa, qm: _QuickMode, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        payloads, last = self._decrypt(sa, hdr, data, qm.iv)
        rest = self._check_hash(sa, qm.mid, payloads, qm.ni)
        self._authenticated(sa, remote, local_port, now)
        sap = [p for p in rest if isinstance(p, SaPayload)]
        nonce = [p for p in rest if isinstance(p, NoncePayload)]
        if len(sap) != 1 or len(nonce) != 1 or len(sap[0].proposals) != 1 or len(sap[0].proposals[0].transforms) != 1:
            raise _Drop("bad_qm2")
        prop = sap[0].proposals[0]
        if prop.protocol != C.PROTO_IPSEC_ESP or len(prop.spi) != 4:
            raise _Drop("bad_qm2", "not an ESP proposal")
        choice = _esp_algs_from_transform(prop.transforms[0])
        if choice is None or choice.algs not in qm.offered:
            self._error("quick mode: responder chose a transform we did not offer")
            raise _Drop("bad_qm2", "unexpected transform")
        qm.nr = nonce[0].data
        if choice.algs.group:
            ke = [p for p in rest if isinstance(p, KePayload)]
            if len(ke) != 1 or qm.dh is None or qm.dh.group != choice.algs.group:
                # not answerable with this exchange's KE: give up on it now (the next
                # attempt leads with another PFS group) instead of retransmitting in vain
                ours = C.GROUP_NAMES.get(qm.dh.group, "?") if qm.dh else "none"
                self._qm_failed(sa, qm, now, f"quick mode: responder chose {choice.algs.name} but our KE was for {ours}")
                raise _Drop("bad_qm2", "PFS key exchange missing")
            qm.gxy = qm.dh.shared_secret(ke[0].data)
        qm.dh = None
        choice.lifetime = choice.lifetime or self.config.ipsec_lifetime
        for n in rest:
            if isinstance(n, NotifyPayload) and n.notify_type == C.N_RESPONDER_LIFETIME:
                self._responder_lifetime(choice, n)
        qm.choice = choice
        qm.spi_out = int.from_bytes(prop.spi, "big")
        groups = self._pfs_groups()
        if choice.algs.group in groups:
            self._pfs_index = groups.index(choice.algs.group)
        h3 = crypto.prf(sa.algs.hash, sa.keys.skeyid_a, b"\x00", qm.mid.to_bytes(4, "big"), qm.ni, qm.nr)
        msg, _ = self._encrypt(sa, C.EXCH_QUICK, qm.mid, [HashPayload(data=h3)], last)
        self._send(msg)
        qm.peer_install_at = now
        qm.pending = None
        if hdr.flags & C.FLAG_COMMIT:
            # the responder committed: use the SA only after its CONNECTED notify
            qm.state = "QM_WAIT_CONNECTED"
            qm.connected_deadline = now + self.config.retransmit_timeout * (2 ** (self.config.retransmit_tries + 1) - 1)
            log.info("%s: quick mode mid=%08x: commit bit set, waiting for CONNECTED", self.name, qm.mid)
            return
        del sa.qm[qm.mid]
        self._mark_done(sa, qm.mid)
        self._install(sa, qm, now)

    def _responder_lifetime(self, choice: _EspChoice, n: NotifyPayload) -> None:
        try:
            from .codec import decode_attributes

            attrs = decode_attributes(n.data)
        except IkeDecodeError:
            return
        life_type = None
        for a in attrs:
            if a.type == C.P2_LIFE_TYPE:
                life_type = a.value
            elif a.type == C.P2_LIFE_DURATION:
                if life_type == C.LIFE_SECONDS and a.value:
                    choice.lifetime = min(choice.lifetime, a.value)
                elif life_type == C.LIFE_KILOBYTES and a.value:
                    choice.lifetime_kb = min(choice.lifetime_kb, a.value) if choice.lifetime_kb else a.value
        log.info("%s: RESPONDER-LIFETIME: %ds %dkB", self.name, choice.lifetime, choice.lifetime_kb)

    def _mark_done(self, sa: _IsakmpSa, mid: int) -> None:
        sa.done_mids[mid] = None
        while len(sa.done_mids) > 256:
            sa.done_mids.popitem(last=False)

    def _qm_r1(self, sa: _IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        responders = [q for q in sa.qm.values() if not q.initiator]
        if len(responders) >= HALF_OPEN_LIMIT:
            raise _Drop("half_open_limit")
        iv = crypto.phase2_iv(sa.algs.hash, sa.p1_last_block, hdr.message_id)
        payloads, last = self._decrypt(sa, hdr, data, iv)
        rest = self._check_hash(sa, hdr.message_id, payloads)
        self._authenticated(sa, remote, local_port, now)
        sap = [p for p in rest if isinstance(p, SaPayload)]
        nonce = [p for p in rest if isinstance(p, NoncePayload)]
        ids = [p for p in rest if isinstance(p, IdPayload)]
        ke = [p for p in rest if isinstance(p, KePayload)]
        if len(sap) != 1 or len(nonce) != 1 or len(ids) not in (0, 2) or len(ke) > 1:
            raise _Drop("bad_qm1")
        qm = _QuickMode(hdr.message_id, False, now)
        qm.ni = nonce[0].data
        qm.commit = bool(hdr.flags & C.FLAG_COMMIT) or self.commit_bit
        ke_group = self._ke_group(sap[0], ke[0].data if ke else None)
        chosen = None
        for prop in sap[0].proposals:
            if prop.protocol != C.PROTO_IPSEC_ESP or len(prop.spi) != 4:
                continue
            for t in prop.transforms:
                ch = _esp_algs_from_transform(t)
                # one KE per quick mode: a PFS group must be the one the initiator's KE is for
                if ch and ch.algs.group and ch.algs.group != ke_group:
                    continue
                if ch and ch.algs in self.config.esp_algs:
                    chosen = (prop, t, ch)
                    break
            if chosen:
                break
        if chosen is None:
            self._error("quick mode: no acceptable proposal from peer")
            self._send_info(sa, [NotifyPayload(notify_type=C.N_NO_PROPOSAL_CHOSEN, protocol=C.PROTO_IPSEC_ESP,
                                               spi=sap[0].proposals[0].spi[:4])])
            self._mark_done(sa, hdr.message_id)
            raise _Drop("no_proposal_chosen")
        prop, t, ch = chosen
        if ids:
            nets = [id_to_network(i.id_type, i.data) for i in ids]
            if None in nets:
                self._send_info(sa, [NotifyPayload(notify_type=C.N_INVALID_ID_INFORMATION, protocol=C.PROTO_IPSEC_ESP,
                                                   spi=prop.spi)])
                self._mark_done(sa, hdr.message_id)
                raise _Drop("bad_ts")
            qm.id_ci = (ids[0].id_type, ids[0].data)
            qm.id_cr = (ids[1].id_type, ids[1].data)
        ch.lifetime = ch.lifetime or self.config.ipsec_lifetime
        shorter = ch.lifetime > self.config.ipsec_lifetime
        if shorter:
            ch.lifetime = self.config.ipsec_lifetime
        qm.choice = ch
        qm.spi_out = int.from_bytes(prop.spi, "big")
        qm.spi_in = self._new_spi()
        qm.nr = self._rand(NONCE_LEN)
        out: list[Payload] = [
            SaPayload(proposals=[Proposal(prop.number, C.PROTO_IPSEC_ESP, qm.spi_in.to_bytes(4, "big"), [t])]),
            NoncePayload(data=qm.nr),
        ]
        if shorter:
            # RFC 2407 4.6.3.1: tell the initiator we use a shorter lifetime
            life = [Attribute(C.P2_LIFE_TYPE, C.LIFE_SECONDS), Attribute(C.P2_LIFE_DURATION, ch.lifetime, True)]
            out.append(NotifyPayload(notify_type=C.N_RESPONDER_LIFETIME, protocol=C.PROTO_IPSEC_ESP,
                                     spi=qm.spi_in.to_bytes(4, "big"),
                                     data=b"".join(a.encode() for a in life)))
        if ch.algs.group:
            if len(ke) != 1:
                raise _Drop("bad_qm1", "PFS group without KE")
            dh_ = crypto.DiffieHellman(ch.algs.group)
            qm.gxy = dh_.shared_secret(ke[0].data)
            out.append(KePayload(data=dh_.public))
        if ids:
            out += [IdPayload(id_type=i.id_type, protocol=i.protocol, port=i.port, data=i.data) for i in ids]
        flags = C.FLAG_COMMIT if qm.commit else 0
        msg, last2 = self._encrypt(sa, C.EXCH_QUICK, qm.mid, self._hash_payloads(sa, qm.mid, out, qm.ni), last, flags)
        qm.iv = last2
        qm.state = "QM_R2"
        qm.peer_install_at = now
        sa.qm[qm.mid] = qm
        self._send(msg)

    def _qm_r3(self, sa: _IsakmpSa, qm: _QuickMode, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        payloads, _ = self._decrypt(sa, hdr, data, qm.iv)
        if not payloads or not isinstance(payloads[0], HashPayload):
            raise _Drop("missing_hash")
        want = crypto.prf(sa.algs.hash, sa.keys.skeyid_a, b"\x00", qm.mid.to_bytes(4, "big"), qm.ni, qm.nr)
        if not _ct_eq(payloads[0].data, want):
            raise _Drop("bad_hash")
        self._authenticated(sa, remote, local_port, now)
        del sa.qm[qm.mid]
        self._mark_done(sa, qm.mid)
        self._install(sa, qm, now)
        if qm.commit:
            self._send_info(sa, [NotifyPayload(notify_type=C.N_CONNECTED, protocol=C.PROTO_IPSEC_ESP,
                                               spi=qm.spi_in.to_bytes(4, "big"))])

    def _install(self, sa: _IsakmpSa, qm: _QuickMode, now: float) -> None:
        ch = qm.choice
        algs = ch.algs
        n = algs.keymat_len()
        ni, nr = (qm.ni, qm.nr)
        k_in = crypto.keymat(sa.algs.hash, sa.keys.skeyid_d, C.PROTO_IPSEC_ESP, qm.spi_in, ni, nr, n, qm.gxy)
        k_out = crypto.keymat(sa.algs.hash, sa.keys.skeyid_d, C.PROTO_IPSEC_ESP, qm.spi_out, ni, nr, n, qm.gxy)
        ek = ENC_KEY_BYTES[algs.encryption] + (GCM_SALT_BYTES if is_aead(algs.encryption) else 0)
        local_ts, remote_ts = self.config.local_ts_net, self.config.remote_ts_net
        if qm.id_ci and qm.id_cr:
            nci = id_to_network(*qm.id_ci)
            ncr = id_to_network(*qm.id_cr)
            if nci is not None and ncr is not None:
                local_ts, remote_ts = (nci, ncr) if qm.initiator else (ncr, nci)
        udp = ch.encap_mode in (C.ENCAP_UDP_TUNNEL_RFC, C.ENCAP_UDP_TUNNEL_DRAFT)
        others = [c for c in self._children if c.state == "installed"]
        # A rekey collision is two quick modes that crossed: one of ours and one of the
        # peer's, each begun before the other was complete here (IKEv1 does not say which
        # SA a quick mode replaces). Rekeys one after the other, however close together,
        # are not: the newer pair replaces the older ones, as the peer sees it too
        # (strongSwan rekeys its newest CHILD_SA and retires the one it replaced).
        siblings = [c for c in others if c.initiator != qm.initiator and qm.created_at <= c.established_at]
        pred = None
        if qm.replaces is not None:
            pred = next((c for c in self._children if c.pair.spi_in == qm.replaces), None)
            if pred is not None and pred in siblings:
                siblings.remove(pred)
        older = [c for c in others if c not in siblings]
        if pred is None and older:
            pred = max(older, key=lambda c: c.established_at)
        if pred is None and siblings:
            pred = max(siblings, key=lambda c: c.established_at)
        pair = IpsecSaPair(
            spi_in=qm.spi_in,
            spi_out=qm.spi_out,
            encryption=algs.encryption,
            integrity=algs.integrity,
            enc_key_in=k_in[:ek],
            enc_key_out=k_out[:ek],
            integ_key_in=k_in[ek:] if algs.integrity else b"",
            integ_key_out=k_out[ek:] if algs.integrity else b"",
            local_address=self.config.local_address,
            remote_address=self.config.remote_address,
            udp_encap=udp,
            local_port=self.local_port if udp else NATT_PORT,
            remote_port=self.remote_port if udp else NATT_PORT,
            local_ts=local_ts,
            remote_ts=remote_ts,
            lifetime_seconds=ch.lifetime,
            lifetime_kilobytes=ch.lifetime_kb,
            pfs_group=algs.group,
            replaces_spi_in=pred.pair.spi_in if pred else None,
        )
        child = _Child(pair, now, now + ch.lifetime, self._lifetime_rekey(now, ch.lifetime), initiator=qm.initiator,
                       peer_install_at=qm.peer_install_at)
        self._children.append(child)
        log.info("%s: IPsec SA established: %s (%s)", self.name, pair.describe(), "initiator" if qm.initiator else "responder")
        self._emit(IpsecSaUp(pair, initiator=qm.initiator))
        if pred is not None:
            self._count("rekeys_ipsec")
        # Everything older than the new pair is replaced by it (and deleted after a delay).
        for c in older + ([pred] if pred is not None and pred not in older and pred not in siblings else []):
            self._retire(c, now)
        if siblings:
            # A collision. The pair the peer installed last is the one it sends on (strongSwan
            # marks the other rekeyed): that one carries our traffic too. The other one is not
            # deleted: the peer may see the collision the other way round and still use it
            # (a DELETE from each end would leave none). It stays until the next rekey
            # replaces it or it expires.
            contenders = siblings + [child]
            winner = max(contenders, key=lambda c: (c.peer_install_at, min(c.pair.spi_in, c.pair.spi_out)))
            for c in contenders:
                if c is not winner and c.state == "installed":
                    self._count("rekey_collisions")
                    log.info("%s: rekey collision: %s kept until replaced, %s carries traffic", self.name,
                             c.pair.describe(), winner.pair.describe())
                    c.state = "rekeyed"
                    c.rekeying = False
                    c.lingering = True
        else:
            for c in self._children:
                if c.lingering and c is not child:
                    c.lingering = False
                    c.delete_at = now + DELETE_DELAY

    def child_state(self, spi_in: int) -> str | None:
        """"installed" (carries traffic), "rekeyed" (replaced, or lost a rekey collision) or None."""
        for c in self._children:
            if c.pair.spi_in == spi_in:
                return c.state
        return None

    def _retire(self, c: _Child, now: float) -> None:
        if c.state == "installed":
            c.state = "rekeyed"
            c.rekeying = False
            c.delete_at = now + DELETE_DELAY

    def _remove_child(self, child: _Child, reason: str) -> None:
        if child in self._children:
            self._children.remove(child)
            log.info("%s: IPsec SA down: %s (%s)", self.name, child.pair.describe(), reason)
            self._emit(IpsecSaDown(child.pair.spi_in, child.pair.spi_out, reason))

    # ------------------------------------------------------------------ informational

    def _informational(self, sa: _IsakmpSa, hdr: Header, data: bytes, remote, local_port: int, now: float) -> None:
        if not hdr.flags & C.FLAG_ENCRYPTION:
            payloads = self._plain(hdr, data)
            if sa.established or sa.keys is not None:
                raise _Drop("unprotected_informational")
            notes = [C.NOTIFY_NAMES.get(p.notify_type, str(p.notify_type)) for p in payloads if isinstance(p, NotifyPayload)]
            self._error(f"unprotected notify during main mode: {', '.join(notes) or 'none'}")
            raise _Drop("unprotected_informational")
        if sa.keys is None or not sa.p1_last_block:
            raise _Drop("informational_before_phase1")
        mid = hdr.message_id
        if mid == 0:
            raise _Drop("bad_message_id")
        if mid in sa.done_mids:
            raise _Drop("replay", f"mid {mid:08x}")
        iv = crypto.phase2_iv(sa.algs.hash, sa.p1_last_block, mid)
        payloads, _ = self._decrypt(sa, hdr, data, iv)
        rest = self._check_hash(sa, mid, payloads)
        self._mark_done(sa, mid)
        self._authenticated(sa, remote, local_port, now)
        for p in rest:
            if isinstance(p, DeletePayload):
                self._on_delete(sa, p, now)
            elif isinstance(p, NotifyPayload):
                self._on_notify(sa, p, now)

    def _on_delete(self, sa: _IsakmpSa, d: DeletePayload, now: float) -> None:
        if d.protocol == C.PROTO_ISAKMP:
            for spi in d.spis:
                for s in list(self._sas):
                    if s.cookies == spi:
                        log.info("%s: peer deleted ISAKMP SA %s", self.name, spi.hex())
                        self._sas.remove(s)
            if not self._current_sa():
                if not self._connecting():
                    self._emit(Phase1Down("deleted by peer"))
                    self._phase1_was_up = False
                if self._started and self.config.initiator and not self._connecting():
                    self._initiate_main_mode(now)
        elif d.protocol == C.PROTO_IPSEC_ESP:
            for spi in d.spis:
                v = int.from_bytes(spi, "big")
                for c in list(self._children):
                    if c.pair.spi_out == v:
                        self._remove_child(c, "deleted by peer")
            if self._started and self.config.initiator and not any(c.state == "installed" for c in self._children):
                cur = self._current_sa()
                if cur and not any(q.initiator for q in cur.qm.values()):
                    self._initiate_quick_mode(cur, now)
        else:
            self._count("delete_unknown_protocol")

    def _on_notify(self, sa: _IsakmpSa, n: NotifyPayload, now: float) -> None:
        t = n.notify_type
        if t == C.N_R_U_THERE:
            if len(n.data) != 4:
                raise _Drop("bad_dpd")
            self._send_info(sa, [NotifyPayload(notify_type=C.N_R_U_THERE_ACK, protocol=C.PROTO_ISAKMP,
                                               spi=sa.cookies, data=n.data)])
            self._count("dpd_answered")
        elif t == C.N_R_U_THERE_ACK:
            if len(n.data) != 4:
                raise _Drop("bad_dpd")
            seq = int.from_bytes(n.data, "big")
            if seq == self._dpd_seq:
                self._dpd_outstanding = 0
                self._count("dpd_acked")
            else:
                self._count("dpd_unexpected_ack")
        elif t == C.N_INITIAL_CONTACT:
            self._initial_contact(sa)
        elif t == C.N_CONNECTED:
            self._on_connected(sa, n, now)
        elif t < 16384:
            name = C.NOTIFY_NAMES.get(t, str(t))
            self._error(f"peer sent {name}")
            self._count("notify_errors")
            for qm in list(sa.qm.values()):
                if qm.initiator and (not n.spi or n.spi == qm.spi_in.to_bytes(4, "big") or n.protocol == C.PROTO_ISAKMP):
                    self._qm_failed(sa, qm, now, f"peer: {name}")
        else:
            self._count("notify_ignored")

    # ------------------------------------------------------------------ timers

    def _dpd_deadline(self) -> float | None:
        sa = self._current_sa()
        if sa is None or not sa.peer_dpd or self.config.dpd_interval <= 0 or self._dpd_last_seen is None:
            return None
        if self._dpd_outstanding:
            return (self._dpd_last_sent or 0) + self.config.dpd_interval
        return self._dpd_last_seen + self.config.dpd_interval

    def _keepalive_deadline(self) -> float | None:
        if self._keepalive_at is None or not self.udp_encap or not self.local_behind_nat:
            return None
        if not self._current_sa() and not self._children:
            return None
        return self._keepalive_at

    def _handle_timer(self, now: float) -> None:
        for sa in list(self._sas):
            if sa not in self._sas:
                continue
            if sa.pending and sa.pending.deadline <= now:
                if not self._retransmit(sa.pending, now):
                    self._phase1_failed(sa, now, "timeout: no answer to main mode")
                    continue
            if not sa.established and not sa.initiator and now >= sa.created_at + HALF_OPEN_TIMEOUT:
                self._sas.remove(sa)
                self._count("half_open_expired")
                continue
            for qm in list(sa.qm.values()):
                if qm.pending and qm.pending.deadline <= now:
                    if not self._retransmit(qm.pending, now):
                        self._qm_failed(sa, qm, now, "timeout: no answer to quick mode")
                elif qm.connected_deadline is not None and now >= qm.connected_deadline:
                    self._qm_failed(sa, qm, now, "timeout: no CONNECTED after commit bit")
                elif not qm.initiator and now >= qm.created_at + HALF_OPEN_TIMEOUT:
                    sa.qm.pop(qm.mid, None)
            if sa.established:
                if sa.expires_at is not None and now >= sa.expires_at:
                    log.info("%s: ISAKMP SA %s expired", self.name, sa.icookie.hex())
                    self._send_info(sa, [DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[sa.cookies])])
                    self._sas.remove(sa)
                    if not self._current_sa():
                        self._emit(Phase1Down("expired"))
                        self._phase1_was_up = False
                        if self._started and self.config.initiator and not self._connecting():
                            self._initiate_main_mode(now)
                    continue
                if (sa.rekey_at is not None and now >= sa.rekey_at and not sa.rekey_started and self._may_rekey()
                        and sa is self._current_sa()):
                    sa.rekey_started = True
                    log.info("%s: ISAKMP SA lifetime ending: re-authenticating", self.name)
                    self._initiate_main_mode(now, replaces=sa)
        cur = self._current_sa()
        for c in list(self._children):
            if c not in self._children:
                continue
            if now >= c.expires_at:
                if cur:
                    self._send_delete_esp(cur, [c.pair.spi_in])
                self._remove_child(c, "expired")
                continue
            if c.delete_at is not None and now >= c.delete_at:
                if cur:
                    self._send_delete_esp(cur, [c.pair.spi_in])
                self._remove_child(c, "rekeyed")
                continue
            if c.state == "installed" and c.rekey_at is not None and now >= c.rekey_at and not c.rekeying and self._may_rekey():
                if cur:
                    c.rekeying = True
                    self._initiate_quick_mode(cur, now, replaces=c.pair.spi_in)
                elif not self._connecting():
                    self._initiate_main_mode(now)
        if self._started and self.config.initiator and cur and not any(c.state == "installed" for c in self._children):
            if not any(q.initiator for q in cur.qm.values()) and (self._child_retry_at is None or now >= self._child_retry_at):
                self._initiate_quick_mode(cur, now)
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect_at = None
            if self._started and not self._connecting() and not self._current_sa():
                self._initiate_main_mode(now)
        dl = self._dpd_deadline()
        if dl is not None and now >= dl:
            self._dpd_tick(now)
        kl = self._keepalive_deadline()
        if kl is not None and now >= kl:
            self._out.append(Datagram(b"\xff", (self.config.remote_address, self.remote_port), NATT_PORT, raw=True))
            self._keepalive_at = now + KEEPALIVE_INTERVAL
            self._count("keepalives_sent")

    def _retransmit(self, p: _Pending, now: float) -> bool:
        if p.tries >= self.config.retransmit_tries:
            return False
        p.tries += 1
        p.interval *= 2
        p.deadline = now + p.interval
        d = p.datagram
        # follow a port float that happened meanwhile
        self._out.append(d)
        self._count("retransmits")
        log.debug("%s: retransmit %d/%d", self.name, p.tries, self.config.retransmit_tries)
        return True

    def _phase1_failed(self, sa: _IsakmpSa, now: float, reason: str) -> None:
        if sa in self._sas:
            self._sas.remove(sa)
        self._error(reason)
        self._count("phase1_failures")
        if self._current_sa() is None:
            self._emit(Phase1Down(reason))
        if sa.replaces is not None:
            sa.replaces.rekey_started = False
            sa.replaces.rekey_at = now + QM_RETRY_DELAY
            return
        if self._started:
            self._failures += 1
            delay = min(RESTART_BACKOFF_MIN * 2 ** (self._failures - 1), RESTART_BACKOFF_MAX)
            self._reconnect_at = now + delay
            log.info("%s: reconnecting in %.0fs", self.name, delay)

    def _qm_failed(self, sa: _IsakmpSa, qm: _QuickMode, now: float, reason: str) -> None:
        sa.qm.pop(qm.mid, None)
        self._mark_done(sa, qm.mid)
        self._error(reason)
        self._count("phase2_failures")
        if qm.initiator and len(self._pfs_groups()) > 1 and qm.offered:
            # let the next attempt lead with the next PFS group (its KE) in case the peer
            # accepts only that one
            groups = self._pfs_groups()
            self._pfs_index = (groups.index(qm.offered[0].group) + 1) % len(groups)
            log.info("%s: next quick mode leads with PFS group %s", self.name,
                     C.GROUP_NAMES.get(groups[self._pfs_index], "none") if groups[self._pfs_index] else "none")
        if qm.replaces is not None:
            for c in self._children:
                if c.pair.spi_in == qm.replaces:
                    c.rekeying = False
                    c.rekey_at = now + QM_RETRY_DELAY
        self._child_retry_at = now + QM_RETRY_DELAY

    def _dpd_tick(self, now: float) -> None:
        sa = self._current_sa()
        if sa is None:
            return
        if self._dpd_outstanding >= max(1, self.config.dpd_retries):
            self._peer_dead(now)
            return
        self._dpd_seq = (self._dpd_seq + 1) & 0xFFFFFFFF
        self._send_info(sa, [NotifyPayload(notify_type=C.N_R_U_THERE, protocol=C.PROTO_ISAKMP, spi=sa.cookies,
                                           data=self._dpd_seq.to_bytes(4, "big"))])
        self._dpd_outstanding += 1
        self._dpd_last_sent = now
        self._count("dpd_sent")

    def _peer_dead(self, now: float) -> None:
        log.warning("%s: peer dead (DPD), action %s", self.name, self.config.dpd_action)
        self._error("peer dead (DPD)")
        self._count("dpd_dead")
        self._emit(PeerDead())
        for c in list(self._children):
            self._remove_child(c, "dpd")
        self._drop_all_isakmp("dpd")
        self._dpd_outstanding = 0
        action = self.config.dpd_action
        if action == "clear":
            self._started = False
        elif action == "restart":
            if self._started or self.config.initiator:
                self._started = True
                self._initiate_main_mode(now)
        else:  # hold: keep trying in the background with backoff
            if self._started:
                self._failures += 1
                self._reconnect_at = now + RESTART_BACKOFF_MIN

    def _drop_all_isakmp(self, reason: str) -> None:
        had = self._current_sa() is not None
        self._sas.clear()
        self._keepalive_at = None
        if had:
            self._emit(Phase1Down(reason))
        self._phase1_was_up = False


def _ct_eq(a: bytes, b: bytes) -> bool:
    from hmac import compare_digest

    return compare_digest(a, b)
