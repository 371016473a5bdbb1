"""The IKEv2 engine's IKE SA bookkeeping (a part of :class:`~cgwd.ike.v2.peer.Ikev2Peer`):
establishment, lifetimes, rekeys and their collisions (2.8.2), duplicates from both ends
initiating at once, INITIAL_CONTACT, deletion, dead peers and reconnection.

Duplicates: when both ends initiate at the same moment (AWS restarts a tunnel whose DPD
timed out while we do too) two IKE SAs come up. Once one end holds both it applies the rule
of 2.8.2 to them: the one with the lowest nonce is redundant and its initiator deletes it
(with its Child SAs); both ends reach the same verdict, so they keep the same IKE SA.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from cgwd.ike.events import NatDetected, PeerDead, Phase1Down, Phase1Up

from .child_sas import DELETE_WAIT, RETRY_DELAY
from .constants import IKE_PORT, Exchange, Protocol
from .create_child import CreateChildInitiator
from .exchange import InitiatorExchange, Step
from .ike_rekey import IkeRekeyInitiator
from .ike_sa_init import IkeSaInitInitiator
from .informational import DeletePayload, InfoKind, InformationalInitiator
from .sa import ChildSaState, IkeSa, IkeSaState
from .timers import Timer

if TYPE_CHECKING:
    from .peer import Ikev2Peer

log = logging.getLogger("cgwd.ike")

HALF_OPEN_TIMEOUT = 30.0
KEEPALIVE_INTERVAL = 20.0
RECONNECT_MIN = 5.0
RECONNECT_MAX = 300.0


class IkeSaBook:
    """Mixin of :class:`~cgwd.ike.v2.peer.Ikev2Peer` (its state lives in the engine)."""

    def _current(self: "Ikev2Peer") -> IkeSa | None:
        """The IKE SA that carries our requests: the newest established one."""
        est = [s for s in self._sas if s.established]
        return max(est, key=lambda s: s.established_at or 0.0) if est else None

    def _connecting(self: "Ikev2Peer") -> bool:
        return any(s.initiator and s.state in (IkeSaState.INIT_SENT, IkeSaState.AUTH_SENT) for s in self._sas)

    def _sa_by_spi(self: "Ikev2Peer", spi: object) -> IkeSa | None:
        return next((s for s in self._sas if s.my_spi == spi), None)

    def add_ike_sa(self: "Ikev2Peer", sa: IkeSa) -> None:
        self._sas.append(sa)

    # ------------------------------------------------------------------ coming up

    def _initiate(self: "Ikev2Peer", now: float) -> None:
        if not self.config.initiator:
            return
        self._schedule.cancel(Timer.RECONNECT)
        sa = IkeSa(self.new_ike_spi(), bytes(8), True, IkeSaState.INIT_SENT, now)
        self.local_port = IKE_PORT
        self.remote_port = IKE_PORT
        self._sas.append(sa)
        self.queue(sa, IkeSaInitInitiator(self, sa, self.config.ike_algs[0].group))
        log.info("%s: initiating IKE_SA_INIT (%s)", self.name, ", ".join(p.name for p in self.config.ike_algs))

    def _reconnect_later(self: "Ikev2Peer", now: float) -> None:
        if not (self._started and self.config.initiator) or self._connecting() or self._current() is not None:
            return
        self._failures += 1
        delay = min(RECONNECT_MIN * 2 ** (self._failures - 1), RECONNECT_MAX)
        self._schedule.set(Timer.RECONNECT, now + delay)
        log.info("%s: reconnecting in %.0fs", self.name, delay)

    def ike_established(self: "Ikev2Peer", sa: IkeSa, now: float) -> None:
        sa.go(IkeSaState.ESTABLISHED)
        self._schedule.cancel(Timer.HALF_OPEN, sa)
        nat = sa.nat
        if nat is not None:
            self.local_behind_nat = nat.local_behind_nat
            self.peer_behind_nat = nat.peer_behind_nat
            self.udp_encap = nat.any
            log.info("%s: NAT detection: local behind NAT=%s, peer behind NAT=%s", self.name,
                     nat.local_behind_nat, nat.peer_behind_nat)
            self.emit(NatDetected(nat.local_behind_nat, nat.peer_behind_nat))
        self._failures = 0
        self._schedule.cancel(Timer.RECONNECT)
        self._lifetimes(sa, now)
        self._up(sa, now)
        log.info("%s: IKE SA established (%s, %s) %s", self.name, sa.proposal.name,
                 "initiator" if sa.initiator else "responder", sa.name())
        self._duplicates(sa, now)

    def _duplicates(self: "Ikev2Peer", sa: IkeSa, now: float) -> None:
        for other in [s for s in self._sas if s is not sa and s.established]:
            self._count("ike_sa_duplicates")
            loser = other if min(other.ni, other.nr) < min(sa.ni, sa.nr) else sa
            keep = sa if loser is other else other
            log.info("%s: two IKE SAs with the peer (both ends initiated): %s is redundant", self.name, loser.name())
            self._move_queue(loser, keep)
            for key in (Timer.IKE_REKEY, Timer.IKE_EXPIRE):
                self._schedule.cancel(key, loser)
            # no replaced_by: its Child SAs are redundant too and go with it
            loser.go(IkeSaState.REKEYED)
            for c in self._children:
                if c.ike is loser and c.state is ChildSaState.INSTALLED:
                    c.go(ChildSaState.REKEYED)
            if loser.initiator:
                self.queue(loser, InformationalInitiator(self, loser, InfoKind.DELETE_IKE))
            else:
                self._schedule.set(Timer.IKE_FORGET, now + DELETE_WAIT, loser)
            if loser is sa:
                return

    def _lifetimes(self: "Ikev2Peer", sa: IkeSa, now: float) -> None:
        life = self.config.ike_lifetime
        sa.established_at = now
        sa.expires_at = now + life
        sa.rekey_at = self._rekey_time(now, life)
        self._schedule.set(Timer.IKE_REKEY, sa.rekey_at, sa)
        self._schedule.set(Timer.IKE_EXPIRE, sa.expires_at, sa)

    def _up(self: "Ikev2Peer", sa: IkeSa, now: float) -> None:
        self._last_seen = now
        self._arm_liveness()
        self._phase1_up = True
        self.emit(Phase1Up(sa.proposal.name))
        if self.udp_encap and self.local_behind_nat:
            self._schedule.set_earliest(Timer.KEEPALIVE, now + KEEPALIVE_INTERVAL)

    def ike_failed(self: "Ikev2Peer", sa: IkeSa, reason: str, now: float) -> None:
        """IKE_SA_INIT or IKE_AUTH of ours failed."""
        self._error(reason)
        self._count("ike_failures")
        self._forget(sa, reason)
        if self._current() is None and self._phase1_up:
            self._phase1_up = False
            self.emit(Phase1Down(reason))
        self._reconnect_later(now)

    # ------------------------------------------------------------------ INITIAL_CONTACT

    def initial_contact_due(self: "Ikev2Peer") -> bool:
        """INITIAL_CONTACT when we hold no other IKE SA with this peer (strongSwan does likewise)."""
        return not any(s.established or s.state is IkeSaState.REKEYED for s in self._sas)

    def initial_contact_sent(self: "Ikev2Peer") -> None:
        self._count("initial_contact_sent")

    def initial_contact_received(self: "Ikev2Peer", keep: IkeSa, now: float) -> None:
        """The peer says it has no other IKE SA with us: what we had before it started ``keep``
        is stale (an IKE SA that came up at our end meanwhile may be new to it: see _duplicates)."""
        self._count("initial_contact_received")
        stale = [s for s in self._sas if s is not keep and s.has_keys and s.state is not IkeSaState.INIT_DONE
                 and (s.state is not IkeSaState.ESTABLISHED or (s.established_at or 0.0) < keep.created_at)
                 and s.state not in (IkeSaState.INIT_SENT, IkeSaState.AUTH_SENT)]
        if stale:
            log.info("%s: INITIAL_CONTACT from peer: dropping %d older IKE SA(s)", self.name, len(stale))
        for s in stale:
            self._forget(s, "initial-contact")
        for c in [c for c in self._children if c.ike is None or c.ike not in self._sas]:
            self._drop_child(c, "initial-contact")

    # ------------------------------------------------------------------ rekeys

    def _rekey_ike(self: "Ikev2Peer", sa: IkeSa) -> None:
        if sa.rekeying is None and sa.established:
            sa.rekeying = IkeRekeyInitiator(self, sa)
            self.queue(sa, sa.rekeying)

    def ike_rekey_failed(self: "Ikev2Peer", sa: IkeSa, reason: str, now: float) -> None:
        self._error(reason)
        self._count("ike_rekey_failures")
        theirs = sa.collision
        sa.collision = None
        if theirs is not None and theirs in self._sas and sa.established:
            self._retire_ike(sa, theirs, we_delete=False, now=now)
        elif sa.established:
            self._schedule.set(Timer.IKE_REKEY, now + RETRY_DELAY + self._jitter(RETRY_DELAY), sa)

    def ike_rekeyed(self: "Ikev2Peer", old: IkeSa, new: IkeSa, we_started: bool, now: float) -> None:
        """A CREATE_CHILD_SA rekeying ``old`` completed (2.18, collisions 2.8.2)."""
        self._sas.append(new)
        self._lifetimes(new, now)
        self._count("rekeys_ike")
        log.info("%s: IKE SA rekeyed (%s): %s -> %s", self.name, "ours" if we_started else "peer's",
                 old.name(), new.name())
        self.emit(Phase1Up(new.proposal.name))
        if we_started:
            theirs = old.collision
            old.collision = None
            if theirs is not None and theirs in self._sas:
                self._count("ike_rekey_collisions")
                if min(new.ni, new.nr) < min(theirs.ni, theirs.nr):
                    # ours is redundant: we delete it; the peer deletes the old one
                    self._redundant(new, theirs, we_delete=True, now=now)
                    self._retire_ike(old, theirs, we_delete=False, now=now)
                    return
                self._redundant(theirs, new, we_delete=False, now=now)
            self._retire_ike(old, new, we_delete=True, now=now)
            return
        ours = old.rekeying
        if isinstance(ours, IkeRekeyInitiator) and ours.step is Step.SENT:
            old.collision = new  # resolved when our rekey of ``old`` completes or fails
            self._move_queue(old, new)
            return
        old.rekeying = None
        self._retire_ike(old, new, we_delete=False, now=now)

    def _redundant(self: "Ikev2Peer", sa: IkeSa, keep: IkeSa, we_delete: bool, now: float) -> None:
        sa.go(IkeSaState.REKEYED)
        sa.replaced_by = keep
        for key in (Timer.IKE_REKEY, Timer.IKE_EXPIRE):
            self._schedule.cancel(key, sa)
        self._move_queue(sa, keep)
        if we_delete:
            self.queue(sa, InformationalInitiator(self, sa, InfoKind.DELETE_IKE))
        else:
            self._schedule.set(Timer.IKE_FORGET, now + DELETE_WAIT, sa)

    def _retire_ike(self: "Ikev2Peer", old: IkeSa, new: IkeSa, we_delete: bool, now: float) -> None:
        """``new`` replaces ``old``: the Child SAs and the queued work move over."""
        for c in self._children:
            if c.ike is old:
                c.ike = new
        old.replaced_by = new
        self._move_queue(old, new)
        for key in (Timer.IKE_REKEY, Timer.IKE_EXPIRE):
            self._schedule.cancel(key, old)
        if old.state is IkeSaState.ESTABLISHED:
            old.go(IkeSaState.REKEYED)
        if we_delete:
            self.queue(old, InformationalInitiator(self, old, InfoKind.DELETE_IKE))
        else:
            self._schedule.set(Timer.IKE_FORGET, now + DELETE_WAIT, old)

    def _move_queue(self: "Ikev2Peer", old: IkeSa, new: IkeSa) -> None:
        keep: deque[InitiatorExchange] = deque()
        for ex in old.queue:
            if isinstance(ex, InformationalInitiator) and ex.kind is InfoKind.DELETE_IKE:
                keep.append(ex)
            elif not isinstance(ex, IkeRekeyInitiator):
                self.queue(new, ex)
        old.queue = keep
        moved = [ex for ex in old.deferred if not isinstance(ex, IkeRekeyInitiator)]
        old.deferred = []
        for ex in moved:
            ex.sa = new
            new.deferred.append(ex)
        due = self._schedule.get(Timer.DEFERRED, old)
        self._schedule.cancel(Timer.DEFERRED, old)
        if moved and due is not None:
            self._schedule.set_earliest(Timer.DEFERRED, due, new)

    # ------------------------------------------------------------------ going down

    def remove_ike_sa(self: "Ikev2Peer", sa: IkeSa, reason: str, now: float) -> None:
        """The IKE SA is deleted (by the peer or by our DELETE), with its Child SAs."""
        self._forget(sa, reason)
        if self._current() is not None:
            if self._started and not self._installed():
                self._schedule.set_earliest(Timer.CHILD_RETRY, now + RETRY_DELAY / 2)
            return
        for c in list(self._children):
            self._drop_child(c, reason)
        if self._phase1_up:
            self._phase1_up = False
            self.emit(Phase1Down(reason))
        self._schedule.cancel(Timer.LIVENESS)
        self._schedule.cancel(Timer.KEEPALIVE)
        if self._started and self.config.initiator and not self._connecting() and reason == "deleted by peer":
            self._initiate(now)

    def peer_unresponsive(self: "Ikev2Peer", sa: IkeSa, reason: str, now: float) -> None:
        """A request got no answer after every retransmission: the peer is dead (2.4)."""
        if sa is not self._current() and self._current() is not None:
            self._forget(sa, "no answer")
            return
        log.warning("%s: peer dead (%s), action %s", self.name, reason, self.config.dpd_action)
        self._error(f"peer dead ({reason})")
        self._count("dpd_dead")
        self.emit(PeerDead())
        for c in list(self._children):
            self._drop_child(c, "dpd")
        self._forget_all("dpd")
        action = self.config.dpd_action
        if action == "clear":
            self._started = False
        elif action == "restart":
            if self.config.initiator and self._started:
                self._initiate(now)
        elif self._started and self.config.initiator:
            self._failures += 1
            self._schedule.set(Timer.RECONNECT, now + RECONNECT_MIN)

    def _forget(self: "Ikev2Peer", sa: IkeSa, reason: str = "") -> None:
        """Remove an IKE SA (and its Child SAs) without telling the peer; its pending work is dropped."""
        if sa in self._sas:
            self._sas.remove(sa)
        if sa.state is not IkeSaState.GONE:
            sa.go(IkeSaState.GONE)
        self._drop_children_of(sa, reason or "IKE SA gone")
        pending = list(sa.queue) + sa.deferred + ([sa.outstanding.exchange] if sa.outstanding else [])
        sa.outstanding = None
        sa.queue.clear()
        sa.deferred = []
        for ex in pending:
            ex.step = Step.FAILED
            if isinstance(ex, CreateChildInitiator):
                ex.release()
        sa.rekeying = None
        self._schedule.cancel_owner(sa)
        for other in self._sas:
            if other.collision is sa:
                other.collision = None

    def _forget_all(self: "Ikev2Peer", reason: str) -> None:
        for sa in list(self._sas):
            self._forget(sa, reason)
        self._schedule.cancel(Timer.LIVENESS)
        self._schedule.cancel(Timer.KEEPALIVE)
        if self._phase1_up:
            self._phase1_up = False
            self.emit(Phase1Down(reason))

    def _delete_ike_now(self: "Ikev2Peer", sa: IkeSa) -> None:
        """A DELETE of ``sa`` sent once, whatever the window (we forget the SA anyway)."""
        if sa.has_keys and sa.state in (IkeSaState.ESTABLISHED, IkeSaState.REKEYED, IkeSaState.DELETING):
            self._send(sa.protect(Exchange.INFORMATIONAL, sa.take_mid(), False, [DeletePayload(Protocol.IKE)]))

    # ------------------------------------------------------------------ timers

    def _live_sa(self: "Ikev2Peer", owner: object) -> IkeSa | None:
        return owner if isinstance(owner, IkeSa) and owner in self._sas else None

    def _on_half_open(self: "Ikev2Peer", owner: object, now: float) -> None:
        sa = self._live_sa(owner)
        if sa is not None and sa.state is IkeSaState.INIT_DONE:
            self._count("half_open_expired")
            self._forget(sa, "half-open")

    def _on_ike_rekey(self: "Ikev2Peer", owner: object, now: float) -> None:
        sa = self._live_sa(owner)
        if sa is not None and sa.established and self._started:
            log.info("%s: IKE SA lifetime ending: rekeying", self.name)
            self._rekey_ike(sa)

    def _on_ike_expire(self: "Ikev2Peer", owner: object, now: float) -> None:
        sa = self._live_sa(owner)
        if sa is None:
            return
        log.info("%s: IKE SA %s expired", self.name, sa.name())
        self._delete_ike_now(sa)
        self.remove_ike_sa(sa, "expired", now)
        if self._current() is None and self._started and self.config.initiator and not self._connecting():
            self._initiate(now)

    def _on_ike_forget(self: "Ikev2Peer", owner: object, now: float) -> None:
        sa = self._live_sa(owner)
        if sa is not None and sa.state is IkeSaState.REKEYED:
            self.queue(sa, InformationalInitiator(self, sa, InfoKind.DELETE_IKE))

    def _on_deferred(self: "Ikev2Peer", owner: object, now: float) -> None:
        sa = self._live_sa(owner)
        if sa is not None:
            for ex in sa.deferred:
                self.queue(sa, ex)
            sa.deferred = []

    def _on_reconnect(self: "Ikev2Peer", owner: object, now: float) -> None:
        if self._started and self.config.initiator and not self._connecting() and self._current() is None:
            self._initiate(now)
