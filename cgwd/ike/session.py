"""Compatibility: the IKEv1 engine is :mod:`cgwd.ike.v1` (``IkePeer``, ``IkePeerConfig``).

Kept until every caller imports from there; nothing new goes here.
"""

from .v1.algorithms import EspAlgs, IkeAlgs, parse_esp_proposal, parse_ike_proposal  # noqa: F401
from .v1.config import IkePeerConfig  # noqa: F401
from .v1.main_mode import HALF_OPEN_LIMIT, HALF_OPEN_TIMEOUT, NONCE_LEN, UNVERIFIED_LIMIT  # noqa: F401
from .v1.peer import (  # noqa: F401
    DELETE_DELAY,
    DH_BURST,
    DH_RATE,
    MAX_MIDS_PER_SA,
    PEER_QM_GRACE,
    QM_RETRY_DELAY,
    IkePeer,
)
from ..ipsec_sa import IKE_PORT, NATT_PORT  # noqa: F401
from .natt import KEEPALIVE_INTERVAL  # noqa: F401

__all__ = ["IkePeer", "IkePeerConfig"]
