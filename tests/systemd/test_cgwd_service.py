"""cgwd.service under a real systemd (PID 1 of a Debian 12 container), against the lab.

The container joins the lab's customer namespace; strongSwan + BIRD play AWS on this machine
(conftest.py). cgwd is installed there as README.md says. The tests run in this order and share
the one container: the first starts the service, the last freezes it for the watchdog.
Run alone: ``.venv/bin/python -m pytest tests/systemd -s`` (about 2-3 minutes).
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from cgwd.lab.netns import wait_for
from sdcontainer import CONFIG, SRC, UNIT

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(600)]

# README.md reports this figure; a unit that gets looser fails here
EXPOSURE_MAX = 1.9


def _feed_fifo(d, fifo: str, text_path: str) -> threading.Thread:
    """Write the config into the FIFO once (blocks until a reader opens it)."""
    t = threading.Thread(target=d.c.run, args=(f"cat {text_path} > {fifo}",), kwargs={"timeout": 60}, daemon=True)
    t.start()
    return t


def test_active_only_after_ready(deployment):
    """Type=notify: while the daemon runs but has not sent READY=1 the unit is "activating";
    it becomes "active" only once READY=1 came. The daemon is held before READY by making its
    config a FIFO that the test writes to (the daemon blocks opening it, as it would on slow
    storage); ExecStartPre's `cgwctl config check` reads it first."""
    d = deployment
    c = d.c
    c.run(f"mv {CONFIG} {CONFIG}.real && mkfifo -m 0600 {CONFIG}")
    try:
        c.run(["systemctl", "start", "--no-block", "cgwd"])
        _feed_fifo(d, CONFIG, f"{CONFIG}.real").join(60)  # ExecStartPre
        wait_for(lambda: d.main_pid() and "cgwd --config" in c.run(["cat", f"/proc/{d.main_pid()}/cmdline"],
                                                                 check=False).stdout.replace("\0", " "),
                 30, interval=0.1, what="cgwd's main process started")
        states = set()
        for _ in range(10):  # 2 s with the daemon running and not READY
            s = d.systemctl_show("ActiveState", "SubState", "MainPID")
            states.add((s["ActiveState"], s["SubState"]))
            time.sleep(0.2)
        assert states == {("activating", "start")}, states
        assert c.run(["systemctl", "is-active", "cgwd"], check=False).stdout.strip() == "activating"
        _feed_fifo(d, CONFIG, f"{CONFIG}.real").join(60)  # the daemon itself
        wait_for(lambda: d.systemctl_show("ActiveState")["ActiveState"] == "active", 30, interval=0.2,
                 what="cgwd.service active")
    finally:
        c.run(f"rm -f {CONFIG} && mv {CONFIG}.real {CONFIG}")
    d.wait_up()
    assert d.lab.ping(3)


def test_status_line_in_systemctl_status(deployment):
    d = deployment
    d.ensure_running()
    want = "2/2 tunnels up, 2 BGP established, 2 routes"
    # STATUS= is refreshed every 5 s; the first one (at READY) may predate the tunnels
    wait_for(lambda: d.systemctl_show("StatusText")["StatusText"] == want, 20, interval=0.5,
             what=f"StatusText={want!r}")
    out = d.c.run(["systemctl", "status", "cgwd", "--no-pager"], check=False).stdout
    assert f'Status: "{want}"' in out, out


def test_reload_applies_a_med_change(deployment):
    d = deployment
    d.ensure_running()
    tname = d.cgwctl_status()["tunnels"][0]["name"]
    before = d.systemctl_show("MainPID", "NRestarts")
    text = d.c.read(CONFIG)
    # the first tunnel's table: a MED is an in-place change
    new = re.sub(r"(\[\[vpn\.tunnel\]\]\n)", r"\1med = 150\n", text, count=1)
    assert new != text
    d.c.write(CONFIG, new, 0o600)
    d.c.run(["systemctl", "reload", "cgwd"], timeout=60)

    def reloaded():
        rl = d.cgwctl_status().get("last_reload") or {}
        return rl if rl.get("applied") else None

    rl = wait_for(reloaded, 30, interval=0.3, what="last_reload with an applied change")
    assert rl["ok"] and rl["applied"] == {tname: ["med"]} and not rl["restarted"], rl
    # AWS's BIRD of that tunnel sees the on-prem prefix with MED 150 now
    aws = d.lab.tunnels[0].bird
    wait_for(lambda: "BGP.med: 150" in aws.birdc("show", "route", "all", d.lab.spec.onprem_cidr), 20,
             what="MED 150 at AWS's BIRD")
    assert "BGP.med" not in d.lab.tunnels[1].bird.birdc("show", "route", "all", d.lab.spec.onprem_cidr)
    after = d.systemctl_show("MainPID", "NRestarts", "ActiveState")
    assert after["MainPID"] == before["MainPID"] and after["NRestarts"] == before["NRestarts"], (before, after)
    assert after["ActiveState"] == "active"
    assert d.tunnels_up()


def _proc_status(d, pid: int) -> dict[str, str]:
    out = d.c.run(["cat", f"/proc/{pid}/status"]).stdout
    return {k: v.strip() for k, v in (line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)}


def _mountinfo(d, pid: int) -> dict[str, str]:
    out = d.c.run(["cat", f"/proc/{pid}/mountinfo"]).stdout
    m = {}
    for line in out.splitlines():
        pre, _, post = line.partition(" - ")
        f = pre.split()
        m[f[4]] = f[5] + " " + post.split()[-1]
    return m


def test_sandbox_in_force_on_the_running_daemon(deployment):
    """The daemon's own process: capabilities, no_new_privs, seccomp, its mount namespace;
    and with all of it the daemon has programmed routes and TUN interfaces, and traffic flows.
    (XFRM state: this kernel has no ESP, so the userspace data path is what runs; status says so.)"""
    d = deployment
    d.ensure_running()
    pid = d.main_pid()
    st = _proc_status(d, pid)
    want = (1 << 10) | (1 << 12) | (1 << 13)  # NET_BIND_SERVICE, NET_ADMIN, NET_RAW
    for k in ("CapEff", "CapPrm", "CapBnd"):
        assert int(st[k], 16) == want, (k, st[k])
    assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    assert st["NoNewPrivs"] == "1"
    # the container's processes all run under nspawn's filter; the unit's filters come on top
    pid1 = _proc_status(d, 1)
    assert st["Seccomp"] == "2" and int(st["Seccomp_filters"]) > int(pid1["Seccomp_filters"]), (st, pid1)
    m = _mountinfo(d, pid)
    for ro in ("/", "/usr", "/etc", "/opt/cgwd", "/proc/sys", "/sys/fs/cgroup"):
        path = max((p for p in m if ro == p or ro.startswith(p.rstrip("/") + "/")), key=len)
        assert m[path].split()[0].split(",")[0] == "ro", (ro, path, m[path])
    for rw in ("/run/cgwd", "/proc/sys/net/ipv4/conf", "/proc/sys/net/ipv6/conf", "/dev/net/tun"):
        assert rw in m and m[rw].split()[0].split(",")[0] == "rw", (rw, m.get(rw))
    assert "hidepid=invisible" in m["/proc"], m["/proc"]
    assert "/proc/kmsg" in m
    # its own /dev (PrivateDevices): the TUN device, no console
    devs = d.c.run(["ls", f"/proc/{pid}/root/dev"]).stdout.split()
    assert "net" in devs and "console" not in devs, devs
    # a write into the daemon's view of /etc fails, from its own mount namespace
    r = d.c.run(["nsenter", "-t", str(pid), "-m", "--", "touch", "/etc/cgwd/sdprobe"], check=False)
    assert r.returncode != 0 and "Read-only file system" in r.stderr, r.stderr
    # the work: TUN interfaces, routes (proto 157), loose rp_filter on them, traffic both ways
    st = d.cgwctl_status()
    assert st["datapath"]["kind"] == "userspace" and "no ESP" in st["datapath"]["reason"], st["datapath"]
    names = [t["ifname"] for t in st["tunnels"]]
    links = d.lab.cgw.ip("-o link show", check=False).stdout
    for n in names:
        assert f" {n}: " in links
        assert d.lab.cgw.run(["cat", f"/proc/sys/net/ipv4/conf/{n}/rp_filter"]).stdout.strip() == "2"
    routes = d.lab.cgw.ip("route show proto 157").stdout
    assert re.search(rf"^{re.escape(d.lab.spec.vpc_cidr)} via 169\.254\.\d+\.1 dev cgw-\S+ ", routes, re.M), routes
    assert d.lab.ping(5)


def _write_unit(d, name: str, text: str) -> None:
    d.c.write(f"/etc/systemd/system/{name}", text, 0o644)


def _run_probe(d, unit: str, rundir: str) -> dict:
    d.c.run(["systemctl", "daemon-reload"])
    r = d.c.run(["systemctl", "start", unit], check=False, timeout=60)
    out = d.c.run(["cat", f"{rundir}/result.json"], check=False)
    assert out.returncode == 0, (r.stderr, d.c.run(["journalctl", "-u", unit, "--no-pager"], check=False).stdout)
    return json.loads(out.stdout)


def twin_unit(unit_text: str, probe_cmd: str) -> str:
    """cgwd.service's [Unit] and [Service] sandbox with the probe as a oneshot ExecStart."""
    keep = []
    for line in unit_text.splitlines():
        key = line.split("=", 1)[0]
        if key in ("ExecStartPre", "ExecStart", "ExecReload", "WatchdogSec", "Restart", "RestartSec",
                   "NotifyAccess", "TimeoutStopSec"):
            continue
        if line == "Type=notify":
            line = "Type=oneshot"
        if line == "RuntimeDirectory=cgwd":
            line = "RuntimeDirectory=sdprobe\nRuntimeDirectoryPreserve=yes"
        if line.startswith("[Install]"):
            break
        keep.append(line)
    assert "Type=oneshot" in keep and "RuntimeDirectory=sdprobe\nRuntimeDirectoryPreserve=yes" in keep
    # the one addition: a device node outside DeviceAllow= made visible in its /dev, so that the
    # probe can show DevicePolicy=closed refusing it
    return "\n".join(keep) + f"\nBindPaths=/dev/sdprobe-fuse\nExecStart={probe_cmd} /run/sdprobe/result.json\n"


# what flips between no sandbox and cgwd's sandbox: each restriction the probe tries
RESTRICTIONS = {
    "seccomp @privileged: setuid(0)", "seccomp @resources: setrlimit(NOFILE, unchanged)",
    "seccomp @mount: mount() on a missing path",
    "RestrictNamespaces: unshare(CLONE_NEWUSER)", "LockPersonality: personality(PER_LINUX32)",
    "RestrictRealtime: sched_setscheduler(SCHED_FIFO)", "ProtectHostname: sethostname(unchanged)",
    "MemoryDenyWriteExecute: mmap(W|X)", "RestrictAddressFamilies: AF_PACKET",
    "ProtectSystem: write /usr", "ProtectSystem: write /etc", "ProtectSystem: write /var/lib",
    "ProtectSystem: write /opt/cgwd", "ProtectHome: /root", "ProtectHome: /home", "PrivateTmp: /tmp",
    "PrivateTmp: /var/tmp", "ProtectControlGroups: mkdir in /sys/fs/cgroup",
    "ProtectKernelModules: /usr/lib/modules", "ProtectProc: hidepid=invisible",
    "PrivateDevices: own /dev (the container's /dev marker hidden)", "DevicePolicy: a device outside DeviceAllow",
    "NoNewPrivileges",
    "CapabilityBoundingSet: NET_ADMIN NET_RAW NET_BIND_SERVICE only", "UMask: 0077",
    "RestrictSUIDSGID: chmod u+s",
}
# in force under cgwd's sandbox, but systemd-nspawn's own sandbox already forbids these to
# every process of the container (its seccomp filter, /proc/sys and /proc/kmsg read-only), so
# here the directive cannot be shown to be the reason; on a host they are cgwd.service's alone
CONTAINER_ENFORCED = {
    "seccomp @cpu-emulation: modify_ldt(read)", "seccomp @debug: perf_event_open(no attributes)",
    "seccomp @obsolete: ustat()", "seccomp @raw-io: iopl(0)", "ProtectClock: clock_settime(MONOTONIC)",
    "ProtectClock: adjtimex(read only)",    "ProtectKernelTunables: write /proc/sys/kernel", "ProtectKernelLogs: /proc/kmsg covered",
    "seccomp filter mode",
}


def test_every_sandbox_directive_in_force_and_cgwd_can_work(deployment):
    """A twin of the installed cgwd.service (its sandbox, a probe as ExecStart) tries what each
    directive forbids and what cgwd needs; the same probe in a unit without a sandbox shows
    that each restriction check would fail there (so none passes by accident)."""
    d = deployment
    c = d.c
    markers = ("/root/sdprobe-marker", "/tmp/sdprobe-marker", "/var/tmp/sdprobe-marker", "/home/sdprobe-marker",
               "/usr/lib/modules/sdprobe-marker", "/dev/sdprobe-marker")
    for marker in markers:
        c.run(["mkdir", "-p", marker])
    c.run(["mknod", "-m", "0600", "/dev/sdprobe-fuse", "c", "10", "229"])
    probe = f"/opt/cgwd/bin/python {SRC}/tests/systemd/probe_sandbox.py"
    unit_text = c.read(UNIT)
    _write_unit(d, "sdprobe.service", twin_unit(unit_text, probe))
    _write_unit(d, "sdprobe-open.service", "[Service]\nType=oneshot\nRuntimeDirectory=sdprobe-open\n"
                f"RuntimeDirectoryPreserve=yes\nExecStart={probe} /run/sdprobe-open/result.json\n")
    try:
        confined = _run_probe(d, "sdprobe.service", "/run/sdprobe")
        open_ = _run_probe(d, "sdprobe-open.service", "/run/sdprobe-open")
    finally:
        c.run(["rm", "-rf", "/etc/systemd/system/sdprobe.service", "/etc/systemd/system/sdprobe-open.service",
               "/run/sdprobe", "/run/sdprobe-open", "/dev/sdprobe-fuse", *markers], check=False)
        c.run(["systemctl", "daemon-reload"], check=False)
    table = "\n".join(f"  {'held' if v[0] else 'NOT HELD':8} {'held' if open_[k][0] else 'open':5} {k}: {v[1]}"
                      for k, v in sorted(confined.items()))
    print(f"\nsandbox probe (cgwd's sandbox / no sandbox):\n{table}")
    assert not [k for k, v in confined.items() if not v[0]], table
    needs = {k for k in confined if k.startswith("needs_")}
    assert needs == {"needs_runtime_directory", "needs_tun", "needs_sysctl_of_own_interface", "needs_netlink",
                     "needs_raw_esp_socket", "needs_udp6", "needs_privileged_port"}
    assert set(confined) - needs - {"status"} == RESTRICTIONS | CONTAINER_ENFORCED
    flipped = {k for k in confined if k not in needs and k != "status" and not open_[k][0]}
    assert flipped == RESTRICTIONS, (f"hold without the sandbox too: {sorted(RESTRICTIONS - flipped)}; "
                                     f"flip although listed as the container's: {sorted(flipped - RESTRICTIONS)}")


def test_security_exposure_score(deployment):
    d = deployment
    out = d.c.run(["systemd-analyze", "security", "cgwd", "--no-pager"], check=False).stdout
    m = re.search(r"Overall exposure level for cgwd\.service: (\d+\.\d+)", out)
    assert m, out
    print(f"\nsystemd-analyze security cgwd (running unit): {m.group(1)}\n" +
          "\n".join(line.rstrip() for line in out.splitlines() if line.startswith("✗")))
    assert float(m.group(1)) <= EXPOSURE_MAX, out


def test_journal_structured_fields(deployment):
    d = deployment
    d.ensure_running()
    names = [t["name"] for t in d.cgwctl_status()["tunnels"]]
    for n in names:
        recs = d.journal("-u", "cgwd", f"TUNNEL={n}")
        assert recs and all(r["TUNNEL"] == n for r in recs), n
        events = {r.get("EVENT") for r in recs}
        assert {"start", "ipsec-up", "bgp-established"} <= events, events
        assert all(r["SYSLOG_IDENTIFIER"] == "cgwd" and r["_SYSTEMD_UNIT"] == "cgwd.service" for r in recs)
    other = d.journal("-u", "cgwd", f"TUNNEL={names[0]}", f"TUNNEL={names[1]}")  # OR of one field
    assert {r["TUNNEL"] for r in other} == set(names)
    assert d.journal("-u", "cgwd", "EVENT=ready")
    assert d.journal("-u", "cgwd", "TUNNEL=no-such-tunnel") == []
    everything = d.c.run(["journalctl", "--no-pager", "-o", "export", "-u", "cgwd"], timeout=60).stdout
    for t in d.lab.tunnels:
        assert t.psk not in everything and t.psk.encode().hex() not in everything, "a PSK reached the journal"


def test_watchdog_kills_a_frozen_daemon_and_tunnels_come_back(deployment):
    d = deployment
    d.ensure_running()
    before = d.systemctl_show("MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "30s"
    pid = int(before["MainPID"])
    d.c.run(["kill", "-STOP", str(pid)])
    t0 = time.monotonic()

    def restarted():
        s = d.systemctl_show("MainPID", "NRestarts", "ActiveState")
        return s if int(s["NRestarts"]) > int(before["NRestarts"]) and s["ActiveState"] == "active" \
            and int(s["MainPID"]) not in (0, pid) else None

    after = wait_for(restarted, 120, interval=1, what="cgwd restarted by the watchdog")
    took = time.monotonic() - t0
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    log = d.c.run(["journalctl", "-u", "cgwd", "--no-pager", "-o", "cat"]).stdout
    assert "Watchdog timeout" in log, log[-3000:]
    d.wait_up(90)
    back = time.monotonic() - t0
    assert d.lab.ping(3)
    print(f"\nwatchdog: frozen daemon restarted after {took:.0f}s, tunnels and BGP back after {back:.0f}s")
