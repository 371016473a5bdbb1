import io
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from cgwd.logging_setup import register_secret, setup_logging
from cgwd.sdnotify import SdNotifier, notify, watchdog_interval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    text = open(os.path.join(ROOT, "systemd", "cgwd.service")).read()
    for k in ("Type=notify", "WatchdogSec=30", "ExecReload=/bin/kill -HUP $MAINPID", "MemoryDenyWriteExecute=yes",
              "RuntimeDirectoryMode=0700", "DeviceAllow=/dev/net/tun rw", "ProtectSystem=strict",
              "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE",
              "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
              "ExecStart=/usr/local/bin/cgwd --config /etc/cgwd/cgwd.toml"):
        assert k in text, k
    bindir = os.path.join(ROOT, ".venv", "bin")
    if not os.path.exists(os.path.join(bindir, "cgwd")):
        pytest.skip("venv console scripts not installed")
    text = text.replace("/usr/local/bin/", bindir + "/")

    def verify(unit_text: str) -> str:
        """What systemd-analyze finds wrong ("" when nothing): it exits 0 on unknown or
        misspelled keys (it only says "ignoring"), so its messages are checked too."""
        unit = tmp_path / "cgwd.service"
        unit.write_text(unit_text)
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        return (f"exit {r.returncode}\n" if r.returncode else "") + r.stderr.strip()

    assert verify(text) == ""
    # the check above can fail: a misspelled hardening directive is reported
    assert "Unknown key 'ProtectSystm'" in verify(text.replace("ProtectSystem=strict", "ProtectSystm=strict"))
    assert "exit 1" in verify(text.replace(bindir + "/cgwd ", "/nonexistent/cgwd "))


def _dgram(addr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(addr)
    s.settimeout(2)
    return s


def test_sdnotify_real_socket(tmp_path):
    path = str(tmp_path / "notify")
    s = _dgram(path)
    n = SdNotifier(path)
    assert n.ready("2 tunnels\nup")
    assert s.recv(4096) == b"READY=1\nSTATUS=2 tunnels up"
    assert n.watchdog() and s.recv(4096) == b"WATCHDOG=1"
    assert n.reloading() and s.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
    assert n.stopping() and s.recv(4096) == b"STOPPING=1"
    s.close()


def test_sdnotify_abstract():
    name = f"cgwd-test-{os.getpid()}"
    s = _dgram("\0" + name)
    assert notify("STATUS=hi", "@" + name)
    assert s.recv(4096) == b"STATUS=hi"
    s.close()


def test_sdnotify_absent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert SdNotifier().ready() is False
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None or os.getpid() == 1


def test_logging_journal_prefix_kv_and_redaction():
    buf = io.StringIO()
    setup_logging("debug", stream=buf, journal=True)
    register_secret(b"Kq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0")
    log = logging.getLogger("cgwd.ike")
    log.info("peer sent %s", "Kq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0", extra={"tunnel": "tun1", "event": "ike_up"})
    log.warning("hex %s", b"Kq7.Tx2_Vb9Lm4Np8Rs3Wz6Yc1Df5Gh0".hex())
    out = buf.getvalue()
    assert "Kq7.Tx2" not in out and "4b71372e" not in out
    lines = out.splitlines()
    assert lines[0].startswith("<6>cgwd.ike: peer sent <redacted>") and lines[0].endswith("tunnel=tun1 event=ike_up")
    assert lines[1].startswith("<4>")
    buf2 = io.StringIO()
    setup_logging("info", stream=buf2, journal=False)
    logging.getLogger("cgwd").debug("hidden")
    logging.getLogger("cgwd").error("shown")
    assert "hidden" not in buf2.getvalue() and " ERROR cgwd: shown" in buf2.getvalue()


def _daemon_cmd(cfg: str, sock: str) -> list[str]:
    cmd = [sys.executable, "-m", "cgwd.daemon", "--config", cfg, "--socket", sock]
    if os.geteuid() == 0 and shutil.which("unshare"):
        # its own network namespace: the start-up cleanup of a previous run's routes and
        # interfaces then cannot touch this machine's
        cmd = ["unshare", "--net", *cmd]
    return cmd


def _recv_until(s, pred, what: str, timeout: float = 20.0) -> list[str]:
    msgs = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            msgs.append(s.recv(4096).decode())
        except socket.timeout:
            break
        if pred(msgs[-1]):
            return msgs
    raise AssertionError(f"no {what} on NOTIFY_SOCKET; got {msgs!r}")


def test_daemon_speaks_notify_protocol_to_a_real_socket(tmp_path):
    """The real cgwd process: READY=1 with STATUS= once the control socket is bound and the
    config loaded, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
    notify_path = str(tmp_path / "notify")
    s = _dgram(notify_path)
    cfg = tmp_path / "cgwd.toml"
    cfg.write_text('[daemon]\ndatapath = "userspace"\nlog_level = "info"\n')
    os.chmod(cfg, 0o600)
    sock = str(tmp_path / "cgwd.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "LISTEN_FDS")}
    env.update(NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="1000000")
    p = subprocess.Popen(_daemon_cmd(str(cfg), sock), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        msgs = _recv_until(s, lambda m: "READY=1" in m, "READY=1")
        ready = msgs[-1].split("\n")
        assert ready[0] == "READY=1" and ready[1].startswith("STATUS=0/0 tunnels up"), ready
        assert not any("WATCHDOG=1" in m for m in msgs[:-1]), "watchdog ping before READY"
        assert stat.S_ISSOCK(os.lstat(sock).st_mode), "READY=1 before the control socket was bound"
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        r = subprocess.run([sys.executable, "-m", "cgwd.cli", "status", "--json", "--socket", sock],
                           capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert r.returncode == 0 and '"tunnels": []' in r.stdout, r.stdout + r.stderr
        _recv_until(s, lambda m: m == "WATCHDOG=1", "WATCHDOG=1 (WATCHDOG_USEC=1 s)", timeout=10)
        _recv_until(s, lambda m: m.startswith("STATUS="), "periodic STATUS=", timeout=10)
        # A second instance on the same control socket: one line, exit 1, the first one unharmed.
        r = subprocess.run(_daemon_cmd(str(cfg), sock), capture_output=True, text=True, cwd=ROOT, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "another cgwd is already listening" in r.stderr
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        _recv_until(s, lambda m: m.startswith("STOPPING=1"), "STOPPING=1")
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        s.close()
    err = p.stderr.read()
    assert "Traceback" not in err and "event=ready" in err, err
