import io
import logging
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

from cgwd import logging_setup
from cgwd.logging_setup import register_secret, setup_logging
from cgwd.sdnotify import SdNotifier, notify, watchdog_interval

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


UNIT_DIRECTIVES = (
    "Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
    "ExecStartPre=/usr/local/bin/cgwctl config check /etc/cgwd/cgwd.toml",
    "ExecStart=/usr/local/bin/cgwd --config /etc/cgwd/cgwd.toml", "RuntimeDirectory=cgwd",
    "RuntimeDirectoryMode=0700", "UMask=0077", "NoNewPrivileges=yes",
    "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE", "ProtectSystem=strict",
    "ProtectHome=yes", "PrivateTmp=yes", "PrivateMounts=yes", "PrivateDevices=yes", "DevicePolicy=closed",
    "DeviceAllow=/dev/net/tun rw", "BindPaths=/dev/net/tun", "ProtectKernelTunables=yes",
    "ReadWritePaths=/proc/sys/net/ipv4/conf /proc/sys/net/ipv6/conf", "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectClock=yes", "ProtectHostname=yes",
    "ProtectProc=invisible", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK", "RestrictNamespaces=yes",
    "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes",
    "SystemCallArchitectures=native", "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
)
# what README.md reports for `systemd-analyze security cgwd` (tests/systemd checks the running unit)
EXPOSURE_MAX = 1.9


def _unit_lines() -> list[str]:
    with open(os.path.join(ROOT, "systemd", "cgwd.service")) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_unit_has_the_sandbox_and_nothing_that_loosens_it():
    """Static: every directive tests/systemd verified at runtime is there, nothing undoes them
    (ConfigurationDirectory= would make /etc/cgwd writable under ProtectSystem=strict; a root
    service needs no ambient capabilities; no second ExecStart or capability line)."""
    lines = _unit_lines()
    for k in UNIT_DIRECTIVES:
        assert k in lines, k
    keys = [line.split("=", 1)[0] for line in lines if "=" in line]
    for loosening in ("ConfigurationDirectory", "AmbientCapabilities", "ReadWriteDirectories", "User",
                      "DynamicUser", "PrivateNetwork", "KillMode", "Delegate"):
        assert loosening not in keys, loosening
    for once in ("ExecStart", "CapabilityBoundingSet", "RestrictAddressFamilies", "ReadWritePaths", "Type"):
        assert keys.count(once) == 1, once
    assert keys.count("SystemCallFilter") == 2


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_exposure_score_offline():
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        os.path.join(ROOT, "systemd", "cgwd.service")], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for cgwd\.service: (\d+\.\d+)", r.stdout)
    if m is None and "--offline" in r.stderr:
        pytest.skip("systemd-analyze has no --offline")
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= EXPOSURE_MAX, r.stdout


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    text = open(os.path.join(ROOT, "systemd", "cgwd.service")).read()
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


def _parse_journal(data: bytes) -> dict[str, list[str]]:
    """journald's native protocol, decoded independently of cgwd.logging_setup."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, _, v = line.partition(b"=")
            i = nl + 1
        else:
            k = line
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            v = data[nl + 9:nl + 9 + n]
            assert data[nl + 9 + n:nl + 10 + n] == b"\n"
            i = nl + 10 + n
        assert re.fullmatch(rb"[A-Z0-9][A-Z0-9_]*", k), k
        out.setdefault(k.decode(), []).append(v.decode())
    return out


def _journal_receiver(tmp_path):
    path = str(tmp_path / "journal.sock")
    s = _dgram(path)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return path, s


def _recv_journal(s) -> dict[str, list[str]]:
    msg, fds, flags, _addr = socket.recv_fds(s, 1 << 20, 1)
    assert not flags & socket.MSG_CTRUNC, "ancillary data truncated"
    if fds:  # a record too large for one datagram arrives as a sealed memfd
        assert msg == b"" and len(fds) == 1
        try:  # journald maps it: read from offset 0, whatever the sender's offset is
            msg = os.pread(fds[0], os.fstat(fds[0]).st_size, 0)
        finally:
            os.close(fds[0])
    return _parse_journal(msg)


def test_journal_native_fields_filterable_and_redacted(tmp_path):
    path, s = _journal_receiver(tmp_path)
    buf = io.StringIO()
    psk = "Zq8.Lm3_Tx6Vb1Np4Rs7Wz0Yc9Df2Gh5"
    register_secret(psk)
    setup_logging("debug", stream=buf, journal_socket=path)
    log = logging.getLogger("cgwd.tunnel")
    log.info("tunnel=%s event=ike-up peer=%s psk %s", "f60718-1", "198.51.100.2", psk)
    f = _recv_journal(s)
    assert f["TUNNEL"] == ["f60718-1"] and f["EVENT"] == ["ike-up"] and f["PEER"] == ["198.51.100.2"]
    assert f["PRIORITY"] == ["6"] and f["SYSLOG_IDENTIFIER"] == ["cgwd"] and f["LOGGER"] == ["cgwd.tunnel"]
    assert f["MESSAGE"] == ["cgwd.tunnel: tunnel=f60718-1 event=ike-up peer=198.51.100.2 psk <redacted>"]
    assert f["CODE_FUNC"] == ["test_journal_native_fields_filterable_and_redacted"]
    # extra= wins over the text, quoted values are unquoted, and a secret in a field is scrubbed too
    log.warning("event=x state=\"half open\"", extra={"event": "dpd-dead", "reason": f"psk {psk}"})
    f = _recv_journal(s)
    assert f["EVENT"] == ["dpd-dead"] and f["STATE"] == ["half open"] and f["REASON"] == ["psk <redacted>"]
    assert f["PRIORITY"] == ["4"]
    # a traceback: MESSAGE has newlines (binary length encoding), fields from the first line only
    try:
        raise ValueError(f"bad {psk} tunnel=inner")
    except ValueError:
        log.exception("tunnel=%s event=crashed", "t2")
    f = _recv_journal(s)
    assert f["TUNNEL"] == ["t2"] and f["PRIORITY"] == ["3"]
    assert "Traceback" in f["MESSAGE"][0] and "\n" in f["MESSAGE"][0] and psk not in f["MESSAGE"][0]
    # larger than a datagram may be: a sealed memfd
    log.info("event=big %s", "x" * 400_000)
    f = _recv_journal(s)
    assert f["EVENT"] == ["big"] and len(f["MESSAGE"][0]) > 400_000
    assert buf.getvalue() == "", "nothing went to the fallback stream"
    # journald gone: the record goes to stderr as text with the level prefix, nothing raises
    s.close()
    os.unlink(path)
    log.error("tunnel=%s event=after psk %s", "t3", psk)
    out = buf.getvalue()
    assert out.startswith("<3>cgwd.tunnel: tunnel=t3 event=after psk <redacted>"), out
    assert psk not in out


def test_journal_only_under_systemd(tmp_path, monkeypatch):
    """Not under systemd ($JOURNAL_STREAM unset or naming another file): text on stderr."""
    buf = io.StringIO()
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logger = setup_logging("info", stream=buf)
    assert [type(h).__name__ for h in logger.handlers if getattr(h, "_cgwd", False)] == ["StreamHandler"]
    err = tmp_path / "err"
    with open(err, "w") as fh:
        st = os.fstat(fh.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        logger = setup_logging("info", stream=fh)
        assert [type(h).__name__ for h in logger.handlers if getattr(h, "_cgwd", False)] == ["StreamHandler"]
        # naming this very file, with journald's socket present: the native protocol
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        path, s = _journal_receiver(tmp_path)
        monkeypatch.setattr(logging_setup, "JOURNAL_SOCKET", path)
        logger = setup_logging("info", stream=fh)
        assert [type(h).__name__ for h in logger.handlers if getattr(h, "_cgwd", False)] == ["JournalHandler"]
        logging.getLogger("cgwd.x").info("tunnel=%s event=auto", "t9")
        assert _recv_journal(s)["TUNNEL"] == ["t9"]
        s.close()
        # the socket gone: text again
        os.unlink(path)
        logger = setup_logging("info", stream=fh)
        assert [type(h).__name__ for h in logger.handlers if getattr(h, "_cgwd", False)] == ["StreamHandler"]
