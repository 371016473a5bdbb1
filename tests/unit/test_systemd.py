import io
import logging
import os
import shutil
import socket
import subprocess

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
    unit = tmp_path / "cgwd.service"
    unit.write_text(text.replace("/usr/local/bin/", bindir + "/"))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


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
