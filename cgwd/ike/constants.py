"""Compatibility: the IKEv1 numbers moved to :mod:`cgwd.ike.v1.constants`."""

from .v1.constants import *  # noqa: F401,F403
from .v1.constants import GROUP_BY_NAME, GROUP_NAMES, NOTIFY_NAMES  # noqa: F401
