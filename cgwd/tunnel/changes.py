"""Which part of a running tunnel applies each setting that reload may change in place.

``cgwd.config`` says which TunnelConfig fields a running tunnel takes in place
(``TUNNEL_IN_PLACE``) and which need it restarted (``TUNNEL_RESTART``), and diffs two configs
(``TunnelConfig.changes``). Here the in-place fields are grouped by the part that applies
them; the groups partition ``TUNNEL_IN_PLACE`` exactly (checked at import and by
``tests/unit/test_tunnel_changes.py``), so a new in-place field without a part that applies it
cannot go unnoticed.
"""

from __future__ import annotations

from ..config import TUNNEL_IN_PLACE

#: the IKE engine, from its next exchange or timer
IKE_IN_PLACE = frozenset({"dpd_interval", "dpd_retries", "dpd_action", "rekey_margin", "rekey_fuzz"})
#: what BGP announces: UPDATEs at once
BGP_IN_PLACE = frozenset({"med", "prepend", "advertise", "advertise_default", "max_advertise"})
#: BGP session parameters: the BGP session restarts, IPsec stays up
BGP_SESSION = frozenset({"local_asn", "remote_asn", "hold_time"})
#: the VPN's routing table (import policy, ECMP, limits, static routes, fail-closed), not the tunnel
VPN_LEVEL = frozenset({"gateway_type", "ecmp", "max_prefix", "max_prefix_action", "import_policy",
                       "static_routes", "health_check", "fail_closed"})
#: the tunnel itself: administrative state
ADMIN = frozenset({"enabled"})
#: nothing to apply (where the PSK was read from)
NOOP = frozenset({"psk_source"})

GROUPS = (IKE_IN_PLACE, BGP_IN_PLACE, BGP_SESSION, VPN_LEVEL, ADMIN, NOOP)


def _check_partition() -> None:
    union: set[str] = set()
    for g in GROUPS:
        if g & union:
            raise AssertionError(f"in-place fields in two groups: {sorted(g & union)}")
        union |= g
    if union != TUNNEL_IN_PLACE:
        raise AssertionError(f"in-place fields without a part: {sorted(TUNNEL_IN_PLACE - union)}; "
                             f"grouped but not in-place: {sorted(union - TUNNEL_IN_PLACE)}")


_check_partition()
