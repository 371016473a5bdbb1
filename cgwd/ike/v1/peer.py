"""The sans-IO IKEv1 engine of one tunnel: :class:`IkePeer`, a :class:`cgwd.ike.engine.IkeEngine`.

Main mode with pre-shared keys, quick mode (PFS), protected informational exchanges (DELETE,
INITIAL-CONTACT, DPD), NAT-T (RFC 3947 and the drafts strongSwan speaks), lifetimes, rekeying
and retransmission. The peer composes the exchanges (:mod:`.main_mode`, :mod:`.quick_mode`,
:mod:`.informational`: their :class:`~cgwd.ike.v1.host.Host`) with what both IKE versions
share: one :class:`~cgwd.ike.schedule.Schedule` of deadlines, the Child SA bookkeeping
(:class:`~cgwd.ike.children.ChildTable`), liveness (:class:`~cgwd.ike.liveness.Liveness`), the
NAT state of the newest authenticated SA, and the limits on unauthenticated work.

The engine never reads a clock, opens a socket or sleeps: inputs take ``now`` (monotonic
seconds), outputs are polled (``datagrams_to_send``, ``next_event``, ``get_timer``).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Callable

from cgwd.ipsec_sa import NATT_PORT

from .. import crypto
from ..children import ChildSa, ChildTable
from ..engine import ChildState
from ..events import Datagram, IkeEvent, IpsecSaDown, IpsecSaUp, NatDetected, PeerDead, Phase1Down, Phase1Up
from ..limits import TokenBucket
from ..liveness import Liveness, Probe
from ..natt import KEEPALIVE, KEEPALIVE_INTERVAL, NatState
from ..retransmit import Retransmission, backoff
from ..schedule import Schedule
from . import constants as C
from . import informational, main_mode, quick_mode
from .codec import DeletePayload, Header, IkeDecodeError, NotifyPayload, Payload, decode_header
from .config import IkePeerConfig
from .main_mode import IsakmpSa
from .messages import Drop, encrypt, hash_payloads
from .quick_mode import QuickMode
from .keys import phase2_iv
from .timers import Timer

T = Timer
log = logging.getLogger("cgwd.ike")

DELETE_DELAY = 5.0  # seconds a rekeyed IPsec SA pair lives on (make-before-break)
RESTART_BACKOFF_MIN = 5.0
RESTART_BACKOFF_MAX = 300.0
QM_RETRY_DELAY = 10.0
INSTALL_RETRY_MAX = 300.0  # backoff cap of quick modes after the data path refused pairs
RX_CACHE = 32
DH_RATE = 5.0  # responder DH computations per second (sustained) ...
DH_BURST = 10  # ... and in a burst
PEER_QM_GRACE = 3.0  # seconds the peer that started phase 1 has to start its quick mode
# An ISAKMP SA that a newer one superseded (the peer authenticated again without deleting it)
# lives this long for the exchanges still under way on it, then we delete it (strongSwan's
# adopt_children_job deletes the IKE_SAs of a re-authenticating peer 10 s after the new one).
SUPERSEDED_DELETE_DELAY = 10.0
# The ISAKMP SA our own re-authentication replaced is deleted this long after the new one is
# up, not at once: a peer that moves its pairs to the new SA does it after the new SA is
# established (strongSwan: adopt_children_job, a job of its own), and a DELETE of the old SA
# that arrives first takes the pairs with it at the peer (seen in the soak: one tunnel's pair
# gone at AWS's side, 30 s lost until BGP's hold timer ran out and the pair was renegotiated).
REAUTH_DELETE_DELAY = 3.0
# Message IDs of one ISAKMP SA are remembered for its whole life (replay protection of quick
# modes and protected informational exchanges); a peer that sends more than this many is
# not given more: the SA takes no new exchange and is re-authenticated.
MAX_MIDS_PER_SA = 65536


class IkePeer:
    """The IKEv1 state of one tunnel (one remote address); a :class:`cgwd.ike.engine.IkeEngine`."""

    version = 1

    def __init__(self, config: IkePeerConfig, *, random_bytes: Callable[[int], bytes] = os.urandom, name: str = "",
                 dh_factory: Callable[[int], crypto.DiffieHellman] = crypto.DiffieHellman) -> None:
        """``random_bytes`` and ``dh_factory`` (a fresh key pair of a DH group) are injected
        for deterministic runs; by default they are the OS's and ``cryptography``'s."""
        self.config = config
        self._rand = random_bytes
        self._dh_factory = dh_factory
        self.name = name or config.remote_address
        self._out: list[Datagram] = []
        self._events: deque[IkeEvent] = deque()
        self.sas: list[IsakmpSa] = []
        self._started = False
        self._failures = 0
        self._install_failures = 0  # pairs the data path refused in a row (quick-mode backoff)
        self._last_failure_order = 0
        self.sched = Schedule()
        self.children = ChildTable(self.sched, rekey=T.CHILD_REKEY, delete=T.CHILD_DELETE, delete_delay=DELETE_DELAY,
                                   count=self.count, name=self.name)
        self._order = itertools.count(1)  # orders events that happen at the same `now`
        self._timer_actions: dict[T, Callable[[object, float], None]] = {
            T.P1_RETRANSMIT: self._on_p1_retransmit,
            T.P1_HALF_OPEN: self._on_p1_half_open,
            T.P1_REKEY: self._on_p1_rekey,
            T.P1_EXPIRE: self._on_p1_expire,
            T.P1_SUPERSEDED: self._on_p1_superseded,
            T.QM_RETRANSMIT: self._on_qm_retransmit,
            T.QM_CONNECTED: self._on_qm_connected_timeout,
            T.QM_HALF_OPEN: self._on_qm_half_open,
            T.CHILD_REKEY: self._on_child_rekey,
            T.CHILD_DELETE: self._on_child_delete,
            T.CHILD_EXPIRE: self._on_child_expire,
            T.RECONNECT: self._on_reconnect,
            T.CHILD_RETRY: self._on_child_retry,
            T.DPD: self._on_dpd,
            T.KEEPALIVE: self._on_keepalive,
        }
        # the NAT state and ports of the newest authenticated ISAKMP SA
        self._nat = NatState()
        self.dh_budget = TokenBucket(DH_RATE, DH_BURST)
        self.liveness = Liveness(seq=int.from_bytes(self._rand(4), "big") & 0x7FFFFFFF)
        self._rx_cache: OrderedDict[bytes, list[Datagram]] = OrderedDict()
        self.counters: dict[str, int] = {"retransmits": 0, "rekeys_ipsec": 0, "rekeys_ike": 0}
        self.last_error: str | None = None
        # RFC 2408 4.8 commit bit: set it on our quick-mode responses (then send CONNECTED)
        self.commit_bit = False
        # which PFS group our quick modes lead with (an index into quick_mode.pfs_groups)
        self.pfs_index = 0

    # ------------------------------------------------------------------ IkeEngine

    @property
    def local_port(self) -> int:
        return self._nat.local_port

    @property
    def remote_port(self) -> int:
        return self._nat.remote_port

    @property
    def local_behind_nat(self) -> bool:
        return self._nat.local_behind

    @property
    def peer_behind_nat(self) -> bool:
        return self._nat.peer_behind

    @property
    def udp_encap(self) -> bool:
        return self._nat.udp_encap

    def start(self, now: float) -> None:
        self._started = True
        self._failures = 0
        self._install_failures = 0
        if not self.connecting() and not self.current_sa():
            self._initiate_main_mode(now)

    def stop(self, now: float) -> None:
        self._started = False
        self.sched.cancel(T.RECONNECT)
        self.sched.cancel(T.CHILD_RETRY)
        sa = self.current_sa()
        for child in list(self.children):
            if sa:
                self.send_delete_esp(sa, [child.pair.spi_in])
            self.remove_child(child, "stopped")
        for s in list(self.sas):
            if s.established:
                self.send_info(s, [DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[s.cookies])])
        self._drop_all_isakmp("stopped")

    def receive_datagram(self, data: bytes, remote: tuple[str, int], local_port: int, now: float) -> None:
        try:
            self._receive(bytes(data), remote, local_port, now)
        except Drop as d:
            self._drop(d.reason, d.detail)
        except IkeDecodeError as e:
            self._drop("malformed_" + e.reason, e.detail)
        except crypto.IkeCryptoError as e:
            self._drop("bad_key_exchange", str(e))
        except Exception as e:  # noqa: BLE001 - nothing escapes the engine
            log.debug("%s: internal error on input", self.name, exc_info=True)
            self._drop("internal_error", repr(e))

    def handle_timer(self, now: float) -> None:
        self._run_timers(now)

    def get_timer(self) -> float | None:
        return self.sched.next_deadline()

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    def rekey_ipsec(self, now: float) -> None:
        try:
            sa = self.current_sa()
            if sa is None:
                if self._started and not self.connecting():
                    self._initiate_main_mode(now)
                return
            installed = self.children.installed()
            if installed:
                self._rekey_child(sa, installed[-1], now)
            else:
                quick_mode.initiate(self, sa, now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: rekey_ipsec failed: %r", self.name, e)

    def rekey_ike(self, now: float) -> None:
        try:
            if not self.connecting():
                cur = self.current_sa()
                if cur:
                    self.sched.cancel(T.P1_REKEY, cur)
                self._initiate_main_mode(now, replaces=cur)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: rekey_ike failed: %r", self.name, e)

    def sa_expiring(self, spi_in: int, hard: bool, now: float) -> None:
        try:
            for c in self.children:
                if c.pair.spi_in == spi_in:
                    if hard:
                        self.sched.set(T.CHILD_EXPIRE, now, c)
                    elif c.state == ChildState.INSTALLED and not c.rekeying:
                        self.sched.set_earliest(T.CHILD_REKEY, now, c)
            self._run_timers(now)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: sa_expiring failed: %r", self.name, e)

    def reconfigure(self, config: IkePeerConfig, now: float) -> None:
        """New DPD and rekey timers from a config of the same identity (see IkeEngine)."""
        if (config.local_address, config.remote_address) != (self.config.local_address, self.config.remote_address):
            raise ValueError("reconfigure cannot change the tunnel's addresses")
        self.config = config
        # DPD runs from the new interval: an armed probe moves (its handler re-checks idleness)
        if (T.DPD, None) in self.sched:
            self.sched.set(T.DPD, self.liveness.next_check(now, config.dpd_interval))

    def peer_alive(self, now: float) -> None:
        """The data path saw authenticated traffic from the peer (resets DPD idleness)."""
        self.liveness.heard(now)

    def child_state(self, spi_in: int) -> ChildState | None:
        """INSTALLED (carries traffic), REKEYED (replaced, or lost a rekey collision) or None."""
        return self.children.state(spi_in)

    def install_failed(self, spi_in: int, reason: str, now: float) -> None:
        """The data path refused the pair ``spi_in``: delete it at the peer (which would send
        on it into a black hole), forget it, keep what it was to replace, and try another
        quick mode later with a growing delay; the reason goes to status()["last_error"]."""
        try:
            child = self.children.find(spi_in)
            if child is None:
                self.count("install_failed_unknown_spi")
                return
            self._install_failures += 1
            self._last_failure_order = self.next_order()
            self.count("install_failures")
            self.error(f"data path refused IPsec SA {child.pair.describe()}: {reason}")
            cur = self.current_sa()
            if cur is not None:
                self.send_delete_esp(cur, [spi_in])
            self.remove_child(child, "install failed")
            delay = backoff(self._install_failures, QM_RETRY_DELAY, INSTALL_RETRY_MAX)
            self.children.restore_displaced(child, now + delay)
            self.sched.set(T.CHILD_RETRY, now + delay)
            log.info("%s: next quick mode in %.0fs (data path refused %d pair(s) in a row)", self.name, delay,
                     self._install_failures)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: install_failed failed: %r", self.name, e)

    def status(self) -> dict:
        sa = self.current_sa()
        if sa:
            state = "established"
        elif self.connecting():
            state = "connecting"
        else:
            state = "idle"
        return {
            "name": self.name,
            "version": self.version,
            "state": state,
            "local_address": self.config.local_address,
            "remote_address": self.config.remote_address,
            "local_port": self.local_port,
            "remote_port": self.remote_port,
            "algorithms": sa.algs.name if sa and sa.algs else None,
            "role": ("initiator" if sa.initiator else "responder") if sa else None,
            "ike_spi": {"initiator": sa.icookie.hex(), "responder": sa.rcookie.hex()} if sa else None,
            "established_at": sa.established_at if sa else None,
            "expires_at": self.sched.get(T.P1_EXPIRE, sa) if sa else None,
            "rekey_at": self.sched.get(T.P1_REKEY, sa) if sa else None,
            "nat": {
                "local_behind_nat": self.local_behind_nat,
                "peer_behind_nat": self.peer_behind_nat,
                "udp_encap": self.udp_encap,
                "method": self._nat.method,
            },
            "ipsec_sas": [
                {
                    "spi_in": f"{c.pair.spi_in:08x}",
                    "spi_out": f"{c.pair.spi_out:08x}",
                    "algorithms": c.pair.encryption
                    + (f"-{c.pair.integrity}" if c.pair.integrity else "")
                    + (f"-{C.GROUP_NAMES[c.pair.pfs_group]}" if c.pair.pfs_group else ""),
                    "state": c.state.value,
                    "udp_encap": c.pair.udp_encap,
                    "established_at": c.established_at,
                    "expires_at": self.sched.get(T.CHILD_EXPIRE, c),
                    "rekey_at": self.sched.get(T.CHILD_REKEY, c),
                }
                for c in self.children
            ],
            "dpd": {
                "interval": self.config.dpd_interval,
                "retries": self.config.dpd_retries,
                "action": self.config.dpd_action,
                "peer_supports": bool(sa and sa.peer_dpd),
                "last_seen": self.liveness.last_seen,
                "outstanding": self.liveness.outstanding,
            },
            "counters": dict(self.counters),
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ Host (for the exchanges)

    def rand(self, n: int) -> bytes:
        return self._rand(n)

    def new_dh(self, group: int) -> crypto.DiffieHellman:
        return self._dh_factory(group)

    def next_order(self) -> int:
        return next(self._order)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def error(self, msg: str) -> None:
        self.last_error = msg
        log.info("%s: %s", self.name, msg)

    def emit(self, ev: IkeEvent) -> None:
        self._events.append(ev)

    def current_sa(self) -> IsakmpSa | None:
        est = [s for s in self.sas if s.established]
        return max(est, key=lambda s: s.order) if est else None

    def connecting(self) -> bool:
        return any(s.initiator and not s.established for s in self.sas)

    def send(self, data: bytes, sa: IsakmpSa) -> Datagram:
        """Send a message of ``sa`` where that SA's messages go (its own ports)."""
        d = Datagram(data, (self.config.remote_address, sa.nat.remote_port), sa.nat.local_port)
        self._out.append(d)
        return d

    def send_to(self, data: bytes, remote_port: int, local_port: int) -> None:
        """An answer outside any SA (an unprotected notify) to where the message came from."""
        self._out.append(Datagram(data, (self.config.remote_address, remote_port), local_port))

    def send_pending(self, obj: IsakmpSa | QuickMode, action: T, msg: bytes, now: float) -> None:
        """Send a request that awaits an answer: retransmitted under ``action`` until then."""
        d = self.send(msg, obj if isinstance(obj, IsakmpSa) else obj.sa)
        obj.pending = Retransmission(d, self.config.retransmit_timeout)
        self.sched.set(action, now + self.config.retransmit_timeout, obj)

    def send_info(self, sa: IsakmpSa, payloads: list[Payload]) -> None:
        """A protected informational exchange (HASH(1)) on ``sa``."""
        if not sa.keys or not sa.p1_last_block:
            return
        mid = self.new_mid(sa)
        iv = phase2_iv(sa.algs.hash, sa.p1_last_block, mid)
        msg, _ = encrypt(sa, C.EXCH_INFORMATIONAL, mid, hash_payloads(sa, mid, payloads), iv)
        self.send(msg, sa)

    def send_delete_esp(self, sa: IsakmpSa, spis_in: list[int]) -> None:
        self.send_info(sa, [DeletePayload(protocol=C.PROTO_IPSEC_ESP, spi_size=4, spis=[s.to_bytes(4, "big") for s in spis_in])])

    def new_spi(self) -> int:
        while True:
            spi = int.from_bytes(self._rand(4), "big")
            if spi >= 0x100 and all(c.pair.spi_in != spi for c in self.children):
                return spi

    def new_mid(self, sa: IsakmpSa) -> int:
        while True:
            mid = int.from_bytes(self._rand(4), "big")
            if mid and mid not in sa.qm and mid not in sa.done_mids:
                return mid

    def check_mid(self, sa: IsakmpSa, mid: int, now: float) -> None:
        """A new protected exchange's message ID: never seen on this SA (its whole life)."""
        if mid == 0:
            raise Drop("bad_message_id")
        if mid in sa.done_mids:
            raise Drop("replay", f"mid {mid:08x}")
        if len(sa.done_mids) >= MAX_MIDS_PER_SA:
            if not sa.worn_out:
                sa.worn_out = True
                log.warning("%s: ISAKMP SA %s has seen %d message IDs: no more", self.name, sa.icookie.hex(),
                            len(sa.done_mids))
                if sa is self.current_sa() and self._may_rekey() and not self.connecting():
                    self.sched.set(T.P1_REKEY, now, sa)
            raise Drop("message_ids_exhausted")

    def make_room(self, which: Callable[[IsakmpSa], bool], limit: int) -> None:
        """Evict the oldest half-open responder SAs of one kind so that a new one fits."""
        half_open = sorted((s for s in self.sas if not s.initiator and not s.established and which(s)),
                           key=lambda s: s.created_at)
        for s in half_open[: max(0, len(half_open) - limit + 1)]:
            self.remove_sa(s)
            self.count("half_open_evicted")

    def narrow_ts(self, proposed, configured):
        return quick_mode.narrow_ts(proposed, configured)

    def authenticated(self, sa: IsakmpSa, remote: tuple[str, int], local_port: int, now: float) -> None:
        """A message protected by ``sa`` arrived: liveness and NAT port following (the SA's
        ports, the tunnel's too when it is the current SA)."""
        self.liveness.heard(now)
        if local_port == NATT_PORT and sa.nat.udp_encap and remote[1] != sa.nat.remote_port:
            log.info("%s: peer port changed %d -> %d", self.name, sa.nat.remote_port, remote[1])
            self.count("peer_port_changes")
            sa.nat.remote_port = remote[1]

    def initial_contact(self, keep: IsakmpSa) -> None:
        log.info("%s: INITIAL-CONTACT from peer: dropping old SAs", self.name)
        self.count("initial_contact_received")
        for s in list(self.sas):
            if s is not keep and s.established:
                self.remove_sa(s)
        for c in list(self.children):
            self.remove_child(c, "initial-contact")

    def established(self, sa: IsakmpSa, now: float) -> None:
        """``sa``'s main mode completed (its HASH verified): it becomes the tunnel's."""
        sa.state = main_mode.Mm.ESTABLISHED
        sa.pending = None
        sa.established_at = now
        sa.order = self.next_order()
        self.sched.cancel(T.P1_RETRANSMIT, sa)
        self.sched.cancel(T.P1_HALF_OPEN, sa)
        self.sched.set(T.P1_EXPIRE, now + sa.lifetime, sa)
        self.sched.set(T.P1_REKEY, self._lifetime_rekey(now, sa.lifetime), sa)
        self.liveness.heard(now)
        if sa.peer_dpd and self.config.dpd_interval > 0:
            self.sched.set(T.DPD, now + self.config.dpd_interval)
        self._failures = 0
        self.sched.cancel(T.RECONNECT)
        # authenticated: the SA's ports and NAT state become the tunnel's (a new SA that
        # finds no NAT turns encapsulation and keepalives off)
        self._nat = sa.nat
        if sa.nat.detected:
            self.emit(NatDetected(sa.nat.local_behind, sa.nat.peer_behind))
        if sa.nat.keepalives and (T.KEEPALIVE, None) not in self.sched:
            self.sched.set(T.KEEPALIVE, now + KEEPALIVE_INTERVAL)
        log.info(
            "%s: ISAKMP SA established (%s, %s) %s/%s",
            self.name, sa.algs.name, "initiator" if sa.initiator else "responder", sa.icookie.hex(), sa.rcookie.hex(),
        )
        self.emit(Phase1Up(sa.algs.name))
        old, sa.replaces = sa.replaces, None  # (kept, every SA would hold all its predecessors)
        if old is not None and old in self.sas:
            self.count("rekeys_ike")
            old.retired_by_us = True
            self.sched.set_earliest(T.P1_SUPERSEDED, now + REAUTH_DELETE_DELAY, old)
        self._supersede_older(sa, now)
        if sa.initiator and self._started:
            self._ensure_child(sa, now)
        elif self._may_rekey():
            # the peer started this phase 1: it starts its quick mode (one pair, not two);
            # ours only if none comes (and overdue rekeys of our pairs at once)
            self._ensure_child(sa, now, new=False)
            self.sched.set_earliest(T.CHILD_RETRY, now + PEER_QM_GRACE)

    def _supersede_older(self, sa: IsakmpSa, now: float) -> None:
        """``sa`` is a re-authentication of every ISAKMP SA that was established before its
        main mode began: the peer (one tunnel, one identity) authenticated again, whether or
        not it deleted the old SA (it may have given it up as unanswered, or its DELETE was
        lost), so those are deleted after SUPERSEDED_DELETE_DELAY; the pairs stay (IKEv1 pairs
        belong to the tunnel, not to an ISAKMP SA). Main modes that crossed (each begun before
        the other was complete here: both ends brought the tunnel up at once) supersede
        nothing: each end could otherwise delete a different one of the two."""
        for s in self.sas:
            if s is not sa and s.established and s.order < sa.begun:
                self.sched.set_earliest(T.P1_SUPERSEDED, now + SUPERSEDED_DELETE_DELAY, s)

    def install(self, sa: IsakmpSa, qm: QuickMode, now: float) -> None:
        """A quick mode completed: its pair goes to the data path (IpsecSaUp), replacing or
        colliding with the pairs we have (:class:`~cgwd.ike.children.ChildTable`)."""
        placement = self.children.place(qm.initiator, qm.order, qm.replaces)
        pred = placement.pred
        pair = quick_mode.make_pair(self, sa, qm, pred.pair.spi_in if pred else None)
        child = ChildSa(pair, now, self.next_order(), initiator=qm.initiator, peer_install_at=qm.peer_install_at)
        self.children.append(child)
        self.sched.set(T.CHILD_EXPIRE, now + qm.choice.lifetime, child)
        self.sched.set(T.CHILD_REKEY, self._lifetime_rekey(now, qm.choice.lifetime), child)
        log.info("%s: IPsec SA established: %s (%s)", self.name, pair.describe(), "initiator" if qm.initiator else "responder")
        self.emit(IpsecSaUp(pair, initiator=qm.initiator))
        if pred is not None:
            self.count("rekeys_ipsec")
        self.children.settle(child, placement, now)

    def drop_qm(self, sa: IsakmpSa, qm: QuickMode) -> None:
        if sa.qm.get(qm.mid) is qm:
            del sa.qm[qm.mid]
        self.sched.cancel_owner(qm)

    def qm_failed(self, sa: IsakmpSa, qm: QuickMode, now: float, reason: str) -> None:
        self.drop_qm(sa, qm)
        sa.done_mids.add(qm.mid)
        self.error(reason)
        self.count("phase2_failures")
        quick_mode.failed(self, qm)
        if qm.replaces is not None:
            for c in self.children:
                if c.pair.spi_in == qm.replaces and c.state == ChildState.INSTALLED:
                    c.rekeying = False
                    self.sched.set(T.CHILD_REKEY, now + QM_RETRY_DELAY, c)
        if qm.initiator:
            self.sched.set(T.CHILD_RETRY, now + QM_RETRY_DELAY)

    def peer_deleted_isakmp(self, spis: list[bytes], now: float) -> None:
        for spi in spis:
            for s in list(self.sas):
                if s.cookies == spi:
                    log.info("%s: peer deleted ISAKMP SA %s", self.name, spi.hex())
                    self.remove_sa(s)
        if not self.current_sa():
            if not self.connecting():
                self.emit(Phase1Down("deleted by peer"))
            if self._started and self.config.initiator and not self.connecting():
                self._initiate_main_mode(now)

    def peer_deleted_esp(self, spis: list[int], now: float) -> None:
        for v in spis:
            for c in list(self.children):
                if c.pair.spi_out == v:
                    self.remove_child(c, "deleted by peer")
                    self.children.restore_displaced(c, now + QM_RETRY_DELAY)
                    self._want_child(now)
        if self._started and self.config.initiator and not self.children.any_installed():
            cur = self.current_sa()
            if cur and not any(q.initiator for q in cur.qm.values()):
                quick_mode.initiate(self, cur, now)

    def remove_sa(self, sa: IsakmpSa) -> None:
        if sa in self.sas:
            self.sas.remove(sa)
        self.sched.cancel_owner(sa)
        for qm in sa.qm.values():
            self.sched.cancel_owner(qm)

    def remove_child(self, child: ChildSa, reason: str, now: float | None = None) -> None:
        """Forget a pair (IpsecSaDown). With ``now``: if no pair is left carrying traffic, a
        new quick mode is wanted (stop and DPD death pass no ``now``: they start over)."""
        if self.children.remove(child):
            log.info("%s: IPsec SA down: %s (%s)", self.name, child.pair.describe(), reason)
            self.emit(IpsecSaDown(child.pair.spi_in, child.pair.spi_out, reason))
        if now is not None:
            self._want_child(now)

    # ------------------------------------------------------------------ the engine's own

    def _drop(self, reason: str, detail: str = "") -> None:
        self.count("drop_" + reason)
        log.debug("%s: dropped message: %s %s", self.name, reason, detail)

    def _may_rekey(self) -> bool:
        return self._started and self.config.initiator

    def _lifetime_rekey(self, now: float, lifetime: float) -> float:
        margin = min(float(self.config.rekey_margin), lifetime / 2)
        fuzz_max = margin * self.config.rekey_fuzz / 100.0
        fuzz_max = min(fuzz_max, max(0.0, lifetime - margin) / 2)
        r = int.from_bytes(self._rand(4), "big") / 2**32
        return now + lifetime - margin - r * fuzz_max

    def _receive(self, data: bytes, remote: tuple[str, int], local_port: int, now: float) -> None:
        if remote[0] != self.config.remote_address:
            raise Drop("wrong_address", remote[0])
        hdr = decode_header(data)
        if hdr.exchange not in (C.EXCH_MAIN, C.EXCH_QUICK, C.EXCH_INFORMATIONAL):
            raise Drop("unsupported_exchange", str(hdr.exchange))
        cached = self._rx_cache.get(data)
        if cached is not None:
            self._rx_cache.move_to_end(data)
            if cached:
                for d in cached:
                    self._out.append(d)
                self.count("retransmits_answered")
                log.debug("%s: duplicate message, resent last response", self.name)
            else:
                self._drop("duplicate")
            return
        sa = self._find_sa(hdr)
        mark = len(self._out)
        if sa is None:
            if hdr.exchange == C.EXCH_MAIN and hdr.rcookie == bytes(8) and hdr.message_id == 0:
                main_mode.respond(self, hdr, data, remote, local_port, now)
            else:
                raise Drop("unknown_cookies")
        else:
            EXCHANGES[hdr.exchange](self, sa, hdr, data, remote, local_port, now)
        self._rx_cache[data] = [d for d in self._out[mark:] if not d.raw]
        while len(self._rx_cache) > RX_CACHE:
            self._rx_cache.popitem(last=False)

    def _find_sa(self, hdr: Header) -> IsakmpSa | None:
        for sa in self.sas:
            if sa.icookie == hdr.icookie:
                if sa.rcookie == hdr.rcookie:
                    return sa
                if sa.initiator and sa.state is main_mode.Mm.I1 and sa.rcookie == bytes(8) and hdr.exchange == C.EXCH_MAIN:
                    return sa
        return None

    def _initiate_main_mode(self, now: float, replaces: IsakmpSa | None = None) -> None:
        if not self.config.initiator and replaces is None and not self._started:
            return
        self.sched.cancel(T.RECONNECT)
        main_mode.initiate(self, now, replaces)

    def _ensure_child(self, sa: IsakmpSa, now: float, new: bool = True) -> None:
        if any(qm.initiator for qm in sa.qm.values()):
            return
        installed = self.children.installed()
        if not installed:
            if new:
                quick_mode.initiate(self, sa, now)
            return
        for c in installed:
            if c.rekey_due and not c.rekeying:
                self._rekey_child(sa, c, now)
                return

    def _rekey_child(self, sa: IsakmpSa, c: ChildSa, now: float) -> None:
        c.rekeying = True
        c.rekey_due = False
        self.sched.cancel(T.CHILD_REKEY, c)
        quick_mode.initiate(self, sa, now, replaces=c.pair.spi_in)

    def _want_child(self, now: float) -> None:
        """No pair may be left carrying traffic: try a quick mode now unless a retry is
        already planned (a failure's backoff is kept)."""
        if not self.children.any_installed() and (T.CHILD_RETRY, None) not in self.sched:
            self.sched.set(T.CHILD_RETRY, now)

    # ------------------------------------------------------------------ timers
    # Every deadline is an entry of self.sched; each action below runs when its entry is
    # popped and re-arms what it still needs. An action that finds nothing to do leaves
    # nothing behind: the engine never asks to be woken for work it will not do.

    def _run_timers(self, now: float) -> None:
        self.sched.run(now, self._dispatch_timer)

    def _dispatch_timer(self, action: T, owner: object, now: float) -> None:
        try:
            self._timer_actions[action](owner, now)
        except Exception as e:  # noqa: BLE001 - one failing action must not stop the others
            log.warning("%s: internal error in timer %s: %r", self.name, action.value, e, exc_info=True)
            self.count("timer_internal_error")

    def _on_p1_retransmit(self, sa: IsakmpSa, now: float) -> None:
        if sa.pending is None or sa not in self.sas:
            return
        if not self._retransmit(sa.pending, T.P1_RETRANSMIT, sa, now):
            self._phase1_failed(sa, now, "timeout: no answer to main mode")

    def _on_p1_half_open(self, sa: IsakmpSa, now: float) -> None:
        if sa in self.sas and not sa.established:
            self.remove_sa(sa)
            self.count("half_open_expired")

    def _on_p1_rekey(self, sa: IsakmpSa, now: float) -> None:
        if sa is not self.current_sa() or not self._may_rekey() or self.connecting():
            return  # superseded (a newer ISAKMP SA, or a main mode under way): it expires by itself
        log.info("%s: ISAKMP SA lifetime ending: re-authenticating", self.name)
        self._initiate_main_mode(now, replaces=sa)

    def _on_p1_expire(self, sa: IsakmpSa, now: float) -> None:
        if sa not in self.sas:
            return
        log.info("%s: ISAKMP SA %s expired", self.name, sa.icookie.hex())
        self.send_info(sa, [DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[sa.cookies])])
        self.remove_sa(sa)
        if not self.current_sa():
            self.emit(Phase1Down("expired"))
            if self._started and self.config.initiator and not self.connecting():
                self._initiate_main_mode(now)

    def _on_p1_superseded(self, sa: IsakmpSa, now: float) -> None:
        if sa not in self.sas or sa is self.current_sa():
            return  # gone already, or the newer SA went away meanwhile: this one is the tunnel's again
        if any(qm.initiator for qm in sa.qm.values()):
            # a quick mode of ours still under way on it: it ends by itself (answered, or failed
            # after its retransmissions) and settles the pair it was to rekey; the peer's own
            # unfinished ones go with the SA (the peer moved on to the new one)
            self.sched.set(T.P1_SUPERSEDED, now + SUPERSEDED_DELETE_DELAY, sa)
            return
        if sa.retired_by_us:
            log.info("%s: ISAKMP SA %s replaced by our re-authentication: deleting it", self.name, sa.icookie.hex())
        else:
            log.info("%s: ISAKMP SA %s superseded by the peer's re-authentication: deleting it", self.name,
                     sa.icookie.hex())
            self.count("isakmp_superseded")
        self.send_info(sa, [DeletePayload(protocol=C.PROTO_ISAKMP, spi_size=16, spis=[sa.cookies])])
        self.remove_sa(sa)

    def _on_qm_retransmit(self, qm: QuickMode, now: float) -> None:
        sa = qm.sa
        if qm.pending is None or sa.qm.get(qm.mid) is not qm:
            return
        if not self._retransmit(qm.pending, T.QM_RETRANSMIT, qm, now):
            self.qm_failed(sa, qm, now, "timeout: no answer to quick mode")
            self._isakmp_unresponsive(sa, now)

    def _isakmp_unresponsive(self, sa: IsakmpSa, now: float) -> None:
        """A protected exchange on ``sa`` went unanswered through every retransmission: the
        peer no longer has the SA (it restarted, or was replaced) even where DPD is off.
        Forget it and, as an initiator, start a new main mode (strongSwan likewise gives up
        an IKE SA whose exchange times out). IPsec SAs stay until replaced or expired."""
        if sa not in self.sas or not sa.established:
            return
        log.info("%s: ISAKMP SA %s unanswered: dropping it", self.name, sa.icookie.hex())
        self.count("phase1_unresponsive")
        self.remove_sa(sa)
        if self.current_sa() is None:
            self.emit(Phase1Down("peer not answering"))
            if self._started and self.config.initiator and not self.connecting():
                self._initiate_main_mode(now)

    def _on_qm_connected_timeout(self, qm: QuickMode, now: float) -> None:
        if qm.sa.qm.get(qm.mid) is qm:
            self.qm_failed(qm.sa, qm, now, "timeout: no CONNECTED after commit bit")

    def _on_qm_half_open(self, qm: QuickMode, now: float) -> None:
        if qm.sa.qm.get(qm.mid) is qm:
            self.drop_qm(qm.sa, qm)
            self._want_child(now)

    def _on_child_rekey(self, c: ChildSa, now: float) -> None:
        if c not in self.children or c.state != ChildState.INSTALLED or c.rekeying:
            return
        if c.order > self._last_failure_order:
            self._install_failures = 0  # the data path took a pair: it lived until its rekey
        if not self._may_rekey():
            return
        cur = self.current_sa()
        if cur is not None:
            self._rekey_child(cur, c, now)
            return
        # no ISAKMP SA: rekey as soon as one is up (_ensure_child), starting one if need be
        c.rekey_due = True
        if not self.connecting():
            self._initiate_main_mode(now)

    def _on_child_delete(self, c: ChildSa, now: float) -> None:
        if c in self.children:
            cur = self.current_sa()
            if cur:
                self.send_delete_esp(cur, [c.pair.spi_in])
            self.remove_child(c, "rekeyed", now)

    def _on_child_expire(self, c: ChildSa, now: float) -> None:
        if c in self.children:
            cur = self.current_sa()
            if cur:
                self.send_delete_esp(cur, [c.pair.spi_in])
            self.remove_child(c, "expired", now)

    def _on_child_retry(self, _owner: None, now: float) -> None:
        if not (self._started and self.config.initiator) or self.children.any_installed():
            return
        cur = self.current_sa()
        if cur is None:
            if not self.connecting() and (T.RECONNECT, None) not in self.sched:
                self._initiate_main_mode(now)  # its established() brings the child up
            return
        if not cur.qm:  # (a quick mode either way under way: its end calls again)
            quick_mode.initiate(self, cur, now)

    def _on_reconnect(self, _owner: None, now: float) -> None:
        if self._started and not self.connecting() and not self.current_sa():
            self._initiate_main_mode(now)

    def _on_dpd(self, _owner: None, now: float) -> None:
        sa = self.current_sa()
        interval = self.config.dpd_interval
        if sa is None or not sa.peer_dpd or interval <= 0:
            return  # re-armed when the next ISAKMP SA is established
        what, at = self.liveness.check(now, interval, self.config.dpd_retries)
        if what is Probe.WAIT:
            self.sched.set(T.DPD, at)  # heard from the peer meanwhile
            return
        if what is Probe.DEAD:
            self._peer_dead(now)
            return
        seq = self.liveness.probe(now)
        self.send_info(sa, [NotifyPayload(notify_type=C.N_R_U_THERE, protocol=C.PROTO_ISAKMP, spi=sa.cookies,
                                          data=seq.to_bytes(4, "big"))])
        self.count("dpd_sent")
        self.sched.set(T.DPD, at)

    def _on_keepalive(self, _owner: None, now: float) -> None:
        if not self._nat.keepalives or (not self.current_sa() and not len(self.children)):
            return  # re-armed when the next ISAKMP SA is established behind a NAT
        self._out.append(Datagram(KEEPALIVE, (self.config.remote_address, self._nat.remote_port), NATT_PORT, raw=True))
        self.count("keepalives_sent")
        self.sched.set(T.KEEPALIVE, now + KEEPALIVE_INTERVAL)

    def _retransmit(self, p: Retransmission, action: T, owner: object, now: float) -> bool:
        deadline = p.next_try(now, self.config.retransmit_tries)
        if deadline is None:
            return False
        self.sched.set(action, deadline, owner)
        self._out.append(p.datagram)
        self.count("retransmits")
        log.debug("%s: retransmit %d/%d", self.name, p.tries, self.config.retransmit_tries)
        return True

    def _phase1_failed(self, sa: IsakmpSa, now: float, reason: str) -> None:
        self.remove_sa(sa)
        self.error(reason)
        self.count("phase1_failures")
        if self.current_sa() is None:
            self.emit(Phase1Down(reason))
        if sa.replaces is not None:
            if sa.replaces in self.sas:
                self.sched.set(T.P1_REKEY, now + QM_RETRY_DELAY, sa.replaces)
            return
        if self._started:
            self._failures += 1
            delay = backoff(self._failures, RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX)
            self.sched.set(T.RECONNECT, now + delay)
            log.info("%s: reconnecting in %.0fs", self.name, delay)

    def _peer_dead(self, now: float) -> None:
        log.warning("%s: peer dead (DPD), action %s", self.name, self.config.dpd_action)
        self.error("peer dead (DPD)")
        self.count("dpd_dead")
        self.emit(PeerDead())
        for c in list(self.children):
            self.remove_child(c, "dpd")
        self._drop_all_isakmp("dpd")
        self.liveness.outstanding = 0
        action = self.config.dpd_action
        if action == "clear":
            self._started = False
            self.sched.cancel(T.RECONNECT)
            self.sched.cancel(T.CHILD_RETRY)
        elif action == "restart":
            if self._started or self.config.initiator:
                self._started = True
                self._initiate_main_mode(now)
        else:  # hold: keep trying in the background with backoff
            if self._started:
                self._failures += 1
                self.sched.set(T.RECONNECT, now + RESTART_BACKOFF_MIN)

    def _drop_all_isakmp(self, reason: str) -> None:
        had = self.current_sa() is not None
        for sa in list(self.sas):
            self.remove_sa(sa)
        self.sched.cancel(T.KEEPALIVE)
        self.sched.cancel(T.DPD)
        if had:
            self.emit(Phase1Down(reason))


#: the exchanges of an ISAKMP SA we know: exchange type -> its module's receive()
EXCHANGES = {
    C.EXCH_MAIN: main_mode.receive,
    C.EXCH_QUICK: quick_mode.receive,
    C.EXCH_INFORMATIONAL: informational.receive,
}
