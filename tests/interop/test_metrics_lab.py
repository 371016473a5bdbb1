"""Prometheus metrics scraped from a running cgwd in the lab (daemon.metrics_listen).

The scrape is an HTTP GET from inside the customer gateway's namespace, parsed with a strict
parser of the text exposition format 0.0.4. While the tunnels carry traffic it must show the
tunnel, IKE, SA and BGP state, packet and byte counters that rise with a ping, drop counters
by reason for packets the test forges (unknown SPI, failed integrity check, ESP from a
stranger), DPD exchanges, a rekey, prefix counts; and no pre-shared key anywhere.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys

import pytest

from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import run, wait_for

pytestmark = pytest.mark.interop

PORT = 9474
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
SAMPLE = re.compile(rf'^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? (\S+)(?: (-?\d+))?$')


def parse_exposition(text: str) -> dict:
    """Strict parser of the text format 0.0.4; returns {(name, frozenset(labels)): value}.

    Every line is a HELP, a TYPE or a sample; TYPE comes once per family, before its
    samples; a family's samples are contiguous; no sample repeats; counters are finite and
    never negative; values parse as Prometheus floats.
    """
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict = {}
    closed: set[str] = set()
    current = None
    for line in text.split("\n")[:-1]:
        assert line == line.strip() and line, f"blank or padded line: {line!r}"
        if line.startswith("#"):
            m = re.fullmatch(rf"# (HELP|TYPE) ({NAME}) (.*)", line)
            assert m, f"bad comment line: {line!r}"
            kind, name, rest = m.groups()
            if kind == "HELP":
                assert name not in helps, f"second HELP for {name}"
                helps.add(name)
            else:
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert name not in types, f"second TYPE for {name}"
                assert name not in closed, f"TYPE after samples of {name}"
                types[name] = rest
            continue
        m = SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name = m.group(1)
        body = line[len(name):]  # optional {labels}, then " value" and an optional " timestamp"
        labels_text = ""
        if body.startswith("{"):
            end = _label_end(body)
            labels_text, body = body[1:end], body[end + 1:]
        parts = body.split(" ")
        assert parts[0] == "" and len(parts) in (2, 3), f"bad value part: {line!r}"
        value = parts[1]
        labels = re.findall(LABEL, labels_text)
        assert ",".join(f'{k}="{v}"' for k, v in labels) == labels_text, f"bad label set: {line!r}"
        assert len({k for k, _ in labels}) == len(labels), f"repeated label: {line!r}"
        assert name in types, f"sample before its TYPE: {line!r}"
        if current != name:
            assert name not in closed, f"samples of {name} are not contiguous"
            if current:
                closed.add(current)
            current = name
        v = float(value.replace("Inf", "inf"))
        if types[name] == "counter":
            assert name.endswith("_total"), f"counter without _total: {name}"
            assert math.isfinite(v) and v >= 0, f"bad counter value: {line!r}"
        key = (name, frozenset(labels))
        assert key not in samples, f"duplicate sample: {line!r}"
        samples[key] = v
    return {"types": types, "samples": samples}


def _label_end(body: str) -> int:
    i, quoted = 1, False
    while i < len(body):
        c = body[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "}" and not quoted:
            return i
        i += 1
    raise AssertionError(f"unterminated label set: {body!r}")


def get(parsed: dict, name: str, **labels) -> float | None:
    want = set(labels.items())
    hits = [v for (n, ls), v in parsed["samples"].items() if n == name and want <= set(ls)]
    return sum(hits) if hits else None


SCRAPE = f"""
import sys, urllib.request
r = urllib.request.urlopen("http://127.0.0.1:{PORT}/metrics", timeout=10)
sys.stdout.write(str(r.status) + "\\n" + r.headers["Content-Type"] + "\\n" + r.read().decode("utf-8"))
"""


def scrape(lab) -> tuple[dict, str]:
    p = lab.cgw.run([sys.executable, "-c", SCRAPE], check=False, timeout=30)
    assert p.returncode == 0, p.stderr
    status, ctype, body = p.stdout.split("\n", 2)
    assert status == "200" and ctype == "text/plain; version=0.0.4; charset=utf-8", (status, ctype)
    for t in lab.tunnels:
        for form in (t.psk, t.psk.encode().hex(), t.psk.encode().hex().upper()):
            assert form not in body, "a pre-shared key appears in the metrics"
    return parse_exposition(body), body


SEND = """
import socket, sys
src, dst, hexdata, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for _ in range(n):
    s.sendto(bytes.fromhex(hexdata), (dst, 4500))
"""


def send_udp4500(ns, src: str, dst: str, data: bytes, n: int) -> None:
    ns.run([sys.executable, "-c", SEND, src, dst, data.hex(), str(n)], timeout=30)


def test_metrics_scraped_from_running_daemon(lab_factory):
    lab = lab_factory(tunnels=2)
    config = import_config(lab)
    text = open(config).read()
    assert "[daemon]\n" in text
    text = text.replace("[daemon]\n", f'[daemon]\nmetrics_listen = "127.0.0.1:{PORT}"\n', 1)
    # DPD every 2 s instead of AWS's 10 s so exchanges show up quickly; same mechanism.
    text = re.sub(r"dpd_interval = \d+", "dpd_interval = 2", text)
    assert text.count("dpd_interval = 2") == 2
    open(config, "w").write(text)
    proc = start_cgwd(lab, config)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 60, interval=0.5, what="cgwd tunnels + BGP")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    names = [t["name"] for t in cgwctl_status(lab, as_json=True)["tunnels"]]
    lab.wait_ping(30)

    m, body = scrape(lab)
    assert get(m, "cgwd_info", datapath="userspace") == 1
    for n in names:
        assert get(m, "cgwd_tunnel_up", tunnel=n) == 1
        assert get(m, "cgwd_tunnel_enabled", tunnel=n) == 1
        assert get(m, "cgwd_ike_state", tunnel=n, state="established") == 1
        assert get(m, "cgwd_ike_state", tunnel=n) == 1, "exactly one IKE state is current"
        assert get(m, "cgwd_ipsec_sa_installed", tunnel=n) >= 1
        assert get(m, "cgwd_bgp_state", tunnel=n, state="established") == 1
        assert get(m, "cgwd_bgp_state", tunnel=n) == 1, "exactly one BGP state is current"
        assert get(m, "cgwd_bgp_prefixes_received", tunnel=n) == 1
        assert get(m, "cgwd_bgp_prefixes_advertised", tunnel=n) == 1
        assert get(m, "cgwd_bgp_hold_time_seconds", tunnel=n) == 30
        assert get(m, "cgwd_tunnel_nat_udp_encap", tunnel=n) == 1  # libipsec always encapsulates
        assert get(m, "cgwd_bgp_messages_total", tunnel=n, direction="in") > 0
    # One VPC prefix learned over both tunnels: two paths, one best, installed once.
    assert [get(m, "cgwd_routes", tunnel=n) for n in names] == [1, 1]
    assert get(m, "cgwd_routes_best") == 1 and get(m, "cgwd_routes_installed") == 1
    assert m["types"]["cgwd_ipsec_packets_total"] == "counter" and m["types"]["cgwd_tunnel_up"] == "gauge"

    # Counters rise with traffic: 10 pings each way through whichever tunnel carries them.
    before = {k: get(m, f"cgwd_ipsec_{k[0]}_total", direction=k[1]) for k in
              (("packets", "in"), ("packets", "out"), ("bytes", "in"), ("bytes", "out"))}
    assert lab.ping(10)
    m, _ = scrape(lab)
    after = {k: get(m, f"cgwd_ipsec_{k[0]}_total", direction=k[1]) for k in before}
    for (kind, d), v in after.items():
        assert v - before[(kind, d)] >= (10 if kind == "packets" else 10 * 84), (kind, d, before, after)

    # Drops by reason, from packets forged here: ESP with an SPI cgwd never gave out and ESP
    # with a real SPI but a wrong ICV, both from AWS endpoint 1's address, and ESP from an
    # address that is no tunnel's peer.
    t1 = lab.tunnels[0]
    spi_in = cgwctl_status(lab, as_json=True)["tunnels"][0]["ipsec"]["sas"][0]["spi_in"]
    base_auth = get(m, "cgwd_ipsec_auth_failures_total", tunnel=names[0])
    send_udp4500(t1.ns, t1.aws_outside, lab.spec.cgw_public, b"\x7e\xad\xbe\xef" + b"\0\0\0\1" + b"\xaa" * 60, 3)
    send_udp4500(t1.ns, t1.aws_outside, lab.spec.cgw_public,
                 bytes.fromhex(spi_in) + (0x10000000).to_bytes(4, "big") + b"\x55" * 60, 2)
    send_udp4500(lab.wan, t1.wan_side, lab.spec.cgw_public, b"\x12\x34\x56\x78" + b"\0\0\0\1" + b"\xaa" * 60, 1)

    def drops_counted():
        m2, _ = scrape(lab)
        return (get(m2, "cgwd_tunnel_drops_total", tunnel=names[0], reason="unknown_spi") or 0) >= 3 and \
            get(m2, "cgwd_ipsec_auth_failures_total", tunnel=names[0]) >= base_auth + 2 and \
            (get(m2, "cgwd_drops_total", reason="esp_from_unknown_peer") or 0) >= 1
    wait_for(drops_counted, 20, interval=0.5, what="the forged packets to be counted as drops by reason")
    assert lab.ping(3), "forged packets disturbed the tunnel"

    # DPD: R-U-THERE sent and acknowledged on both tunnels; the peer was heard recently.
    def dpd_seen():
        m2, _ = scrape(lab)
        return all((get(m2, "cgwd_dpd_total", tunnel=n, event="acked") or 0) >= 1 for n in names) and m2
    m = wait_for(dpd_seen, 40, interval=1, what="DPD exchanges on both tunnels")
    for n in names:
        assert get(m, "cgwd_dpd_total", tunnel=n, event="sent") >= get(m, "cgwd_dpd_total", tunnel=n, event="acked")
        assert get(m, "cgwd_dpd_total", tunnel=n, event="dead") == 0
        assert get(m, "cgwd_dpd_last_seen_timestamp_seconds", tunnel=n) > get(m, "cgwd_start_time_seconds")

    # A rekey shows up in the rekey counters.
    assert get(m, "cgwd_rekeys_total", tunnel=names[0], sa="ipsec") == 0
    r = run(cgwctl_command("rekey", names[0], "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: get(scrape(lab)[0], "cgwd_rekeys_total", tunnel=names[0], sa="ipsec") >= 1, 20,
             interval=0.5, what="the phase-2 rekey to be counted")
    lab.wait_ping(20)
    print(scrape(lab)[1])  # shown when the test fails

    proc.send_signal(signal.SIGTERM)
    proc.wait(20)
    assert proc.returncode == 0
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log and "metrics on http://127.0.0.1:9474/metrics" in log
