"""Reload's classification of tunnel settings: every in-place field has a part that applies
it, and every field is in-place or restart (none silently ignored)."""

from __future__ import annotations

import dataclasses

from cgwd.config import TUNNEL_IN_PLACE, TUNNEL_RESTART, TunnelConfig
from cgwd.tunnel import changes


def test_every_tunnel_config_field_is_in_place_or_restart():
    names = {f.name for f in dataclasses.fields(TunnelConfig)}
    assert TUNNEL_IN_PLACE | TUNNEL_RESTART == names and not TUNNEL_IN_PLACE & TUNNEL_RESTART


def test_the_part_groups_partition_the_in_place_fields():
    changes._check_partition()
    union = frozenset().union(*changes.GROUPS)
    assert union == TUNNEL_IN_PLACE


def test_identity_and_crypto_restart():
    for name in ("psk", "remote_address", "local_address", "ike_proposals", "esp_proposals", "ike_version",
                 "inside_cidr", "mtu", "datapath", "routing", "esp_lifetime"):
        assert name in TUNNEL_RESTART, name
