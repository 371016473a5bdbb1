"""IKEv2 (RFC 7296) with pre-shared keys: codec, key material, one module per exchange, and
the engine :class:`~cgwd.ike.v2.peer.Ikev2Peer` (a :class:`cgwd.ike.engine.IkeEngine`)."""

from .peer import Ikev2Peer, Ikev2PeerConfig

__all__ = ["Ikev2Peer", "Ikev2PeerConfig"]
