"""cgwd: a customer-gateway daemon for AWS Site-to-Site VPN (IKEv1 + ESP + BGP)."""

__version__ = "0.1.0"
