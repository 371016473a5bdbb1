"""Reload closes what no tunnel uses any more: the UDP 500/4500 endpoint of a local address
whose last tunnel was removed (issue 12: endpoints for addresses removed by reload were never
closed), the removed VPN's routing table and its maintenance task. The other tunnels are not
touched."""

from __future__ import annotations

import os
import re

import pytest

from cgwd.lab.cli import cgwctl_command, cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import run, wait_for

pytestmark = pytest.mark.interop

EXTRA = """
[[vpn]]
name = "vpn-spare"
local_address = "198.18.0.2"
local_asn = 65000
remote_asn = 64512
advertise = ["10.200.0.0/24"]

  [[vpn.tunnel]]
  name = "spare-1"
  remote_address = "198.51.100.98"
  psk = "spare.tunnel.key.0123"
  inside_cidr = "169.254.30.0/30"

  [[vpn.tunnel]]
  name = "spare-2"
  remote_address = "198.51.100.99"
  psk = "spare.tunnel.key.4567"
  inside_cidr = "169.254.31.0/30"
"""


def _bound(lab) -> set[tuple[str, int]]:
    out = lab.cgw.run(["ss", "-H", "-uln"]).stdout
    return {(m.group(1), int(m.group(2))) for m in re.finditer(r"\s(\d+\.\d+\.\d+\.\d+):(\d+)\s", out)}


def _spis(lab) -> dict:
    return {t["name"]: sorted(sa["spi_in"] for sa in t["ipsec"]["sas"])
            for t in cgwctl_status(lab, as_json=True)["tunnels"]}


def test_reload_closes_the_endpoint_of_a_removed_address(lab_factory):
    lab = lab_factory()
    lab.cgw.ip("link add spare0 type veth peer name spare1")
    lab.cgw.ip("addr add 198.18.0.2/24 dev spare0")
    lab.cgw.ip("link set spare0 up")
    lab.cgw.ip("link set spare1 up")
    path = import_config(lab)
    base = open(path).read()
    with open(path, "w") as f:
        f.write(base + EXTRA)
    proc = start_cgwd(lab, path)
    wait_for(lambda: proc.poll() is not None or (len(cgwctl_status(lab, as_json=True).get("tunnels", [])) == 4
                                                 and all(t["ipsec"]["state"] == "installed" for t in
                                                         cgwctl_status(lab, as_json=True)["tunnels"][:2])),
             45, interval=0.3, what="the lab's two tunnels up beside the spare VPN's")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-2000:]
    assert "routing:vpn-spare" in cgwctl_status(lab, as_json=True)["tasks"]
    assert {("198.18.0.2", 500), ("198.18.0.2", 4500)} <= _bound(lab)
    before = _spis(lab)
    with open(path, "w") as f:
        f.write(base)
    r = run(cgwctl_command("reload", "--socket", os.path.join(lab.workdir, "cgwd.sock")), check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed 2" in r.stdout, r.stdout
    bound = _bound(lab)
    assert ("198.18.0.2", 500) not in bound and ("198.18.0.2", 4500) not in bound, bound
    assert {("203.0.113.2", 500), ("203.0.113.2", 4500)} <= bound
    after = _spis(lab)
    assert set(after) == set(before) - {"spare-1", "spare-2"}, after
    assert all(after[n] == before[n] for n in after), (before, after)
    st = cgwctl_status(lab, as_json=True)
    assert "routing:vpn-spare" not in st["tasks"] and [v["name"] for v in st["vpns"]] == [st["tunnels"][0]["vpn"]]
    assert cgwd_ready(lab) and proc.poll() is None
