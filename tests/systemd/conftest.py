"""One lab and one booted container for the whole systemd tier (tests/systemd).

The lab (cgwd.lab) builds its namespaces on this machine: strongSwan (libipsec) + BIRD play
the two AWS endpoints. The container (systemd as PID 1, sdcontainer.py) joins the lab's
customer namespace, so cgwd.service in it talks to the AWS side directly and the routes and
TUN interfaces it programs are visible from here as the lab's ``cgw`` namespace. cgwd is
installed in the container the way README.md says (venv in /opt/cgwd, symlinks, the unit
file, /etc/cgwd/cgwd.toml from `cgwctl import aws`); the unit is enabled but not started:
the first test starts it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

import pytest

import sdcontainer
from cgwd.lab.bird import bird_available
from cgwd.lab.netns import LabError, wait_for
from cgwd.lab.strongswan import charon_available
from cgwd.lab.topology import Lab, LabSpec, leftovers

from sdcontainer import CONFIG, SRC, UNIT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Deployment:
    lab: Lab
    c: sdcontainer.Container
    timings: dict = field(default_factory=dict)

    def systemctl_show(self, *props: str, unit: str = "cgwd") -> dict[str, str]:
        out = self.c.run(["systemctl", "show", unit, "-p", ",".join(props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self) -> int:
        return int(self.systemctl_show("MainPID")["MainPID"])

    def cgwctl_status(self) -> dict:
        p = self.c.run(["cgwctl", "status", "--json"], check=False, timeout=20)
        return json.loads(p.stdout) if p.returncode == 0 else {}

    def tunnels_up(self) -> bool:
        """Every tunnel's SA installed and BGP established (cgwd's view), and the VPC
        route in the kernel, through the TUN interfaces cgwd made (the kernel's view)."""
        st = self.cgwctl_status()
        ts = st.get("tunnels") or []
        ok = len(ts) == len(self.lab.tunnels) and all(
            t["ipsec"]["state"] == "installed" and t["bgp"]["state"] == "established" for t in ts)
        return ok and "dev cgw-" in self.lab.cgw_routes()  # not the fail-closed "unreachable" route

    def wait_up(self, timeout: float = 60) -> None:
        wait_for(self.tunnels_up, timeout, interval=0.5, what="both tunnels and BGP up under systemd")

    def journal(self, *args: str) -> list[dict]:
        out = self.c.run(["journalctl", "--no-pager", "-o", "json", *args], timeout=30).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def ensure_running(self) -> None:
        """For tests that need the service up whatever an earlier test left."""
        if self.systemctl_show("ActiveState")["ActiveState"] != "active":
            self.c.run(["systemctl", "start", "cgwd"], timeout=60)
        self.wait_up()


def _skip_reason() -> str | None:
    return sdcontainer.skip_reason() or charon_available() or bird_available()


def install_as_readme_says(c: sdcontainer.Container, lab: Lab) -> None:
    """README.md, "Running it against AWS", steps 3 and 4 (the unit enabled, not started)."""
    c.copy_in(REPO, SRC, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build",
                                                        ".pytest_cache", ".hypothesis"))
    # the image has python3-venv (step 3's apt-get) and a pip.conf naming its wheelhouse:
    # the container has no network of its own here
    c.run("python3 -m venv /opt/cgwd && /opt/cgwd/bin/pip install -q .", cwd=SRC, timeout=600)
    c.run("ln -sf /opt/cgwd/bin/cgwd /opt/cgwd/bin/cgwctl /usr/local/bin/")
    c.run(["install", "-d", "-m", "0700", "/etc/cgwd"])
    with open(lab.write_aws_xml()) as f:
        c.write("/root/vpn.xml", f.read())
    c.run(["cgwctl", "import", "aws", "/root/vpn.xml", "--advertise", lab.spec.onprem_cidr, "-o", CONFIG])
    c.run(["cgwctl", "config", "check", CONFIG])
    c.run(["install", "-m", "0644", "systemd/cgwd.service", UNIT], cwd=SRC)
    verify = c.run(["systemd-analyze", "verify", UNIT], check=False)
    if verify.returncode != 0 or verify.stderr.strip():
        raise LabError(f"systemd-analyze verify {UNIT} in the container:\n{verify.stdout}{verify.stderr}")
    c.run("systemctl daemon-reload && systemctl enable cgwd")


@pytest.fixture(scope="module")
def deployment(request):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"sd{os.getpid() % 1000}"
    t0 = time.monotonic()
    lab = Lab(LabSpec(prefix=prefix, tunnels=2))
    lab.up()
    d = Deployment(lab, sdcontainer.Container(f"{prefix}-c", netns_path=f"/run/netns/{lab.cgw.name}",
                                              log_path=os.path.join(lab.workdir, "console.log")))
    failed_before = request.session.testsfailed
    try:
        d.timings["lab"] = time.monotonic() - t0
        d.c.boot()
        d.timings["boot"] = d.c.boot_seconds
        t1 = time.monotonic()
        install_as_readme_says(d.c, lab)
        d.timings["install"] = time.monotonic() - t1
        yield d
    finally:
        if request.session.testsfailed != failed_before:
            _dump(d)
        d.c.poweroff()
        lab.down()
        d.timings["total"] = time.monotonic() - t0
        print(f"\nsystemd tier: {', '.join(f'{k} {v:.1f}s' for k, v in d.timings.items() if v is not None)}")
    left = leftovers(prefix)
    assert not left, f"the systemd tier left: {left}"
    assert not os.path.exists(f"/run/systemd/nspawn/propagate/{d.c.name}")


def _dump(d: Deployment) -> None:
    if d.c.leader is not None:
        for cmd in (["systemctl", "status", "cgwd", "--no-pager"], ["journalctl", "--no-pager", "-n", "120"]):
            p = d.c.run(cmd, check=False, timeout=30)
            print(f"----- container: {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    print(f"----- container console\n{d.c.console()}")
    for root, _dirs, files in os.walk(d.lab.workdir):
        for name in files:
            if name.endswith(".log") and name != "console.log":
                with open(os.path.join(root, name), errors="replace") as f:
                    print(f"----- {os.path.join(root, name)}\n" + "".join(f.readlines()[-30:]))
