"""cgwd.system_checks: what cgwd sets on its own interfaces, and what the box lacks.

Against a made-up /proc/sys tree (every branch), and for real in a network namespace of
the test's own (sysctls are per namespace): a strict ``conf.all.rp_filter`` (RHEL, Amazon
Linux) no longer applies to cgwd's tunnel interface once the data path created it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cgwd.system_checks import Finding, check_system, configure_interface, effective_rp_filter, read_sysctl


def tree(tmp_path, values: dict) -> str:
    for key, v in values.items():
        p = tmp_path.joinpath(*key.split("."))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{v}\n")
    return str(tmp_path)


def names(findings):
    return [f.name for f in findings]


def test_fresh_box_findings(tmp_path):
    root = tree(tmp_path, {"net.ipv4.ip_forward": 0, "net.ipv4.conf.all.rp_filter": 1,
                           "net.ipv4.conf.cgw-tun1.rp_filter": 0, "net.ipv6.conf.all.forwarding": 0,
                           "net.ipv6.conf.all.disable_ipv6": 0})
    got = check_system(inner_families=(4, 6), interfaces=["cgw-tun1"], datapath="userspace", root=root,
                       dev=str(tmp_path / "dev"))
    assert names(got) == ["ip_forward_off", "ipv6_forwarding_off", "rp_filter_strict", "tun_missing"]
    for f in got:
        assert isinstance(f, Finding) and f.what and f.fix and set(f.as_dict()) == {"name", "what", "fix"}
    assert "net.ipv4.ip_forward=1" in got[0].fix


def test_a_ready_box_has_no_findings(tmp_path):
    root = tree(tmp_path, {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 1,
                           "net.ipv4.conf.cgw-tun1.rp_filter": 2, "net.ipv6.conf.all.forwarding": 1,
                           "net.ipv6.conf.all.disable_ipv6": 0})
    (tmp_path / "dev" / "net").mkdir(parents=True)
    (tmp_path / "dev" / "net" / "tun").write_text("")
    assert check_system(inner_families=(4, 6), interfaces=["cgw-tun1"], datapath="userspace", root=root,
                        dev=str(tmp_path / "dev")) == []
    # IPv6 checks only for IPv6 tunnels; an IPv4-only box without IPv6 is fine
    root4 = tree(tmp_path / "v4", {"net.ipv4.ip_forward": 1})
    assert check_system(inner_families=(4,), root=root4) == []
    assert names(check_system(inner_families=(6,), root=root4)) == ["ipv6_unavailable"]


def test_effective_rp_filter_is_the_larger(tmp_path):
    root = tree(tmp_path, {"net.ipv4.conf.all.rp_filter": 1, "net.ipv4.conf.a.rp_filter": 0,
                           "net.ipv4.conf.b.rp_filter": 2})
    assert effective_rp_filter("a", root) == 1 and effective_rp_filter("b", root) == 2
    assert effective_rp_filter("nonexistent", str(tmp_path / "none")) is None


def test_configure_interface_sets_what_cgwd_owns(tmp_path):
    root = tree(tmp_path, {"net.ipv4.conf.all.rp_filter": 1, "net.ipv4.conf.t4.rp_filter": 1,
                           "net.ipv6.conf.t4.disable_ipv6": 0, "net.ipv4.conf.t6.rp_filter": 1,
                           **{f"net.ipv6.conf.t6.{k}": 1 for k in ("disable_ipv6", "accept_ra", "autoconf",
                                                                  "router_solicitations", "accept_dad",
                                                                  "dad_transmits")}})
    assert configure_interface("t4", inner_family=4, root=root) == []
    assert read_sysctl("net.ipv4.conf.t4.rp_filter", root) == "2"
    assert read_sysctl("net.ipv6.conf.t4.disable_ipv6", root) == "1"
    assert configure_interface("t6", inner_family=6, root=root) == []
    assert read_sysctl("net.ipv6.conf.t6.disable_ipv6", root) == "0"
    for k in ("accept_ra", "autoconf", "router_solicitations", "accept_dad", "dad_transmits"):
        assert read_sysctl(f"net.ipv6.conf.t6.{k}", root) == "0"
    assert effective_rp_filter("t6", root) == 2
    # a kernel without IPv6 says so for an IPv6 tunnel, and nothing raises
    assert names(configure_interface("t7", inner_family=6, root=str(tmp_path / "empty"))) == ["ipv6_unavailable"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or not os.path.exists("/dev/net/tun"),
                    reason="needs root, unshare(1) and /dev/net/tun")
def test_in_a_namespace_strict_rp_filter_no_longer_applies_to_the_tunnel():
    """A box set up like RHEL/Amazon Linux (conf.all.rp_filter = 1, no forwarding): once the
    data path has created its TUN, the kernel's effective reverse-path filter on it is loose
    (2), and check_system reports what is still missing (forwarding) but not rp_filter."""
    script = r"""
import asyncio, ipaddress, json
from cgwd.esp.datapath import make_datapath
from cgwd.system_checks import check_system, effective_rp_filter, write_sysctl
write_sysctl("net.ipv4.conf.all.rp_filter", 1)
write_sysctl("net.ipv4.conf.default.rp_filter", 1)
write_sysctl("net.ipv4.ip_forward", 0)
async def main():
    dps = [make_datapath("userspace", name=n, ifname=n, inside=ipaddress.ip_interface(i), send_udp=lambda d, a: None,
                         on_event=print, local_address="192.0.2.2")
           for n, i in (("cgw-rp4", "169.254.10.2/30"), ("cgw-rp6", "fd00:10::2/126"))]
    for dp in dps:
        await dp.open()
    out = {"eff4": effective_rp_filter("cgw-rp4"), "eff6": effective_rp_filter("cgw-rp6"),
           "findings": [f.name for f in check_system(inner_families=(4, 6), interfaces=["cgw-rp4", "cgw-rp6"],
                                                     datapath="userspace")],
           "ipv6_off_on_v4": open("/proc/sys/net/ipv6/conf/cgw-rp4/disable_ipv6").read().strip(),
           "ra_on_v6": open("/proc/sys/net/ipv6/conf/cgw-rp6/accept_ra").read().strip(),
           "setup": [d.stats()["system"] for d in dps]}
    write_sysctl("net.ipv4.conf.cgw-rp4.rp_filter", 1)  # something sets it back: reported
    out["later"] = [f.name for f in check_system(interfaces=["cgw-rp4"])]
    for dp in dps:
        await dp.close()
    print(json.dumps(out))
asyncio.run(main())
"""
    p = subprocess.run(["unshare", "-n", sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["eff4"] == 2 and res["eff6"] == 2, res
    assert res["findings"] == ["ip_forward_off", "ipv6_forwarding_off"], res
    assert res["ipv6_off_on_v4"] == "1" and res["ra_on_v6"] == "0"
    assert res["setup"] == [[], []]
    assert res["later"] == ["ip_forward_off", "rp_filter_strict"]
