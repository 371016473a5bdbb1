"""Status and metrics of static VPN connections: the routing mode, every static route with the
tunnel carrying it (and why none does), the tunnels' static state, BGP disabled (not down)."""
from __future__ import annotations

import asyncio

from cgwd.config import parse_config
from cgwd.metrics import render_metrics
from cgwd.routing.static import route_report
from cgwd.routing.table import RoutingSettings, RoutingTable
from cgwd.status import vpn_status
from cgwd.status_format import format_status, hints_for_tunnel
from cgwd.tunnel.static_part import StaticPart
from test_metrics import parse_exposition
from test_routing_static import VPC, VPC2, FakeProber
from test_routing_table import STATIC

VPN = "vpn-0123456789abcdef0"
NOW = 1_800_000_000.0            # the snapshots' wall clock: every time the loop gave maps to it


def _tunnel(part: StaticPart, *, ike="established", installed=True, enabled=True) -> dict:
    """A tunnel's status as Tunnel.status builds it (the parts that matter here)."""
    return {"name": part.name, "vpn": VPN, "ifname": part.cfg.ifname, "enabled": enabled,
            "outside": {"local": "203.0.113.2", "remote": str(part.cfg.remote_address)},
            "ike": {"state": ike, "version": 1},
            "ipsec": {"state": "installed" if installed else "none",
                      "sas": [{"spi_in": "c0000001", "spi_out": "c0000002"}] if installed else []},
            "dpd": {"interval": 10, "retries": 3},
            "bgp": part.status(), "static": part.static_status(lambda t: t and NOW)}


def _scenario():
    """Two static tunnels: both up (tun1 carries), then tun1's peer dead, then both down."""
    text = STATIC.replace("ecmp = true\n", "").replace('static_primary = "tun2"\n', "")
    cfg = parse_config(text.replace("health_check = 5\n", "health_check = 1\n"))
    vpn = cfg.vpns[0]
    rt = RoutingTable(RoutingSettings.from_config(cfg, vpn), threaded=False)
    snaps = {}

    async def main():
        parts = [StaticPart(t, rt, i, prober=FakeProber) for i, t in enumerate(vpn.tunnels)]
        for i, (t, p) in enumerate(zip(vpn.tunnels, parts)):
            rt.tunnel_up(t.name, t.ifname, str(t.inside_remote), i)
            await p.start()
        await asyncio.sleep(0.05)
        tunnels = [_tunnel(p) for p in parts]
        snaps["both"] = tunnels, vpn_status(VPN, rt, tunnels)
        rt.tunnel_down("tun1")
        await parts[0].stop("DPD: peer dead")
        tunnels = [_tunnel(parts[0], ike="connecting", installed=False), _tunnel(parts[1])]
        snaps["one"] = tunnels, vpn_status(VPN, rt, tunnels)
        rt.tunnel_down("tun2")
        await parts[1].stop("last IPsec SA deleted (deleted by peer)")
        tunnels = [_tunnel(parts[0], ike="connecting", installed=False),
                   _tunnel(parts[1], ike="idle", installed=False, enabled=False)]
        snaps["none"] = tunnels, vpn_status(VPN, rt, tunnels)
        for p in parts:
            await p.close("test over")

    asyncio.run(main())
    return snaps


SNAPS = _scenario()


def _status(key: str) -> dict:
    tunnels, v = SNAPS[key]
    routes = [{"prefix": p, "tunnel": nh, "nexthop": "-", "installed": True, "best": True}
              for p, nhs in (v.get("carriers") or {}).items() for nh in nhs]
    return {"version": "0.1.0", "pid": 1, "started_at": NOW - 60, "now": NOW,
            "tunnels": tunnels, "vpns": [v], "routes": routes}


def test_vpn_status_names_the_carrier_of_each_static_route_and_why_none_does():
    _, v = SNAPS["both"]
    assert v["routing"] == "static"
    assert v["static"] == [{"prefix": VPC, "tunnels": ["tun1"], "backups": ["tun2"], "reason": None},
                           {"prefix": VPC2, "tunnels": ["tun1"], "backups": ["tun2"], "reason": None}]
    _, v = SNAPS["one"]
    assert [r["tunnels"] for r in v["static"]] == [["tun2"], ["tun2"]] and v["static"][0]["backups"] == []
    _, v = SNAPS["none"]
    (r, _r2) = v["static"]
    assert r["tunnels"] == [] and r["backups"] == []
    assert r["reason"] == "tun1 down: DPD: peer dead; tun2 disabled (enabled = false or `cgwctl down`)"
    assert v["unreachable"] == [VPC, VPC2]


def test_route_report_of_tunnels_that_never_came_up_and_of_a_selected_route_missing():
    never = {"name": "t1", "enabled": True, "ike": {"state": "connecting"},
             "static": {"state": "down", "reason": "not started", "routes": []}}
    offering = {"name": "t2", "enabled": True, "static": {"state": "up", "reason": "tunnel up", "routes": [VPC]}}
    (r,) = route_report({VPC: []}, [never, offering])
    assert r["reason"].startswith("t1 has no IPsec SA yet (IKE connecting); t2 offers 10.100.0.0/16 but the routing")
    assert r["backups"] == ["t2"]
    assert route_report({VPC: []}, [])[0]["reason"] == "no tunnels"


def test_status_screen_lists_static_routes_with_their_carrier_and_bgp_as_disabled():
    text = format_status(_status("both"))
    assert f"Static routes of {VPN} (primary tun1, hold-down 45s, health check every 1s):" in text
    assert "  10.100.0.0/16        via tun1; backup tun2" in text
    assert 'BGP         disabled (routing = "static")' in text and "BGP         Idle" not in text
    assert "routing     static, up: tunnel up: primary; health check every 1s, last reply 0s ago (rtt" in text
    text = format_status(_status("none"))
    assert ("  10.100.0.0/16        ! no tunnel carries it, unreachable (fail closed): tun1 down: DPD: peer dead; "
            "tun2 disabled") in text
    t1 = _status("none")["tunnels"][0]
    assert "static routes not carried: DPD: peer dead" in hints_for_tunnel(t1)


def test_metrics_of_static_routes_and_tunnels():
    types, samples = parse_exposition(render_metrics(_status("one")))
    d = {(n, lbl): v for n, lbl, v in samples}
    L = '{tunnel="tun1",vpn="' + VPN + '"'
    assert d[("cgwd_vpn_routing_info", '{vpn="' + VPN + '",routing="static"}')] == "1"
    assert d[("cgwd_static_route_carriers", '{vpn="' + VPN + '",prefix="10.100.0.0/16"}')] == "1"
    assert d[("cgwd_static_route_carried", '{vpn="' + VPN + '",prefix="10.100.0.0/16",tunnel="tun2"}')] == "1"
    assert d[("cgwd_static_route_carried", '{vpn="' + VPN + '",prefix="10.100.0.0/16",tunnel="tun1"}')] == "0"
    assert d[("cgwd_static_state", L + ',state="down"}')] == "1"
    assert d[("cgwd_static_state", L + ',state="up"}')] == "0"
    assert d[("cgwd_static_events_total", L + ',event="downs"}')] == "1"
    assert int(d[("cgwd_static_events_total", L + ',event="probes_sent"}')]) >= 1
    assert types["cgwd_static_events_total"] == "counter"
    # BGP: disabled, and no BGP series that would read as a session down
    bgp = {(n, lbl): v for (n, lbl), v in d.items() if n.startswith("cgwd_bgp_")}
    assert bgp == {("cgwd_bgp_state", L + ',state="disabled"}'): "1",
                   ("cgwd_bgp_state", '{tunnel="tun2",vpn="' + VPN + '",state="disabled"}'): "1"}
    types, samples = parse_exposition(render_metrics(_status("none")))
    d = {(n, lbl): v for n, lbl, v in samples}
    assert d[("cgwd_static_route_carriers", '{vpn="' + VPN + '",prefix="10.101.0.0/16"}')] == "0"
    assert d[("cgwd_vpn_unreachable_prefixes", '{vpn="' + VPN + '"}')] == "2"


def test_the_one_line_summary_counts_tunnels_carrying_static_routes():
    from types import SimpleNamespace

    from cgwd.status import summary

    text = STATIC.replace("ecmp = true\n", "")
    cfg = parse_config(text)
    vpn = cfg.vpns[0]
    rt = RoutingTable(RoutingSettings.from_config(cfg, vpn), threaded=False)

    async def main():
        parts = [StaticPart(t, rt, i, prober=FakeProber) for i, t in enumerate(vpn.tunnels)]
        rt.tunnel_up("tun1", "cgw-tun1", "169.254.10.1", 0)
        await parts[0].start()
        tunnels = {p.name: SimpleNamespace(routes=p, summary_up=lambda p=p: (p.carrying, False)) for p in parts}
        d = SimpleNamespace(tunnels=tunnels, routing={"v": rt})
        line = summary(d)
        for p in parts:
            await p.close("test over")
        return line

    assert asyncio.run(main()) == "1/2 tunnels up, 0 BGP established, 1 carrying static routes, 2 routes"
