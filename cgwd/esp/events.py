"""Events a data path reports to the daemon (and through it to the IKE engine)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SaExpiring:
    """An SA pair reached a lifetime limit.

    ``hard=False``: the soft limit (time, bytes, or outbound sequence number
    2**32 - 2**24) was reached; the IKE engine should rekey now.  ``hard=True``: the
    hard limit was reached; the data path has stopped using the pair (it is removed).
    """

    spi_in: int
    hard: bool


@dataclass(frozen=True)
class SequenceExhausted:
    """The outbound sequence number reached 2**32 - 1: nothing more can be sent on
    this SA pair (no ESN).  Outbound packets are dropped (reason ``seq_exhausted``)
    until a new pair is installed."""

    spi_in: int
