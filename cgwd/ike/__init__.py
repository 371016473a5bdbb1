"""IKE: what both versions share (the engine seam, events, schedule, DH groups and primitives,
NAT-T state, liveness, retransmission, Child SA bookkeeping, limits on unauthenticated work,
the UDP endpoint that demultiplexes by version), and each version's engine: :mod:`cgwd.ike.v1`
(IKEv1, RFC 2408/2409/3706/3947) and :mod:`cgwd.ike.v2` (IKEv2, RFC 7296)."""

from .endpoint import IkeEndpoint
from .engine import ChildState, IkeEngine
from .events import Datagram, IpsecSaDown, IpsecSaUp, NatDetected, PeerDead, Phase1Down, Phase1Up
from .v1.codec import IkeDecodeError
from .v1.config import IkePeerConfig
from .v1.peer import IkePeer

__all__ = [
    "ChildState",
    "Datagram",
    "IkeDecodeError",
    "IkeEndpoint",
    "IkeEngine",
    "IkePeer",
    "IkePeerConfig",
    "IpsecSaDown",
    "IpsecSaUp",
    "NatDetected",
    "PeerDead",
    "Phase1Down",
    "Phase1Up",
]
