"""Moved to :mod:`cgwd.routing.rib` (nothing in it is BGP); re-exported for old imports."""
from ..routing.rib import NextHop, Rib, RibChanges  # noqa: F401
