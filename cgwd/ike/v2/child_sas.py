"""The IKEv2 engine's Child SA bookkeeping (a part of :class:`~cgwd.ike.v2.peer.Ikev2Peer`).

Every pair belongs to an IKE SA (it moves with an IKE SA rekey and dies with the IKE SA's
deletion). Make-before-break: a rekeyed pair (either side's rekey) is handed to the data path
at once with ``IpsecSaUp(initiator=True)`` (receive on it, send on it once the peer does); the
pair it replaces turns REKEYED, its DELETE goes out (or the peer's is awaited), and it leaves
the data path REMOVE_DELAY after the DELETE completes. Rekey collisions (2.8.1): the new pair
with the lowest of the four nonces is redundant; its creator deletes it, the other new pair
carries the traffic, and the initiator of that one deletes the old pair. Two new pairs made at
once by both ends (no rekey) are settled the same way.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cgwd.ike.events import IpsecSaDown, IpsecSaUp
from cgwd.ipsec_sa import IpsecSaPair

from .constants import NATT_PORT
from .create_child import CreateChildInitiator
from .exchange import Step
from .informational import InfoKind, InformationalInitiator
from .keys import ChildKeys
from .proposals import EspProposal
from .sa import ChildSa, ChildSaState, IkeSa
from .timers import Timer

if TYPE_CHECKING:
    from .peer import Ikev2Peer

log = logging.getLogger("cgwd.ike")

REMOVE_DELAY = 5.0  # a replaced pair stays inbound this long after its DELETE (make-before-break)
DELETE_WAIT = 30.0  # a pair (or IKE SA) the peer replaced and should delete: we do after this long
RETRY_DELAY = 10.0  # a failed Child SA or rekey exchange is tried again after this long


class ChildSaBook:
    """Mixin of :class:`~cgwd.ike.v2.peer.Ikev2Peer` (its state lives in the engine)."""

    # ------------------------------------------------------------------ lookups (Context)

    def children(self: "Ikev2Peer") -> list[ChildSa]:
        return list(self._children)

    def child_by_spi_in(self: "Ikev2Peer", spi: int) -> ChildSa | None:
        return next((c for c in self._children if c.spi_in == spi), None)

    def child_by_spi_out(self: "Ikev2Peer", spi: int) -> ChildSa | None:
        return next((c for c in self._children if c.spi_out == spi), None)

    def _installed(self: "Ikev2Peer") -> list[ChildSa]:
        return [c for c in self._children if c.state is ChildSaState.INSTALLED]

    @staticmethod
    def _owner(sa: IkeSa) -> IkeSa:
        """The IKE SA a pair negotiated on ``sa`` belongs to (a rekeyed IKE SA hands over)."""
        seen = 0
        while sa.replaced_by is not None and not sa.established and seen < 8:
            sa = sa.replaced_by
            seen += 1
        return sa

    # ------------------------------------------------------------------ new pairs

    def install_child(self: "Ikev2Peer", sa: IkeSa, proposal: EspProposal, spi_in: int, spi_out: int,
                      keys: ChildKeys, nets, initiator: bool, nonces: tuple[bytes, bytes], rekeys: ChildSa | None,
                      now: float) -> ChildSa:
        enc_in, integ_in, enc_out, integ_out = (
            (keys.enc_r, keys.integ_r, keys.enc_i, keys.integ_i) if initiator
            else (keys.enc_i, keys.integ_i, keys.enc_r, keys.integ_r))
        udp = self.udp_encap
        life = self.config.ipsec_lifetime
        pair = IpsecSaPair(
            spi_in=spi_in, spi_out=spi_out, encryption=proposal.encryption, integrity=proposal.integrity,
            enc_key_in=enc_in, enc_key_out=enc_out, integ_key_in=integ_in, integ_key_out=integ_out,
            local_address=self.config.local_address, remote_address=self.config.remote_address,
            udp_encap=udp, local_port=self.local_port if udp else NATT_PORT,
            remote_port=self.remote_port if udp else NATT_PORT, local_ts=nets[0], remote_ts=nets[1],
            lifetime_seconds=life, lifetime_kilobytes=self.config.ipsec_lifetime_kb, pfs_group=proposal.group,
            replaces_spi_in=rekeys.spi_in if rekeys is not None else None)
        child = ChildSa(pair, proposal, now, now + life, self._rekey_time(now, life), initiator, nonces, rekeys,
                        ike=self._owner(sa))
        self._children.append(child)
        if not child.ike.established:
            # negotiated on a redundant IKE SA (both ends initiated at once): goes with it
            child.go(ChildSaState.REKEYED)
            self._schedule.set(Timer.CHILD_EXPIRE, child.expires_at, child)
            self.emit(IpsecSaUp(pair, initiator=True))
            return child
        self._child_failures = 0
        self._schedule.cancel(Timer.CHILD_RETRY)
        if rekeys is not None:
            self._resolve_rekey(child, rekeys, initiator, now)
        elif not initiator:
            ours = self._creating_child(sent_only=True)
            if ours is not None:
                ours.collision = child  # both ends made a new pair at once: see resolve_duplicate
        self._schedule.set(Timer.CHILD_EXPIRE, child.expires_at, child)
        if child.state is ChildSaState.INSTALLED:
            self._schedule.set(Timer.CHILD_REKEY, child.rekey_at, child)
        log.info("%s: Child SA established: %s (%s)%s", self.name, pair.describe(),
                 "initiator" if initiator else "responder",
                 f" rekeys {rekeys.spi_in:08x}" if rekeys is not None else "")
        # make-before-break for either side's rekey: receive on the new pair at once, send on it
        # once the peer does (an IKEv2 peer that started the rekey installs on our answer)
        self.emit(IpsecSaUp(pair, initiator=rekeys is not None))
        return child

    def _resolve_rekey(self: "Ikev2Peer", new: ChildSa, old: ChildSa, initiator: bool, now: float) -> None:
        if initiator:
            theirs = old.collision
            old.collision = None
            if theirs is not None and theirs in self._children:
                self._count("rekey_collisions")
                if new.min_nonce() < theirs.min_nonce():
                    # 2.8.1: ours has the lowest nonce: redundant, we delete it; the peer deletes old
                    log.info("%s: rekey collision: ours (%08x) is redundant, the peer's %08x stays", self.name,
                             new.spi_in, theirs.spi_in)
                    new.go(ChildSaState.REKEYED)
                    self._delete_children([new], now)
                    self._replaced(old, now, we_delete=False)
                    return
                log.info("%s: rekey collision: ours (%08x) stays, the peer's %08x is redundant", self.name,
                         new.spi_in, theirs.spi_in)
                self._replaced(theirs, now, we_delete=False)
            self._count("rekeys_ipsec")
            self._replaced(old, now, we_delete=True)
            return
        ours = old.rekeying
        if isinstance(ours, CreateChildInitiator) and ours.step is Step.SENT:
            old.collision = new  # resolved when our rekey of ``old`` completes or fails
            return
        old.rekeying = None
        self._count("rekeys_ipsec")
        self._replaced(old, now, we_delete=False)

    def resolve_duplicate(self: "Ikev2Peer", ours: ChildSa, theirs: ChildSa, now: float) -> None:
        """Both ends created a new Child SA at once (no rekey): as for a rekey collision, the one
        with the lowest nonce is redundant and its creator deletes it."""
        if theirs not in self._children or ours.state is not ChildSaState.INSTALLED:
            return
        self._count("child_create_collisions")
        if ours.min_nonce() < theirs.min_nonce():
            ours.go(ChildSaState.REKEYED)
            self._delete_children([ours], now)
        else:
            self._replaced(theirs, now, we_delete=False)

    def rekey_abandoned(self: "Ikev2Peer", old: ChildSa, now: float) -> None:
        """Our rekey of ``old`` ended without a new pair: a rekey of the peer's that collided
        with it replaces ``old`` (the peer deletes it)."""
        theirs = old.collision
        old.collision = None
        if theirs is not None and theirs in self._children and old.state is ChildSaState.INSTALLED:
            self._count("rekeys_ipsec")
            self._replaced(old, now, we_delete=False)

    def _replaced(self: "Ikev2Peer", c: ChildSa, now: float, we_delete: bool) -> None:
        if c.state not in (ChildSaState.INSTALLED, ChildSaState.REKEYED):
            return  # already deleted (by the peer): it leaves on its own timer
        if c.state is ChildSaState.INSTALLED:
            c.go(ChildSaState.REKEYED)
        self._schedule.cancel(Timer.CHILD_REKEY, c)
        if we_delete:
            self._delete_children([c], now)
        else:
            self._schedule.set(Timer.CHILD_REMOVE, now + DELETE_WAIT, c)

    # ------------------------------------------------------------------ failures, deletes

    def child_failed(self: "Ikev2Peer", reason: str, now: float, rekeys: ChildSa | None = None) -> None:
        self._error(reason)
        self._count("child_failures")
        if rekeys is not None:
            self.rekey_abandoned(rekeys, now)
            if rekeys.state is ChildSaState.INSTALLED:
                self._schedule.set(Timer.CHILD_REKEY, now + RETRY_DELAY + self._jitter(RETRY_DELAY), rekeys)
            return
        self._child_failures += 1
        if not self._installed():
            self._schedule.set(Timer.CHILD_RETRY, now + self._child_backoff())

    def child_deleted(self: "Ikev2Peer", c: ChildSa, reason: str, now: float) -> None:
        """The peer has deleted its half of ``c`` (its DELETE, or its answer to ours). A pair
        that was replaced (or is being rekeyed) stays inbound for REMOVE_DELAY."""
        if c not in self._children:
            return
        rekey_pending = c.collision is not None or (
            isinstance(c.rekeying, CreateChildInitiator) and c.rekeying.step is Step.SENT)
        if c.state is ChildSaState.INSTALLED and not rekey_pending:
            self._drop_child(c, reason)
            if not self._installed() and self._started:
                # the peer deleted our last pair: give it time to make the next one itself
                self._schedule.set_earliest(Timer.CHILD_RETRY, now + RETRY_DELAY + self._jitter(RETRY_DELAY / 2))
            return
        if c.state is not ChildSaState.DELETING:
            c.go(ChildSaState.DELETING)
        self._schedule.cancel(Timer.CHILD_REKEY, c)
        self._schedule.set(Timer.CHILD_REMOVE, now + REMOVE_DELAY, c)

    def remove_child(self: "Ikev2Peer", child: ChildSa, reason: str, now: float) -> None:
        self._drop_child(child, reason)

    def _drop_child(self: "Ikev2Peer", c: ChildSa, reason: str) -> None:
        if c not in self._children:
            return
        self._children.remove(c)
        c.go(ChildSaState.GONE)
        self._schedule.cancel_owner(c)
        c.rekeys = None
        for other in self._children:
            if other.collision is c:
                other.collision = None
            if other.rekeys is c:
                other.rekeys = None  # (kept, every pair would hold all the pairs before it)
        log.info("%s: Child SA down: %s (%s)", self.name, c.pair.describe(), reason)
        self.emit(IpsecSaDown(c.spi_in, c.spi_out, reason))

    def _drop_children_of(self: "Ikev2Peer", sa: IkeSa, reason: str) -> None:
        for c in [c for c in self._children if c.ike is sa]:
            self._drop_child(c, reason)

    def _delete_children(self: "Ikev2Peer", cs: list[ChildSa], now: float) -> None:
        """Queue a DELETE of ``cs`` on the IKE SA they belong to (or the current one)."""
        groups: dict[int, tuple[IkeSa, list[ChildSa]]] = {}
        for c in cs:
            self._schedule.cancel(Timer.CHILD_REKEY, c)
            sa = c.ike if c.ike is not None and c.ike.usable and c.ike in self._sas else self._current()
            if sa is None:
                continue
            groups.setdefault(id(sa), (sa, []))[1].append(c)
        for sa, group in groups.values():
            self.queue(sa, InformationalInitiator(self, sa, InfoKind.DELETE_CHILD, group))

    def _rekey_child(self: "Ikev2Peer", c: ChildSa, now: float) -> None:
        sa = c.ike if c.ike is not None and c.ike.established and c.ike in self._sas else self._current()
        if sa is None or c.state is not ChildSaState.INSTALLED or c.rekeying is not None:
            return
        self.queue(sa, CreateChildInitiator(self, sa, rekeys=c))

    def _creating_child(self: "Ikev2Peer", sent_only: bool = False) -> CreateChildInitiator | None:
        """Our CREATE_CHILD_SA for a new (not rekeyed) Child SA, queued or outstanding."""
        for sa in self._sas:
            exs = [sa.outstanding.exchange] if sa.outstanding else []
            if not sent_only:
                exs += list(sa.queue) + sa.deferred
            for e in exs:
                if isinstance(e, CreateChildInitiator) and e.rekeys is None:
                    return e
        return None

    def _child_backoff(self: "Ikev2Peer") -> float:
        base = min(RETRY_DELAY * 2 ** max(0, self._child_failures - 1), 300.0)
        return base + self._jitter(RETRY_DELAY / 2)

    # ------------------------------------------------------------------ timer actions (Timer -> handler)

    def _live_child(self: "Ikev2Peer", owner: object) -> ChildSa | None:
        return owner if isinstance(owner, ChildSa) and owner in self._children else None

    def _on_child_rekey(self: "Ikev2Peer", owner: object, now: float) -> None:
        c = self._live_child(owner)
        if c is not None and c.state is ChildSaState.INSTALLED and self._started:
            self._rekey_child(c, now)

    def _on_child_expire(self: "Ikev2Peer", owner: object, now: float) -> None:
        c = self._live_child(owner)
        if c is None:
            return
        was_installed = c.state is ChildSaState.INSTALLED
        if c.state is not ChildSaState.DELETING:
            self._delete_children([c], now)
        self._drop_child(c, "expired")
        if was_installed and self._started and not self._installed():
            self._schedule.set(Timer.CHILD_RETRY, now)

    def _on_child_remove(self: "Ikev2Peer", owner: object, now: float) -> None:
        c = self._live_child(owner)
        if c is None:
            return
        if c.state is ChildSaState.REKEYED:
            self._delete_children([c], now)  # the peer did not delete what it replaced: we do
        else:
            self._drop_child(c, "rekeyed")

    def _on_child_retry(self: "Ikev2Peer", owner: object, now: float) -> None:
        sa = self._current()
        if sa is not None and self._started and self._creating_child() is None and not self._installed():
            self.queue(sa, CreateChildInitiator(self, sa))
