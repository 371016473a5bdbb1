"""Limits on unauthenticated work, shared by both IKE versions.

A responder must not let spoofed initiations lock out the real peer. Work that needs no proof
of the sender's address (answering a first message) is cheap and bounded by a table of
half-open exchanges in which the oldest gives way; work only a sender that received our
answer can ask for (return routability: it echoes our cookie/SPI) is what a
:class:`TokenBucket` rations, e.g. the Diffie-Hellman computation of a responder.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; sans-IO (the caller passes now)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if there are that many (True), else spend nothing (False)."""
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def available(self, now: float) -> float:
        if self._at is None:
            return self.burst
        return min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
