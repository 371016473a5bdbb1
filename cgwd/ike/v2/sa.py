"""IKE SA and Child SA records of the IKEv2 engine, their states and transition tables.

An :class:`IkeSa` holds its keys and the two message-ID windows of RFC 7296 2.1-2.3 (window
size 1): our requests (``my_mid``, one outstanding :class:`Request`, a queue of exchanges
waiting their turn) and the peer's (``peer_mid``, the last request and our cached response to
answer its retransmission). A :class:`ChildSa` is one ESP pair with the nonces of the exchange
that made it (the rekey-collision rule of 2.8.1 compares them).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from cgwd.ike.engine import ChildState
from cgwd.ike.retransmit import Retransmission
from cgwd.ipsec_sa import IpsecSaPair

from .codec import Header, Payload
from .constants import Exchange, Flag
from .keys import IkeKeys
from .proposals import EspProposal, IkeProposal
from .protect import SkCipher

if TYPE_CHECKING:
    from cgwd.ike.crypto import DiffieHellman

    from .exchange import InitiatorExchange


class IllegalTransition(RuntimeError):
    pass


class IkeSaState(enum.Enum):
    INIT_SENT = "init_sent"  # initiator: IKE_SA_INIT request out
    INIT_DONE = "init_done"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH (half-open)
    AUTH_SENT = "auth_sent"  # initiator: IKE_AUTH request out
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a newer IKE SA (children moved): waits for its DELETE
    DELETING = "deleting"  # our DELETE of it is out
    GONE = "gone"


IKE_TRANSITIONS: dict[IkeSaState, frozenset[IkeSaState]] = {
    IkeSaState.INIT_SENT: frozenset({IkeSaState.INIT_SENT, IkeSaState.AUTH_SENT, IkeSaState.GONE}),
    IkeSaState.INIT_DONE: frozenset({IkeSaState.ESTABLISHED, IkeSaState.GONE}),
    IkeSaState.AUTH_SENT: frozenset({IkeSaState.ESTABLISHED, IkeSaState.GONE}),
    IkeSaState.ESTABLISHED: frozenset({IkeSaState.REKEYED, IkeSaState.DELETING, IkeSaState.GONE}),
    IkeSaState.REKEYED: frozenset({IkeSaState.DELETING, IkeSaState.GONE}),
    IkeSaState.DELETING: frozenset({IkeSaState.GONE}),
    IkeSaState.GONE: frozenset(),
}


class ChildSaState(enum.Enum):
    INSTALLED = "installed"  # carries traffic
    REKEYED = "rekeyed"  # replaced by a rekey, or the redundant pair of a rekey collision
    DELETING = "deleting"  # our DELETE of it is out
    GONE = "gone"


CHILD_TRANSITIONS: dict[ChildSaState, frozenset[ChildSaState]] = {
    ChildSaState.INSTALLED: frozenset({ChildSaState.REKEYED, ChildSaState.DELETING, ChildSaState.GONE}),
    ChildSaState.REKEYED: frozenset({ChildSaState.DELETING, ChildSaState.GONE}),
    ChildSaState.DELETING: frozenset({ChildSaState.GONE}),
    ChildSaState.GONE: frozenset(),
}


@dataclass
class Request:
    """Our outstanding request on an IKE SA, retransmitted (:class:`Retransmission`: the
    doubling backoff of both IKE versions; ``fixed``: a liveness check, every interval) until
    answered or ``max_tries`` retransmissions are spent."""

    exchange: "InitiatorExchange"
    mid: int
    data: bytes
    rt: Retransmission
    max_tries: int = 5
    fixed: bool = False


class IkeSa:
    def __init__(self, spi_i: bytes, spi_r: bytes, initiator: bool, state: IkeSaState, now: float) -> None:
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.initiator = initiator  # we are the original initiator (we send the I flag)
        self._state = state
        self.created_at = now
        self.proposal: IkeProposal | None = None
        self.keys: IkeKeys | None = None
        self._out: SkCipher | None = None
        self._in: SkCipher | None = None
        self.ni = b""
        self.nr = b""
        self.dh: DiffieHellman | None = None
        self.init_request = b""
        self.init_response = b""
        self.established_at: float | None = None
        self.rekey_at: float | None = None
        self.expires_at: float | None = None
        # our requests
        self.my_mid = 0
        self.outstanding: Request | None = None
        self.queue: deque[InitiatorExchange] = deque()
        # the peer's requests
        self.peer_mid = 0
        self.last_request: bytes | None = None
        self.last_response: bytes | None = None
        self.last_response_port: int = 0
        # exchanges waiting out a TEMPORARY_FAILURE (queued again by the DEFERRED timer)
        self.deferred: list[InitiatorExchange] = []
        # where NAT detection of its IKE_SA_INIT found NAT (applied once authenticated)
        self.nat = None
        # our IKE SA rekey of this SA, queued or outstanding
        self.rekeying: object | None = None
        # the peer rekeyed this SA while our rekey of it was outstanding: the peer's new SA
        self.collision: IkeSa | None = None
        # the IKE SA that took over its Child SAs (rekey) or its place (duplicate)
        self.replaced_by: IkeSa | None = None

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> IkeSaState:
        return self._state

    def go(self, new: IkeSaState) -> None:
        if new not in IKE_TRANSITIONS[self._state]:
            raise IllegalTransition(f"IKE SA {self.spi_i.hex()}: {self._state.value} -> {new.value}")
        self._state = new

    @property
    def established(self) -> bool:
        return self._state is IkeSaState.ESTABLISHED

    @property
    def usable(self) -> bool:
        """Can carry our requests (established, or rekeyed but not yet deleted)."""
        return self._state in (IkeSaState.ESTABLISHED, IkeSaState.REKEYED)

    @property
    def my_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def peer_spi(self) -> bytes:
        return self.spi_r if self.initiator else self.spi_i

    def name(self) -> str:
        return f"{self.spi_i.hex()}_i {self.spi_r.hex()}_r"

    # ------------------------------------------------------------------ protection

    def set_keys(self, proposal: IkeProposal, keys: IkeKeys, random_bytes: Callable[[int], bytes]) -> None:
        self.proposal = proposal
        self.keys = keys
        ci = SkCipher(proposal.encryption, proposal.integrity, keys.sk_ei, keys.sk_ai, random_bytes)
        cr = SkCipher(proposal.encryption, proposal.integrity, keys.sk_er, keys.sk_ar, random_bytes)
        self._out, self._in = (ci, cr) if self.initiator else (cr, ci)

    @property
    def has_keys(self) -> bool:
        return self._out is not None

    def header(self, exchange: Exchange, mid: int, response: bool) -> Header:
        flags = (Flag.INITIATOR if self.initiator else 0) | (Flag.RESPONSE if response else 0)
        return Header(self.spi_i, self.spi_r, 0, int(exchange), int(flags), mid)

    def protect(self, exchange: Exchange, mid: int, response: bool, payloads: list[Payload]) -> bytes:
        assert self._out is not None
        return self._out.protect(self.header(exchange, mid, response), payloads)

    def unprotect(self, data: bytes, sk) -> list[Payload]:
        assert self._in is not None
        return self._in.unprotect(data, sk)

    def take_mid(self) -> int:
        mid = self.my_mid
        self.my_mid += 1
        return mid


@dataclass(eq=False)
class ChildSa:
    pair: IpsecSaPair
    proposal: EspProposal
    established_at: float
    expires_at: float
    rekey_at: float | None
    initiator: bool  # we started the exchange that made it
    nonces: tuple[bytes, bytes] = field(repr=False, default=(b"", b""))  # (Ni, Nr) of that exchange
    rekeys: "ChildSa | None" = None  # the pair it replaces
    state: ChildSaState = ChildSaState.INSTALLED
    # a CREATE_CHILD_SA of ours rekeying this pair is queued or outstanding
    rekeying: object | None = None
    # the peer rekeyed this pair while our rekey of it was outstanding: the peer's new pair
    collision: "ChildSa | None" = None
    # the IKE SA it belongs to (2.18: rekeying the IKE SA moves it; deleting it deletes the pair)
    ike: "IkeSa | None" = None

    @property
    def spi_in(self) -> int:
        return self.pair.spi_in

    @property
    def spi_out(self) -> int:
        return self.pair.spi_out

    def go(self, new: ChildSaState) -> None:
        if new not in CHILD_TRANSITIONS[self.state]:
            raise IllegalTransition(f"Child SA {self.pair.spi_in:08x}: {self.state.value} -> {new.value}")
        self.state = new

    @property
    def public_state(self) -> ChildState:
        return ChildState.INSTALLED if self.state is ChildSaState.INSTALLED else ChildState.REKEYED

    def min_nonce(self) -> bytes:
        return min(self.nonces)
