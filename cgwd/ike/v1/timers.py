"""What an IKEv1 engine's one schedule holds: the actions, each with its owner."""

from __future__ import annotations

import enum


class Timer(enum.Enum):
    """(owner in brackets)"""

    P1_RETRANSMIT = "main mode retransmit"  # [ISAKMP SA]
    P1_HALF_OPEN = "main mode half-open timeout"  # [ISAKMP SA, responder]
    P1_REKEY = "ISAKMP SA re-authentication"  # [ISAKMP SA]
    P1_EXPIRE = "ISAKMP SA expiry"  # [ISAKMP SA]
    P1_SUPERSEDED = "superseded ISAKMP SA delete"  # [ISAKMP SA]
    QM_RETRANSMIT = "quick mode retransmit"  # [quick mode]
    QM_CONNECTED = "quick mode CONNECTED timeout"  # [quick mode, initiator]
    QM_HALF_OPEN = "quick mode half-open timeout"  # [quick mode, responder]
    CHILD_REKEY = "IPsec SA rekey"  # [child]
    CHILD_DELETE = "rekeyed IPsec SA delete"  # [child]
    CHILD_EXPIRE = "IPsec SA expiry"  # [child]
    RECONNECT = "reconnect"  # [peer]
    CHILD_RETRY = "quick mode retry"  # [peer]
    DPD = "dead peer detection"  # [peer]
    KEEPALIVE = "NAT keepalive"  # [peer]
