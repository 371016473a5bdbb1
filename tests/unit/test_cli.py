import asyncio
import json
import os
import subprocess
import sys
import threading

from cgwd.cli import main
from cgwd.control import ControlServer
from unit_config import BASE, PSK1, PSK2
from sample_status import SAMPLE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CGWCTL = [sys.executable, "-c", "import sys; from cgwd.cli import main; sys.exit(main())"]


def run(*args):
    return subprocess.run(CGWCTL + list(args), capture_output=True, text=True, cwd=ROOT)


def test_not_running_exit_3(tmp_path):
    for cmd in (["status"], ["status", "--json"], ["up", "tun1"], ["reload"]):
        r = run("--socket", str(tmp_path / "x.sock"), *cmd)
        assert r.returncode == 3
        assert r.stderr.strip() == f"cgwctl: cgwd is not running (no socket at {tmp_path / 'x.sock'})"


def test_config_check(write_cfg):
    r = run("config", "check", write_cfg(BASE))
    assert r.returncode == 0 and r.stdout.startswith("OK: 1 VPN connection(s), 2 tunnel(s)")
    r = run("config", "check", write_cfg(BASE.replace(PSK1, "bad$psk!!").replace('name = "tun2"', 'name = "tun1"')))
    assert r.returncode == 1 and "must be 8-64 characters" in r.stderr and "duplicate tunnel name" in r.stderr
    assert "bad$psk!!" not in r.stderr + r.stdout and "Traceback" not in r.stderr
    r = run("config", "check", write_cfg(BASE, mode=0o644))
    assert r.returncode == 0 and "chmod 600" in r.stdout


def test_help_documents_everything():
    r = run("--help")
    for word in ("status", "up", "down", "rekey", "reload", "config check", "import aws", "lab"):
        assert word in r.stdout
    r = run("import", "aws", "--help")
    for word in ("--local-address", "--advertise", "--static-route", "--ike-version", "--name", "--merge", "-o"):
        assert word in r.stdout


def test_status_and_commands_against_server(tmp_path, capsys):
    path = str(tmp_path / "cgwd.sock")
    seen = []

    async def handler(req):
        seen.append(req)
        if req["cmd"] == "status":
            return {"ok": True, "status": SAMPLE}
        if req["cmd"] == "down" and req["tunnel"] == "nope":
            return {"ok": False, "error": "no tunnel named 'nope'"}
        return {"ok": True, "message": f"{req['cmd']}: done"}

    loop = asyncio.new_event_loop()
    srv = ControlServer(path, handler)
    loop.run_until_complete(srv.start())
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    try:
        assert main(["--socket", path, "status"]) == 0
        out = capsys.readouterr().out
        assert "only 1 of 2 tunnels up: no redundancy" in out
        assert main(["--socket", path, "status", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(SAMPLE))
        assert main(["status", "--socket", path]) == 0
        capsys.readouterr()
        assert main(["--socket", path, "rekey", "tun1"]) == 0
        assert capsys.readouterr().out.strip() == "rekey: done"
        assert main(["--socket", path, "down", "nope"]) == 1
        assert "no tunnel named 'nope'" in capsys.readouterr().err
        assert {"cmd": "rekey", "tunnel": "tun1"} in seen
        assert main(["--socket", path, "rekey", "tun1", "--ike"]) == 0
        capsys.readouterr()
        assert {"cmd": "rekey", "tunnel": "tun1", "sa": "ike"} in seen
    finally:
        loop.call_soon_threadsafe(loop.stop)
        th.join(5)
        loop.run_until_complete(srv.close())
        loop.close()


def test_lab_dispatch(monkeypatch, capsys):
    import types

    called = {}
    mod = types.ModuleType("cgwd.lab.cli")
    mod.main = lambda argv: called.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "cgwd.lab.cli", mod)
    assert main(["lab", "up", "--help"]) == 0
    assert called["argv"] == ["up", "--help"]


def test_psk_never_in_output(tmp_path, data_path, write_cfg):
    cfgp = write_cfg(BASE)
    outs = []
    for args in (["config", "check", cfgp], ["--help"], ["status", "--socket", str(tmp_path / "n.sock")],
                 ["import", "aws", data_path("aws_vpn.xml"), "-o", str(tmp_path / "o.toml")],
                 ["import", "aws", data_path("aws_vpn.xml"), "--merge", str(tmp_path / "o.toml")],
                 ["config", "check", str(tmp_path / "o.toml")]):
        r = run(*args)
        outs.append(r.stdout + r.stderr)
    text = "\n".join(outs)
    for psk in (PSK1, PSK2, "Iw2IAN9XUsQeYUrkMGP3kP59ugFDkfHg", "uoAp_DrEd9VMwfygsBfTlyT46GYCpe4_"):
        assert psk not in text


def test_status_marks_receive_only_and_rekeyed_pairs():
    import copy

    from cgwd.status_format import format_status

    st = copy.deepcopy(SAMPLE)
    t = st["tunnels"][0]
    cur = t["ipsec"]["sas"][0]
    cur["outbound"] = True
    new = dict(cur, spi_in="c7654321", spi_out="0badcafe", outbound=False)
    old = dict(cur, spi_in="c0000001", spi_out="0bad0001", outbound=False, state="rekeyed")
    t["ipsec"]["sas"] = [old, cur, new]
    lines = [l for l in format_status(st).splitlines() if "ESP SA" in l]
    by_spi = {spi: next(l for l in lines if spi in l) for spi in ("c0000001", "c1234567", "c7654321")}
    assert "[rekeyed: receive only]" in by_spi["c0000001"]
    assert "receive only" not in by_spi["c1234567"]
    assert by_spi["c7654321"].rstrip().count("[receive only]") == 1
    for sa in t["ipsec"]["sas"]:  # the kernel data path does not say which pair sends
        sa["outbound"] = None
    lines = [l for l in format_status(st).splitlines() if "ESP SA" in l]
    assert not any("receive only" in l for l in lines)
    assert "[rekeyed]" in next(l for l in lines if "c0000001" in l)


def test_hint_when_the_kernel_path_could_not_clamp_mss():
    import copy

    from cgwd.status_format import hints_for_tunnel

    t = copy.deepcopy(SAMPLE["tunnels"][0])
    assert not any("MSS" in h for h in hints_for_tunnel(t))
    t["ipsec"]["mss_clamp"] = "off: iptables not found (TCP relies on path MTU discovery)"
    assert any("MSS clamping is off: iptables not found" in h for h in hints_for_tunnel(t))
    t["ipsec"]["mss_clamp"] = "off: mss = 0 in the configuration"  # the operator's choice
    assert not any("MSS" in h for h in hints_for_tunnel(t))


def test_status_screen_shows_the_last_reload_and_crashed_tasks():
    from cgwd.status_format import format_status

    st = {"now": 1000.0, "started_at": 900.0, "tunnels": [], "routes": [],
          "last_reload": {"at": 990.0, "ok": True, "message": "reload: applied in place: tun2 (med)"},
          "tasks": {"esp-liveness": {"state": "restarting", "crashes": 3, "last_error": "ValueError: bad"}}}
    text = format_status(st)
    assert "Last reload 10s ago: reload: applied in place: tun2 (med)" in text
    assert "task esp-liveness crashed 3x (restarting): ValueError: bad" in text


def test_status_screen_names_the_ike_version_and_a_tunnel_waiting_for_aws():
    from cgwd.status_format import format_status

    st = {"now": 1000.0, "started_at": 900.0, "routes": [],
          "tunnels": [{"name": "t1", "vpn": "v", "ike": {"version": 2, "state": "waiting"}},
                      {"name": "t2", "vpn": "v", "ike": {"version": 1, "state": "established",
                                                         "algorithms": "aes128-sha1-modp1024"}}]}
    text = format_status(st)
    assert "IKEv2       waiting for AWS to initiate (startup action start)" in text
    assert "IKEv1       established aes128-sha1-modp1024" in text


def test_metrics_carry_the_ike_version():
    from cgwd.metrics import render_metrics

    text = render_metrics({"tunnels": [{"name": "t1", "vpn": "v", "ike": {"version": 2, "state": "waiting"}}]})
    assert 'cgwd_ike_state{tunnel="t1",vpn="v",ike_version="2",state="waiting"} 1' in text


def test_cgwctl_status_loads_no_event_loop_or_crypto():
    """`cgwctl status` is what an operator waits for: its start-up stays free of asyncio,
    cryptography and the daemon's protocol packages (the blocking client lives apart)."""
    import subprocess
    import sys

    code = ("import sys\nfrom cgwd.cli import main\nrc = main(['status', '--socket', '/nonexistent/cgwd.sock'])\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'cryptography', 'pyroute2')\n"
            "               or m.startswith(('cgwd.ike', 'cgwd.esp', 'cgwd.bgp', 'cgwd.daemon')))\n"
            "print(rc, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "3 []", out.stdout + out.stderr
