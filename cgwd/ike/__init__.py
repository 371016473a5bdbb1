"""IKEv1 (RFC 2408/2409/3706/3947): sans-IO engine and asyncio UDP endpoint."""

from .codec import IkeDecodeError
from .endpoint import IkeEndpoint
from .events import Datagram, IpsecSaDown, IpsecSaUp, NatDetected, PeerDead, Phase1Down, Phase1Up
from .session import IkePeer, IkePeerConfig

__all__ = [
    "Datagram",
    "IkeDecodeError",
    "IkeEndpoint",
    "IkePeer",
    "IkePeerConfig",
    "IpsecSaDown",
    "IpsecSaUp",
    "NatDetected",
    "PeerDead",
    "Phase1Down",
    "Phase1Up",
]
