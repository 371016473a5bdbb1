"""IPsec / Child SA bookkeeping of one tunnel: make-before-break and rekey collisions.

A new pair replaces older ones: they are marked REKEYED (receive only) and deleted a few
seconds later, so the data path switches outbound traffic first. Two rekeys that crossed (one
of ours and one of the peer's, each begun before the other was complete here) are a
collision: the pair the peer installed last carries traffic, the other one is kept (not
deleted: the peer may see the collision the other way round) until the next rekey replaces it
or it expires. A new pair that goes away before it replaced the ones it retired (the data
path refused it, the peer deleted it) gives them back their traffic.

The deadlines (rekey, delete) are entries of the engine's one schedule; the table sets and
cancels them under the action keys the engine gives it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

from cgwd.ipsec_sa import IpsecSaPair

from .engine import ChildState
from .schedule import Schedule

log = logging.getLogger("cgwd.ike")


@dataclass(eq=False)
class ChildSa:
    pair: IpsecSaPair
    established_at: float
    order: int  # when it was established, in the engine's event order (ties of `now` apart)
    state: ChildState = ChildState.INSTALLED
    rekeying: bool = False  # a negotiation replacing it is in progress
    rekey_due: bool = False  # its rekey time passed with no IKE SA: rekey once one is up
    initiator: bool = True  # negotiated by an exchange we started
    peer_install_at: float = 0.0  # when we sent what makes the peer install it (collision order)
    lingering: bool = False  # lost a rekey collision: kept (not deleted) until replaced or expired
    displaced: list["ChildSa"] = field(default_factory=list)  # pairs its arrival retired


@dataclass
class Placement:
    """Where a new pair goes: what it replaces (``pred``, named in IpsecSaPair.replaces_spi_in),
    the pairs it collides with, and the older ones it retires."""

    pred: ChildSa | None
    siblings: list[ChildSa]
    older: list[ChildSa]


class ChildTable:
    def __init__(self, sched: Schedule, *, rekey: Hashable, delete: Hashable, delete_delay: float,
                 count: Callable[[str], None], name: str = "") -> None:
        self.children: list[ChildSa] = []
        self._sched = sched
        self._rekey = rekey
        self._delete = delete
        self._delete_delay = delete_delay
        self._count = count
        self.name = name

    def __iter__(self) -> Iterator[ChildSa]:
        return iter(self.children)

    def __len__(self) -> int:
        return len(self.children)

    def __contains__(self, c: ChildSa) -> bool:
        return c in self.children

    def __getitem__(self, i: int) -> ChildSa:
        return self.children[i]

    def find(self, spi_in: int) -> ChildSa | None:
        return next((c for c in self.children if c.pair.spi_in == spi_in), None)

    def state(self, spi_in: int) -> ChildState | None:
        c = self.find(spi_in)
        return c.state if c else None

    def installed(self) -> list[ChildSa]:
        return [c for c in self.children if c.state == ChildState.INSTALLED]

    def any_installed(self) -> bool:
        return any(c.state == ChildState.INSTALLED for c in self.children)

    def append(self, child: ChildSa) -> None:
        self.children.append(child)

    def remove(self, child: ChildSa) -> bool:
        """Forget ``child`` and its deadlines; whether it was there. The pairs left forget it
        as one they displaced (else each pair would hold every one before it)."""
        if child not in self.children:
            return False
        self.children.remove(child)
        self._sched.cancel_owner(child)
        for c in self.children:
            if child in c.displaced:
                c.displaced.remove(child)
        return True

    # ------------------------------------------------------------------ a new pair

    def place(self, initiator: bool, created_order: int, replaces_spi_in: int | None) -> Placement:
        """Before a new pair is built: what it replaces and collides with.

        A rekey collision is two negotiations that crossed: one of ours and one of the peer's,
        each begun before the other was complete here (IKEv1 does not say which SA a quick mode
        replaces). Rekeys one after the other, however close together, are not: the newer pair
        replaces the older ones, as the peer sees it too (strongSwan rekeys its newest CHILD_SA
        and retires the one it replaced).
        """
        others = self.installed()
        siblings = [c for c in others if c.initiator != initiator and created_order < c.order]
        pred = None
        if replaces_spi_in is not None:
            pred = self.find(replaces_spi_in)
            if pred is not None and pred in siblings:
                siblings.remove(pred)
        older = [c for c in others if c not in siblings]
        if pred is None and older:
            pred = max(older, key=lambda c: c.order)
        if pred is None and siblings:
            pred = max(siblings, key=lambda c: c.order)
        return Placement(pred, siblings, older)

    def settle(self, child: ChildSa, placement: Placement, now: float) -> None:
        """After the new pair was added: retire what it replaces; settle a collision."""
        pred, siblings, older = placement.pred, placement.siblings, placement.older
        for c in older + ([pred] if pred is not None and pred not in older and pred not in siblings else []):
            if c.state == ChildState.INSTALLED:
                child.displaced.append(c)
            self.retire(c, now)
        if siblings:
            # the pair the peer installed last is the one it sends on (strongSwan marks the
            # other rekeyed): that one carries our traffic too; the other one stays
            contenders = siblings + [child]
            winner = max(contenders, key=lambda c: (c.peer_install_at, min(c.pair.spi_in, c.pair.spi_out)))
            for c in contenders:
                if c is not winner and c.state == ChildState.INSTALLED:
                    self._count("rekey_collisions")
                    log.info("%s: rekey collision: %s kept until replaced, %s carries traffic", self.name,
                             c.pair.describe(), winner.pair.describe())
                    c.state = ChildState.REKEYED
                    c.rekeying = False
                    c.rekey_due = False
                    c.lingering = True
                    if c is not child:
                        child.displaced.append(c)
                    self._sched.cancel(self._rekey, c)
        else:
            for c in self.children:
                if c.lingering and c is not child:
                    c.lingering = False
                    self._sched.set(self._delete, now + self._delete_delay, c)

    def retire(self, c: ChildSa, now: float) -> None:
        """Replaced: receive only, deleted after the delay."""
        if c.state == ChildState.INSTALLED:
            c.state = ChildState.REKEYED
            c.rekeying = False
            c.rekey_due = False
            self._sched.cancel(self._rekey, c)
            self._sched.set(self._delete, now + self._delete_delay, c)

    def restore_displaced(self, gone: ChildSa, rekey_at: float) -> None:
        """``gone`` (a new pair) went away before it replaced the pairs it retired: if no other
        pair carries traffic, those go back to carrying it (make-before-break: they still work
        at both ends) and are rekeyed at ``rekey_at``."""
        if self.any_installed():
            return
        for c in gone.displaced:
            if c in self.children and c.state == ChildState.REKEYED:
                log.info("%s: %s carries traffic again", self.name, c.pair.describe())
                c.state = ChildState.INSTALLED
                c.lingering = False
                self._sched.cancel(self._delete, c)
                self._sched.set(self._rekey, rekey_at, c)
