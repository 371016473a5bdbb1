"""What the IKEv1 exchanges need of the engine that runs them (the peer implements it).

The exchange modules (:mod:`.main_mode`, :mod:`.quick_mode`, :mod:`.informational`) hold the
protocol: what a message must contain, what to answer, which state follows. The engine holds
what outlives an exchange: the SAs and pairs, the schedule, the tunnel's NAT state, counters,
events. This is the seam between them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..children import ChildTable
    from ..crypto import DiffieHellman
    from ..events import Datagram, IkeEvent
    from ..limits import TokenBucket
    from ..liveness import Liveness
    from ..schedule import Schedule
    from .codec import Payload
    from .config import IkePeerConfig
    from .main_mode import IsakmpSa
    from .quick_mode import QuickMode
    from .timers import Timer

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Host(Protocol):
    config: IkePeerConfig
    name: str
    sched: Schedule
    sas: list[IsakmpSa]
    children: ChildTable
    liveness: Liveness
    dh_budget: TokenBucket
    commit_bit: bool
    pfs_index: int

    # randomness, key pairs, event order (injected: deterministic runs)
    def rand(self, n: int) -> bytes: ...

    def new_dh(self, group: int) -> DiffieHellman: ...

    def next_order(self) -> int: ...

    # bookkeeping
    def count(self, key: str, n: int = 1) -> None: ...

    def error(self, msg: str) -> None: ...

    def emit(self, ev: IkeEvent) -> None: ...

    def current_sa(self) -> IsakmpSa | None: ...

    # sending
    def send(self, data: bytes, sa: IsakmpSa) -> Datagram: ...

    def send_to(self, data: bytes, remote_port: int, local_port: int) -> None: ...

    def send_pending(self, obj: IsakmpSa | QuickMode, action: Timer, msg: bytes, now: float) -> None: ...

    def send_info(self, sa: IsakmpSa, payloads: list[Payload]) -> None: ...

    def new_spi(self) -> int: ...

    def new_mid(self, sa: IsakmpSa) -> int: ...

    # what messages may do
    def check_mid(self, sa: IsakmpSa, mid: int, now: float) -> None: ...

    def make_room(self, which: Callable[[IsakmpSa], bool], limit: int) -> None: ...

    def narrow_ts(self, proposed: IpNetwork, configured: IpNetwork) -> IpNetwork | None: ...

    def authenticated(self, sa: IsakmpSa, remote: tuple[str, int], local_port: int, now: float) -> None: ...

    def initial_contact(self, keep: IsakmpSa) -> None: ...

    def established(self, sa: IsakmpSa, now: float) -> None: ...

    def install(self, sa: IsakmpSa, qm: QuickMode, now: float) -> None: ...

    def drop_qm(self, sa: IsakmpSa, qm: QuickMode) -> None: ...

    def qm_failed(self, sa: IsakmpSa, qm: QuickMode, now: float, reason: str) -> None: ...

    def peer_deleted_isakmp(self, spis: list[bytes], now: float) -> None: ...

    def peer_deleted_esp(self, spis: list[int], now: float) -> None: ...
