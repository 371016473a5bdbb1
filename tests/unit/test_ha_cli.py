"""cgwctl health against a control socket (exit status and one line), cgwctl ha notify
(actions recorded, failures in one line), the HA file's errors, and the shipped keepalived
examples being what `cgwctl ha keepalived` writes."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading

import pytest

from cgwd.cli import main
from cgwd.config import ConfigError
from cgwd.control import ControlServer
from cgwd.ha.config import parse_ha_config, load_ha_config
from cgwd.ha.keepalived import render
from cgwd.ha.notify import Takeover, VrrpState, parse_state, read_state, run_notify
from cgwd.lab.imds import ImdsResponder

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "keepalived")

UP = {"tunnels": [
    {"name": "t1", "vpn": "v", "ike": {"state": "established"}, "ipsec": {"state": "installed", "sas": [{}]},
     "bgp": {"state": "established", "prefixes_received": 1}},
    {"name": "t2", "vpn": "v", "ike": {"state": "established"}, "ipsec": {"state": "installed", "sas": [{}]},
     "bgp": {"state": "established", "prefixes_received": 1}}],
    "routes": [{"prefix": "10.100.0.0/16", "tunnel": "t1", "best": True}], "vpns": [{"name": "v"}]}


class Daemon:
    """A control server on a Unix socket in a thread, answering status with ``self.status``."""

    def __init__(self, path, status):
        self.path = path
        self.status = status
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _handler(self, req):
        return {"ok": True, "status": self.status}

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.server = ControlServer(self.path, self._handler)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.server.close())

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def degrade(st):
    st = json.loads(json.dumps(st))
    st["tunnels"][1]["ike"]["state"] = "connecting"
    return st


def down(st):
    st = json.loads(json.dumps(st))
    for t in st["tunnels"]:
        t["ipsec"] = {"state": "none", "sas": []}
    return st


@pytest.mark.parametrize(("status", "args", "code", "first"), [
    (UP, [], 0, "up: v: 2/2 tunnels up, 1 prefixes carried"),
    (degrade(UP), [], 0, "warning: degraded: v: 1/2 tunnels up; t2 IKE connecting"),
    (degrade(UP), ["--strict"], 1, "degraded: v: 1/2 tunnels up; t2 IKE connecting"),
    (down(UP), [], 1, "down: v: no tunnel up (t1 no SA installed, t2 no SA installed)"),
])
def test_health_exit_status_and_line(tmp_path, capsys, status, args, code, first):
    sock = str(tmp_path / "cgwd.sock")
    with Daemon(sock, status):
        rc = main(["--socket", sock, "health", *args])
    out = capsys.readouterr().out.splitlines()
    assert rc == code and out == [first]


def test_health_json(tmp_path, capsys):
    sock = str(tmp_path / "cgwd.sock")
    with Daemon(sock, degrade(UP)):
        assert main(["health", "--socket", sock, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["health"] == "degraded" and got["vpns"][0]["tunnels_down"] == ["t2"]


def test_health_without_cgwd_exits_2(tmp_path, capsys):
    assert main(["--socket", str(tmp_path / "none.sock"), "health"]) == 2
    assert capsys.readouterr().out.startswith("unavailable: cgwd is not running (no socket at")


def test_health_of_a_cgwd_that_does_not_answer_exits_2(tmp_path, capsys):
    path = str(tmp_path / "hung.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)  # accepts, never answers
    try:
        assert main(["--socket", path, "health", "--timeout", "0.3"]) == 2
    finally:
        s.close()
    assert capsys.readouterr().out == "unavailable: cgwd did not answer within 0.3 s\n"


@pytest.mark.parametrize(("args", "state"), [
    (["MASTER"], VrrpState.MASTER), (["backup"], VrrpState.BACKUP),
    (["INSTANCE", "CGWD", "FAULT", "150"], VrrpState.FAULT), (["GROUP", "G", "STOP"], VrrpState.STOP),
])
def test_parse_state(args, state):
    assert parse_state(args) == state


@pytest.mark.parametrize("args", [["MAYBE"], ["INSTANCE", "X"], []])
def test_parse_state_refuses(args):
    with pytest.raises(ValueError):
        parse_state(args)


HA_EC2 = """
[ha]
state_dir = "{d}"
[ha.ec2]
route_tables = ["rtb-01111111111111111"]
prefixes = ["10.200.0.0/24"]
imds_url = "{imds}"
endpoint_url = "http://127.0.0.1:9"
attempts = 2
"""

IMDS_DOC = {"region": "eu-west-1", "instance_id": "i-0aaaaaaaaaaaaaaaa", "mac": "0e:00:00:00:00:01",
            "interface_id": "eni-0aaaaaaaaaaaaaaaa", "role": "r",
            "credentials": {"AccessKeyId": "ASIA1", "SecretAccessKey": "x", "Token": "t"}}


def test_notify_master_takes_the_routes_and_records_it(tmp_path):
    from test_ha_ec2 import FakeEc2, r, rt

    api = FakeEc2([rt("rtb-01111111111111111", r("10.200.0.0/24", NetworkInterfaceId="eni-0bbbbbbbbbbbbbbbb"))])
    made = {}

    def factory(**kw):
        made.update(kw)
        return api

    with ImdsResponder(IMDS_DOC) as imds:
        cfg = parse_ha_config(HA_EC2.format(d=tmp_path, imds=imds.url))
        out = run_notify(VrrpState.MASTER, cfg, takeover=Takeover(cfg, environ={}, api_factory=factory,
                                                                   sleep=lambda s: None))
    assert out.ok, out.lines
    assert out.lines[0] == ("ec2: instance i-0aaaaaaaaaaaaaaaa interface eni-0aaaaaaaaaaaaaaaa in eu-west-1 "
                            "(instance role r): 1 routes moved, 0 already here (2 API calls)")
    assert made["endpoint_url"] == "http://127.0.0.1:9" and made["region"] == "eu-west-1"
    assert made["credentials"].access_key == "ASIA1"
    st = read_state(cfg)
    assert st["state"] == "MASTER" and st["ok"] and st["transitions"] == 1
    out = run_notify(VrrpState.BACKUP, cfg)
    assert out.lines == ["BACKUP: nothing to do"] and read_state(cfg)["previous"] == "MASTER"


def test_notify_master_with_imds_unreachable_fails_in_one_line(tmp_path, capsys):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    path = tmp_path / "ha.toml"
    path.write_text(HA_EC2.format(d=tmp_path, imds=f"http://127.0.0.1:{port}").replace("[ha.ec2]", "[ha.ec2]\ntimeout = 0.5"))
    rc = main(["ha", "--config", str(path), "notify", "INSTANCE", "CGWD", "MASTER", "150"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith(f"MASTER: error: IMDSv2 token: IMDS at http://127.0.0.1:{port} "
                                               "unreachable") and err[0].endswith("after 2 attempts")
    assert read_state(load_ha_config(str(path)))["ok"] is False


def test_notify_master_superseded_when_the_address_is_gone(tmp_path):
    cfg = parse_ha_config(f"""
[ha]
state_dir = "{tmp_path}"
[ha.vrrp]
interface = "lan0"
virtual_router_id = 7
virtual_ipaddress = ["10.200.0.1/24"]
unicast_src_ip = "10.200.0.2"
unicast_peer = ["10.200.0.3"]
""")
    out = run_notify(VrrpState.MASTER, cfg, still_master=lambda: False)
    assert out.lines == ["superseded: the virtual address is no longer here (a later transition acts)"]


@pytest.mark.parametrize(("text", "errors"), [
    ("[ha]\nfailback = \"sometimes\"\n", ["ha: failback: must be one of none, preempt"]),
    ("[ha]\nbogus = 1\n", ["ha: bogus: unknown key"]),
    ("[ha.ec2]\nroute_tables = [\"rt-1\"]\nprefixes = [\"10.200.0.1/24\"]\n",
     ["ha.ec2: route_tables: 'rt-1' is not a route table id", "ha.ec2: prefixes: '10.200.0.1/24' is not a CIDR"]),
    ("[ha.ec2]\nprefixes = [\"10.0.0.0/8\"]\nendpoint_url = \"ftp://x\"\n",
     ["ha.ec2: route_tables: is required", "ha.ec2: endpoint_url: 'ftp://x' is not an http:// or https:// URL"]),
    ("[ha.vrrp]\nunicast_src_ip = \"10.0.0.1\"\nunicast_peer = [\"10.0.0.1\"]\nvirtual_ipaddress = [\"10.0.0.9/24\"]\n",
     ["ha.vrrp: interface: is required", "ha.vrrp: virtual_router_id: is required",
      "ha.vrrp: unicast_peer: lists this box's own address 10.0.0.1"]),
    ("[ha\n", ["not valid TOML"]),
])
def test_ha_file_errors(text, errors):
    with pytest.raises(ConfigError) as e:
        parse_ha_config(text, "ha.toml")
    got = [str(i) for i in e.value.errors]
    for want in errors:
        assert any(want in g for g in got), got
    assert len(got) == len(errors), got


@pytest.mark.parametrize("box", ["a", "b"])
def test_shipped_keepalived_examples_are_what_cgwctl_writes(box):
    cfg = load_ha_config(os.path.join(EXAMPLES, f"ha-{box}.toml"))
    with open(os.path.join(EXAMPLES, f"keepalived-{box}.conf")) as f:
        assert f.read() == render(cfg)


def test_failback_preempt_renders_preempt_delay():
    cfg = load_ha_config(os.path.join(EXAMPLES, "ha-a.toml"))
    import dataclasses

    text = render(dataclasses.replace(cfg, failback="preempt"))
    assert "nopreempt" not in text and "preempt_delay 10" in text
    assert "nopreempt" in render(cfg)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300) | st.sampled_from([
    "[ha]\nfailback = 3\n", "[ha.vrrp]\npriority = 999\n", "[ha.ec2]\nprefixes = 1\n", "ha = 1\n",
    "[ha.vrrp]\nvirtual_router_id = true\n", "[ha.ec2]\nroute_tables = []\nprefixes = []\ntimeout = \"x\"\n"]))
def test_the_ha_file_parser_only_ever_says_config_error(text):
    try:
        parse_ha_config(text, "ha.toml")
    except ConfigError as e:
        assert all("\\n" not in str(i) for i in e.errors)
