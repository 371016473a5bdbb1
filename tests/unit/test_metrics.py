import asyncio
import re

from cgwd.metrics import MetricsServer, render_metrics
from cgwd.status_format import format_status, hints_for_tunnel
from sample_status import NOW, SAMPLE

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_RE = re.compile(rf"^({NAME})(\{{(?:{LABEL})(?:,{LABEL})*\}})? (-?[0-9.eE+-]+|[+-]Inf|NaN)$")


def parse_exposition(text):
    """A strict little parser for format 0.0.4: every line must be HELP, TYPE or a sample."""
    assert text.endswith("\n")
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert re.match(rf"^# HELP {NAME} .+$", line), line
        elif line.startswith("# TYPE "):
            m = re.match(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$", line)
            assert m, line
            assert m.group(1) not in types, f"duplicate TYPE {line}"
            types[m.group(1)] = m.group(2)
        else:
            m = SAMPLE_RE.match(line)
            assert m, f"bad sample line: {line!r}"
            assert m.group(1) in types, f"sample before TYPE: {line}"
            float(m.group(3).replace("Inf", "inf"))
            samples.append((m.group(1), m.group(2) or "", m.group(3)))
    return types, samples


def test_metrics_parse():
    text = render_metrics(SAMPLE)
    types, samples = parse_exposition(text)
    d = {(n, l): v for n, l, v in samples}
    assert d[("cgwd_tunnel_up", '{tunnel="tun1",vpn="vpn-1"}')] == "1"
    assert d[("cgwd_tunnel_up", '{tunnel="tun2",vpn="vpn-1"}')] == "0"
    assert d[("cgwd_ike_state", '{tunnel="tun2",vpn="vpn-1",ike_version="1",state="connecting"}')] == "1"
    assert d[("cgwd_bgp_state", '{tunnel="tun1",vpn="vpn-1",state="established"}')] == "1"
    assert d[("cgwd_ipsec_packets_total", '{tunnel="tun1",vpn="vpn-1",direction="out"}')] == "12"
    assert d[("cgwd_ike_events_total", '{tunnel="tun1",vpn="vpn-1",ike_version="1",event="rekeys"}')] == "2"
    assert d[("cgwd_tunnel_drops_total", '{tunnel="tun1",vpn="vpn-1",reason="replay"}')] == "1"
    assert types["cgwd_ipsec_packets_total"] == "counter" and types["cgwd_bgp_prefixes_received"] == "gauge"
    assert d[("cgwd_routes_installed", '{tunnel="tun1"}')] == "1"


def test_metrics_server():
    async def main():
        srv = MetricsServer("127.0.0.1:0", lambda: SAMPLE)
        await srv.start()
        try:
            async def get(req):
                r, w = await asyncio.open_connection("127.0.0.1", srv.bound_port)
                w.write(req)
                await w.drain()
                data = await r.read()
                w.close()
                return data.decode()
            ok = await get(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith("HTTP/1.0 200") and "version=0.0.4" in ok
            parse_exposition(ok.split("\r\n\r\n", 1)[1])
            assert (await get(b"GET / HTTP/1.1\r\n\r\n")).startswith("HTTP/1.0 404")
            assert (await get(b"POST /metrics HTTP/1.1\r\n\r\n")).startswith("HTTP/1.0 405")
            assert (await get(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")).startswith("HTTP/1.0 431")
        finally:
            await srv.close()

    asyncio.run(main())


def test_status_format_hints():
    out = format_status(SAMPLE)
    assert "Tunnel tun1 (cgw-tun1) of vpn-1: UP" in out
    assert "in c1234567 / out 0badf00d aes128-sha1 UDP-encap" in out
    assert "we are behind NAT" in out and "public 203.0.113.2" in out
    assert "BGP established, 0 prefixes received: check route propagation on the VPC route table / VGW" in out
    assert "IKE not established: no answer from 198.51.100.3 — check UDP 500/4500 reachability and the PSK" in out
    assert "IKE up but no IPsec SA: check ESP proposals/PFS" in out
    assert "vpn-1: only 1 of 2 tunnels up: no redundancy" in out
    assert "10.100.0.0/16" in out and "rekey in 7h30m00s" in out
    assert hints_for_tunnel(SAMPLE["tunnels"][0], NOW)[0].startswith("BGP established, 0 prefixes")


def test_status_format_partial():
    assert "No tunnels configured" in format_status({})
    assert "Tunnel x" in format_status({"tunnels": [{"name": "x"}]})


def test_metrics_drops_rekeys_dpd_bgp_messages_routes():
    import copy
    st = copy.deepcopy(SAMPLE)
    t = st["tunnels"][0]
    t["ipsec"]["drops"] = {"unknown_spi": 2}
    t["ipsec"]["sas"][0]["drops"] = {"bad_padding": 1, "unknown_spi": 1}
    t["ike"]["counters"] = {"rekeys_ipsec": 3, "dpd_sent": 5, "dpd_acked": 4}
    t.setdefault("bgp", {})["messages_in"] = {"KEEPALIVE": 7, "UPDATE": 2}
    st["routes"] = [{"prefix": "10.100.0.0/16", "tunnel": "tun1", "best": True, "installed": True},
                    {"prefix": "10.100.0.0/16", "tunnel": "tun2", "best": False, "installed": False}]
    text = render_metrics(st)
    types, samples = parse_exposition(text)
    d = {(n, l): v for n, l, v in samples}
    L = 'tunnel="tun1",vpn="vpn-1"'
    # data-path and SA drops merged by reason
    assert d[("cgwd_tunnel_drops_total", "{" + L + ',reason="unknown_spi"}')] == "3"
    assert d[("cgwd_tunnel_drops_total", "{" + L + ',reason="bad_padding"}')] == "1"
    assert d[("cgwd_rekeys_total", "{" + L + ',sa="ipsec"}')] == "3"
    assert d[("cgwd_rekeys_total", "{" + L + ',sa="ike"}')] == "0"
    assert d[("cgwd_dpd_total", "{" + L + ',event="sent"}')] == "5"
    assert d[("cgwd_dpd_total", "{" + L + ',event="dead"}')] == "0"
    assert d[("cgwd_bgp_messages_total", "{" + L + ',direction="in",type="keepalive"}')] == "7"
    assert d[("cgwd_routes", '{tunnel="tun1"}')] == d[("cgwd_routes", '{tunnel="tun2"}')] == "1"
    assert d[("cgwd_routes_best", '{tunnel="tun2"}')] == "0" and d[("cgwd_routes_installed", '{tunnel="tun1"}')] == "1"
    assert types["cgwd_dpd_total"] == "counter" and types["cgwd_routes_best"] == "gauge"


def test_supervised_task_crashes_are_metrics():
    from cgwd.metrics import render_metrics

    text = render_metrics({"tasks": {"notify": {"state": "restarting", "crashes": 2, "last_error": "x"},
                                     "routing:vpn-1": {"state": "running", "crashes": 0, "last_error": None}}})
    assert 'cgwd_task_crashes_total{task="notify"} 2' in text
    assert 'cgwd_task_running{task="notify"} 0' in text
    assert 'cgwd_task_running{task="routing:vpn-1"} 1' in text


def test_what_the_box_lacks_is_a_metric():
    from cgwd.metrics import render_metrics

    text = render_metrics({"system": [{"name": "ip_forward_off", "what": "x", "fix": "y"}]})
    assert 'cgwd_system_problem{problem="ip_forward_off"} 1' in text
