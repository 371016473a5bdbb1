"""Where cgwd's files are by default (no imports: ``cgwctl health`` runs every second or two
from keepalived and must not pay for loading the protocol engines)."""

DEFAULT_SOCKET = "/run/cgwd/cgwd.sock"
DEFAULT_CONFIG = "/etc/cgwd/cgwd.toml"
