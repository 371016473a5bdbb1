"""An IPv6 VPN connection's tunnel parts, wired from its config as the daemon does: IKE asks
for ::/0 selectors (both versions), BGP runs an IPv6-only session over the /126 (with a BGP
Identifier even when the gateway has only IPv6 outside addresses), the routing table refuses
the inside /126s, the export policy's default route is ::/0."""
import pytest

from cgwd.bgp.policy import ExportPolicy
from cgwd.config import parse_config
from cgwd.routing.table import RoutingSettings, RoutingTable
from cgwd.tunnel.bgp_part import peer_config
from cgwd.tunnel.ike_part import engine_config, engine_config_v2, make_engine
from unit_config import BASE

IPV6_VPN = (BASE.replace('advertise = ["10.200.0.0/24"]', 'advertise = ["2001:db8:200::/64"]\ngateway_type = "tgw"')
            .replace('"169.254.10.0/30"', '"fd00:0:0:10::/126"').replace('"169.254.11.0/30"', '"fd00:0:0:20::/126"'))
OUTER6 = (IPV6_VPN.replace('"203.0.113.2"', '"2001:db8:203::2"').replace('"198.51.100.2"', '"2001:db8:51:1::2"')
          .replace('"198.51.100.3"', '"2001:db8:51:2::2"'))


@pytest.mark.parametrize("text", [IPV6_VPN, OUTER6], ids=["outside-ipv4", "outside-ipv6"])
def test_an_ipv6_vpn_tunnel_is_wired_for_ipv6(text):
    cfg = parse_config(text)
    t = cfg.vpns[0].tunnels[0]
    assert t.inner_family == 6
    for ec in (engine_config(t), engine_config_v2(t)):
        assert str(ec.local_ts_net) == str(ec.remote_ts_net) == "::/0"
    eng = make_engine(t)
    assert str(eng.config.local_ts_net) == "::/0"
    pc = peer_config(t)
    assert (pc.local_address, pc.remote_address) == ("fd00:0:0:10::2", "fd00:0:0:10::1")
    assert pc.families == {(2, 1)} and not pc.ipv4
    if t.public_address.version == 4:
        assert pc.router_id == "203.0.113.2"
    else:
        assert pc.router_id.count(".") == 3 and pc.router_id == peer_config(cfg.vpns[0].tunnels[1]).router_id
    exp = ExportPolicy.from_tunnel(t)
    assert exp.family == 6 and exp.limit == 1000
    assert [r.prefix for r in ExportPolicy(exp.prefixes, True, family=exp.family).routes(65000)] == [
        "2001:db8:200::/64", "::/0"]
    rt = RoutingTable(RoutingSettings.from_config(cfg, cfg.vpns[0]), threaded=False)
    pol = rt.import_policy
    assert pol.accepts("2001:db8:100::/56")
    for refused in ("fd00:0:0:10::/126", "fd00:0:0:20::/127", "::/0", "2001:db8:200::/64"):
        assert not pol.accepts(refused), refused


def test_an_ipv4_vpn_keeps_ipv4_selectors_and_session():
    cfg = parse_config(BASE)
    t = cfg.vpns[0].tunnels[0]
    assert str(engine_config(t).local_ts_net) == "0.0.0.0/0"
    assert str(engine_config_v2(t).remote_ts_net) == "0.0.0.0/0"
    pc = peer_config(t)
    assert pc.families == {(1, 1)} and pc.router_id == "203.0.113.2"
    assert [r.prefix for r in ExportPolicy(("10.200.0.0/24",), True).routes(65000)][-1] == "0.0.0.0/0"


def test_status_screen_and_metrics_show_ipv6_like_ipv4():
    """Long IPv6 prefixes and next hops keep the route table's columns; the BGP line names
    the family an IPv6 session carries; the metrics name each tunnel's families."""
    import copy

    from cgwd.metrics import render_metrics
    from cgwd.status_format import format_status
    from sample_status import SAMPLE
    from test_metrics import parse_exposition

    st = copy.deepcopy(SAMPLE)
    t = st["tunnels"][0]
    t.update(inner_family=6, outer_family=6)
    t["outside"].update(local="2001:db8:203::2", public="2001:db8:203::2", remote="2001:db8:51:1::2")
    t["bgp"].update(local="fd00:abcd:1234:10::2", peer="fd00:abcd:1234:10::1", families=["ipv6/unicast"])
    st["routes"] = [
        {"prefix": "2001:db8:1234:5678::/64", "tunnel": "tun1", "nexthop": "fd00:abcd:1234:10::1",
         "as_path": [64512], "med": 7, "installed": True, "best": True},
        {"prefix": "10.100.0.0/16", "tunnel": "tun2", "nexthop": "169.254.11.1", "as_path": [64512],
         "med": None, "installed": True, "best": True}]
    text = format_status(st)
    assert "2001:db8:203::2 -> 2001:db8:51:1::2" in text
    assert "fd00:abcd:1234:10::2 AS65000 -> fd00:abcd:1234:10::1 AS64512" in text
    assert "IPv6 unicast; hold 30s" in text
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.strip().startswith("prefix"))
    rows = lines[head + 1:head + 3]
    col = lines[head].index("tunnel"), lines[head].index("next hop"), lines[head].index("AS path")
    for row, (tun, nh) in zip(rows, (("tun1", "fd00:abcd:1234:10::1"), ("tun2", "169.254.11.1"))):
        assert row[col[0]:].startswith(tun) and row[col[1]:].startswith(nh)
        assert row[col[2]:].startswith("64512")
    _types, samples = parse_exposition(render_metrics(st))
    info = {lab: v for n, lab, v in samples if n == "cgwd_tunnel_info"}
    assert info == {'{tunnel="tun1",vpn="vpn-1",inner_family="ipv6",outer_family="ipv6"}': "1"}
