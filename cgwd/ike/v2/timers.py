"""What the entries of the IKEv2 engine's one schedule are for.

The schedule is the shared :class:`cgwd.ike.schedule.Schedule`; its entries are keyed by
``(Timer, owner)`` where the owner is the IKE SA or Child SA an entry belongs to (None for
the engine's own timers), so that forgetting an SA cancels its entries at once.
"""

from __future__ import annotations

import enum


class Timer(enum.Enum):
    RETRANSMIT = "retransmit"  # an IKE SA's outstanding request
    HALF_OPEN = "half_open"  # a responder IKE SA that never authenticated
    IKE_REKEY = "ike_rekey"
    IKE_EXPIRE = "ike_expire"
    IKE_FORGET = "ike_forget"  # a replaced IKE SA the peer should delete: we do after a while
    DEFERRED = "deferred"  # requests that waited out a TEMPORARY_FAILURE go into the queue again
    CHILD_REKEY = "child_rekey"
    CHILD_EXPIRE = "child_expire"
    CHILD_REMOVE = "child_remove"  # a replaced pair leaves the data path (or is deleted by us)
    CHILD_RETRY = "child_retry"  # no Child SA: CREATE_CHILD_SA again (owner None)
    LIVENESS = "liveness"  # owner None
    KEEPALIVE = "keepalive"  # NAT-T keepalive (owner None)
    RECONNECT = "reconnect"  # owner None
