"""The lab itself: strongSwan + BIRD playing AWS, with the reference stack as the customer.

These tests judge the harness every other interop test stands on: both tunnels up, BGP
established on both, the VPC prefix in the customer's kernel, traffic crossing, and nothing
left behind afterwards.
"""

import re

import pytest

from cgwd.lab.netns import wait_for
from cgwd.lab.strongswan import list_sas_parsed
from cgwd.lab.topology import AwsTunnelSpec, leftovers

pytestmark = pytest.mark.interop


def _wait_reference(lab, timeout=60):
    wait_for(lambda: all(lab.aws_bgp_established(t.index) for t in lab.tunnels)
             and lab.spec.vpc_cidr in lab.cgw_routes(), timeout, what="reference stack established")


@pytest.mark.parametrize("nat", [False, True], ids=["direct", "behind-nat"])
def test_reference_stack_carries_traffic(lab_factory, nat):
    lab = lab_factory(nat=nat)
    lab.start_reference()
    _wait_reference(lab)
    sas = list_sas_parsed(lab.ref_charon.list_sas())
    assert sorted(sa["name"] for sa in sas if sa["state"] == "ESTABLISHED") == ["tun1", "tun2"]
    for sa in sas:
        assert [c["state"] for c in sa["children"]] == ["INSTALLED"]
        # libipsec always encapsulates; behind NAT the outer source is the private address.
        assert "TUNNEL-in-UDP" in "\n".join(sa["children"][0]["lines"])
    local = re.search(r"local\s+'[^']+' @ (\S+)\[", lab.ref_charon.list_sas()).group(1)
    assert local == (lab.spec.cgw_private if nat else lab.spec.cgw_public)
    assert re.search(r"10\.100\.0\.0/16 via 169\.254\.10\.1", lab.cgw_routes())
    lab.wait_ping(20)  # the VPC side learns its return route over iBGP a moment later
    assert lab.ping(3)
    # The VPC routes on-prem traffic back through the tunnel BGP prefers.
    assert lab.vpc_route_to_onprem() in ("aws1", "aws2")


def test_aws_side_prepend_moves_vpc_route(lab_factory):
    lab = lab_factory(aws=[AwsTunnelSpec(as_path_prepend=2), AwsTunnelSpec()])
    lab.start_reference()
    _wait_reference(lab)
    # Tunnel 1's endpoint prepends twice, so the customer prefers tunnel 2's path.
    wait_for(lambda: "169.254.20.1" in lab.cgw_routes(), 20, what="VPC route via tunnel 2")


def test_aws_xml_describes_the_lab(lab_factory):
    lab = lab_factory(up=False, tunnels=2)
    xml = lab.aws_xml()
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    assert root.tag == "vpn_connection" and root.get("id") == lab.spec.vpn_id
    tunnels = root.findall("ipsec_tunnel")
    assert len(tunnels) == 2
    for t, xt in zip(lab.tunnels, tunnels):
        assert xt.findtext("vpn_gateway/tunnel_outside_address/ip_address") == t.aws_outside
        assert xt.findtext("customer_gateway/tunnel_inside_address/ip_address") == t.cgw_inside
        assert xt.findtext("vpn_gateway/bgp/asn") == "64512"
        assert xt.findtext("ike/pre_shared_key") == t.psk
        assert xt.findtext("ipsec/dead_peer_detection/delay") == "10"


def test_teardown_leaves_nothing_even_after_failure(lab_factory):
    lab = lab_factory(tunnels=1)
    prefix = lab.spec.prefix
    assert leftovers(prefix), "a running lab must be visible to leftovers()"
    try:
        raise RuntimeError("a test failing half-way")
    except RuntimeError:
        lab.down()
    assert leftovers(prefix) == []
