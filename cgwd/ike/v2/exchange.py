"""What every IKEv2 exchange module shares: the initiator-step base class, the responder
signature, the counted-drop exception and the seam to the engine (:class:`Context`).

Each exchange is one module with role-fixed steps, as strongSwan's ``sa/ikev2/tasks/``:
an initiator object builds its request when the window lets it go out (``request``: None
when the work became pointless while it waited) and handles the one response
(``on_response``) or the give-up after the last retransmission (``on_timeout``); the
responder side is a function from the request's payloads to the response's payloads. The
engine (:class:`cgwd.ike.v2.peer.Ikev2Peer`) owns windows, message IDs, protection,
retransmission and the schedule; exchanges reach it only through :class:`Context`.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .codec import Header, IdPayload, NotifyPayload, Payload, TrafficSelector
from .constants import ERROR_NOTIFY_MAX, NOTIFY_NAMES, Exchange

if TYPE_CHECKING:
    from .keys import ChildKeys
    from .proposals import EspProposal
    from .sa import ChildSa, IkeSa


class Drop(Exception):
    """Drop the message being processed, counted as ``drop_<reason>``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Received:
    """One authenticated (or, for IKE_SA_INIT, plain) message as the exchanges see it."""

    hdr: Header
    payloads: list[Payload]
    raw: bytes
    remote: tuple[str, int]
    local_port: int


class Step(enum.Enum):
    """Steps of an initiator exchange."""

    QUEUED = "queued"
    SENT = "sent"
    DONE = "done"
    FAILED = "failed"
    OBSOLETE = "obsolete"


STEP_TRANSITIONS = {
    Step.QUEUED: frozenset({Step.SENT, Step.OBSOLETE}),
    Step.SENT: frozenset({Step.DONE, Step.FAILED}),
    Step.DONE: frozenset(),
    Step.FAILED: frozenset(),
    Step.OBSOLETE: frozenset(),
}


class InitiatorExchange:
    """One request/response exchange we start on an IKE SA."""

    exchange: Exchange = Exchange.INFORMATIONAL
    what = "exchange"

    def __init__(self, ctx: "Context", sa: "IkeSa") -> None:
        self.ctx = ctx
        self.sa = sa
        self.step = Step.QUEUED

    def go(self, new: Step) -> None:
        if new not in STEP_TRANSITIONS[self.step]:
            raise RuntimeError(f"{self.what}: {self.step.value} -> {new.value}")
        self.step = new

    def request(self, now: float) -> list[Payload] | None:
        raise NotImplementedError

    def on_response(self, msg: Received, now: float) -> None:
        raise NotImplementedError

    def on_timeout(self, now: float) -> None:
        """The peer never answered (all retransmissions spent)."""
        self.ctx.peer_unresponsive(self.sa, f"no answer to {self.what}", now)

    def retransmission(self) -> tuple[float, int]:
        """(first interval, retransmissions before giving up) for this request."""
        return self.ctx.config.retransmit_timeout, self.ctx.config.retransmit_tries


def error_notify(payloads: list[Payload]) -> NotifyPayload | None:
    """The first error notification (type < 16384) of a message."""
    for p in payloads:
        if isinstance(p, NotifyPayload) and p.notify_type <= ERROR_NOTIFY_MAX:
            return p
    return None


def notify_name(t: int) -> str:
    return NOTIFY_NAMES.get(t, str(t))


class Context(Protocol):
    """What an exchange may use of the engine (:class:`cgwd.ike.v2.peer.Ikev2Peer`)."""

    config: Any

    # randomness, counters, errors
    def rand(self, n: int) -> bytes: ...

    def rand_fn(self) -> Callable[[int], bytes]: ...

    def count(self, key: str, n: int = 1) -> None: ...

    def error(self, msg: str) -> None: ...

    # the window
    def queue(self, sa: "IkeSa", ex: InitiatorExchange, front: bool = False) -> None: ...

    def defer(self, sa: "IkeSa", ex: InitiatorExchange, now: float) -> None: ...

    # identities, keys, NAT, selectors
    def new_ike_spi(self) -> bytes: ...

    def new_child_spi(self) -> int: ...

    def psk(self) -> bytes: ...

    def my_id(self) -> IdPayload: ...

    def check_peer_id(self, idp: IdPayload) -> None: ...

    def initial_contact_due(self) -> bool: ...

    def initial_contact_sent(self) -> None: ...

    def initial_contact_received(self, keep: "IkeSa", now: float) -> None: ...

    def nat_notifies(self, spi_i: bytes, spi_r: bytes, path: tuple[int, tuple[str, int]] | None = None
                     ) -> list[NotifyPayload]: ...

    def detect_nat(self, sa: "IkeSa", spi_r: bytes, payloads: list[Payload], remote: tuple[str, int],
                   local_port: int) -> None: ...

    def adopt_path(self, remote: tuple[str, int], local_port: int) -> None: ...

    def ts_offer(self) -> tuple[list[TrafficSelector], list[TrafficSelector]]: ...

    def narrow(self, tsi: list[TrafficSelector], tsr: list[TrafficSelector], initiator: bool
               ) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Network] | None: ...

    # Child SAs
    def children(self) -> list["ChildSa"]: ...

    def child_by_spi_out(self, spi: int) -> "ChildSa | None": ...

    def install_child(self, sa: "IkeSa", proposal: "EspProposal", spi_in: int, spi_out: int, keys: "ChildKeys",
                      nets: tuple[ipaddress.IPv4Network, ipaddress.IPv4Network], initiator: bool,
                      nonces: tuple[bytes, bytes], rekeys: "ChildSa | None", now: float) -> "ChildSa": ...

    def child_failed(self, reason: str, now: float, rekeys: "ChildSa | None" = None) -> None: ...

    def rekey_abandoned(self, old: "ChildSa", now: float) -> None: ...

    def resolve_duplicate(self, ours: "ChildSa", theirs: "ChildSa", now: float) -> None: ...

    def child_deleted(self, c: "ChildSa", reason: str, now: float) -> None: ...

    def remove_child(self, child: "ChildSa", reason: str, now: float) -> None: ...

    # IKE SAs
    def ike_established(self, sa: "IkeSa", now: float) -> None: ...

    def ike_failed(self, sa: "IkeSa", reason: str, now: float) -> None: ...

    def ike_rekeyed(self, old: "IkeSa", new: "IkeSa", we_started: bool, now: float) -> None: ...

    def ike_rekey_failed(self, sa: "IkeSa", reason: str, now: float) -> None: ...

    def remove_ike_sa(self, sa: "IkeSa", reason: str, now: float) -> None: ...

    def peer_unresponsive(self, sa: "IkeSa", reason: str, now: float) -> None: ...

    def liveness_answered(self, now: float) -> None: ...
