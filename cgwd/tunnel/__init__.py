"""A tunnel and its parts (IKE engine, data path, route source), each with one life cycle."""

from .tunnel import Tunnel, TunnelEvent

__all__ = ["Tunnel", "TunnelEvent"]
