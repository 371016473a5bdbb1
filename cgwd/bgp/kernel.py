"""Moved to :mod:`cgwd.routing.kernel` (nothing in it is BGP); re-exported for old imports."""
from ..routing.kernel import (BATCH_MIN, BATCH_MSGS, DEFAULT_METRIC, DEFAULT_TABLE, RTPROT_CGWD,  # noqa: F401
                              KernelRoutes)
