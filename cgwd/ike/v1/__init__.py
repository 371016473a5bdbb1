"""IKEv1 (RFC 2408/2409, 3706 DPD, 3947 NAT-T): codec, key material, one module per exchange
(main mode, quick mode, informational) and the peer that composes them."""

from .config import IkePeerConfig
from .peer import IkePeer

__all__ = ["IkePeer", "IkePeerConfig"]
