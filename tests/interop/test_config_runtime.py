"""Config in equals runtime state: every VPN-level setting (max_prefix and its action, ECMP,
import policy, advertise) is what the running daemon uses, after start and after reload.

Read back from the running objects (`cgwctl status --json`: vpns[] is built from the routing
table and RIB, tunnels[].bgp.advertised from the BGP session's Adj-RIB-Out) and from what
AWS's BIRD receives. A configured max_prefix once never reached the RIB (a comment swallowed
it); this test fails on that code.
"""

from __future__ import annotations

import re

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for

pytestmark = pytest.mark.interop

SETTINGS = [
    {"max_prefix": 4321, "max_prefix_action": "warn", "ecmp": True, "import": ["10.100.0.0/16"],
     "advertise": ["10.200.0.0/24", "10.201.0.0/24"]},
    {"max_prefix": 2345, "max_prefix_action": "drop", "ecmp": False, "import": "aws-default",
     "advertise": ["10.200.0.0/24"]},
]


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(f'"{x}"' for x in v) + "]"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v)


def _write(path: str, base: str, settings: dict) -> None:
    text = re.sub(r"^advertise = .*\n", "", base, flags=re.M)
    lines = "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())
    text = text.replace('gateway_type = "vgw"\n', 'gateway_type = "vgw"\n' + lines, 1)
    with open(path, "w") as f:
        f.write(text)


def _check(lab, settings: dict) -> None:
    st = cgwctl_status(lab, as_json=True)
    (vpn,) = st["vpns"]
    assert vpn["max_prefix"] == settings["max_prefix"]
    assert vpn["max_prefix_action"] == settings["max_prefix_action"]
    assert vpn["ecmp"] is settings["ecmp"]
    assert vpn["import_policy"] == settings["import"]
    for t in st["tunnels"]:
        assert t["bgp"]["advertised"] == sorted(settings["advertise"]), t["name"]
    for t in lab.tunnels:
        wait_for(lambda: sorted(p for p in t.bird.routes("cgw") if p.startswith("10.20")) == sorted(
            settings["advertise"]), 20, what=f"AWS endpoint {t.index} to receive exactly {settings['advertise']}")


def test_vpn_settings_in_the_running_daemon_equal_the_config_after_start_and_reload(lab_factory):
    lab = lab_factory()
    path = import_config(lab)
    base = open(path).read()
    _write(path, base, SETTINGS[0])
    proc = start_cgwd(lab, path)
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 45, interval=0.3, what="tunnels up")
    _check(lab, SETTINGS[0])
    _write(path, base, SETTINGS[1])
    from cgwd.lab.cli import cgwctl_command
    from cgwd.lab.netns import run
    r = run(cgwctl_command("reload", "--socket", f"{lab.workdir}/cgwd.sock"), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: cgwd_ready(lab), 45, interval=0.3, what="tunnels up after reload")
    _check(lab, SETTINGS[1])
    assert proc.poll() is None
