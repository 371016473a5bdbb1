"""Liveness of the peer (dead peer detection), shared by both IKE versions.

RFC 3706 (IKEv1 R-U-THERE) and RFC 7296 2.4 (IKEv2 empty INFORMATIONAL) work the same way: a
probe goes out only after ``interval`` seconds without any authenticated traffic from the peer
(IKE, or ESP through the data path), probes repeat every ``interval`` seconds while
unanswered, and ``retries`` unanswered probes mean the peer is dead. The engine keeps one DPD
entry in its schedule and asks :meth:`Liveness.check` what to do when it is due.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Probe(enum.Enum):
    WAIT = "wait"  # the peer was heard within the interval: look again later
    SEND = "send"  # idle (or the last probe unanswered): send a probe now
    DEAD = "dead"  # every probe unanswered: the peer is dead


@dataclass
class Liveness:
    seq: int = 0  # sequence number of the last probe sent (IKEv1 R-U-THERE)
    last_seen: float | None = None  # last authenticated sign of life
    last_sent: float | None = None  # last probe sent
    outstanding: int = 0  # probes sent since the peer was last heard

    def heard(self, now: float) -> None:
        """Authenticated traffic from the peer: it is alive, idleness starts over."""
        self.last_seen = now
        self.outstanding = 0

    def check(self, now: float, interval: float, retries: int) -> tuple[Probe, float | None]:
        """At a DPD deadline: what to do, and when to look again (None: dead)."""
        if not self.outstanding and self.last_seen is not None and self.last_seen + interval > now:
            return Probe.WAIT, self.last_seen + interval
        if self.outstanding >= max(1, retries):
            return Probe.DEAD, None
        return Probe.SEND, now + interval

    def probe(self, now: float) -> int:
        """A probe goes out now: its sequence number."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.outstanding += 1
        self.last_sent = now
        return self.seq

    def next_check(self, now: float, interval: float) -> float:
        """When the DPD entry falls due with a (new) interval, from what is known now."""
        base = self.last_sent if self.outstanding else self.last_seen
        return max(now, (base or now) + interval)
