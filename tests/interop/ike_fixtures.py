"""Self-contained lab for IKE interop tests: two network namespaces joined by a veth,
strongSwan (charon, kernel-libipsec) playing AWS in one, our IkePeer in the other.

Everything is named ``ikeit-*`` and torn down in ``close()`` even after failures.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CHARON = "/usr/lib/ipsec/charon"
REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
RUNNER = Path(__file__).with_name("ike_peer_runner.py")

SW_ADDR = "192.0.2.2"   # strongSwan (the "AWS" endpoint)
US_ADDR = "192.0.2.1"   # cgwd

PLUGINS = (
    "random nonce openssl aes sha1 sha2 hmac gmp kdf gcm pem pkcs1 pkcs8 x509 pubkey "
    "kernel-libipsec kernel-netlink socket-default vici"
)


def require_lab() -> None:
    if os.geteuid() != 0:
        pytest.skip("interop tests need root (network namespaces)")
    if not os.path.exists(CHARON):
        pytest.skip(f"strongSwan charon not installed ({CHARON})")
    if not shutil.which("swanctl"):
        pytest.skip("swanctl not installed")
    if not shutil.which("ip"):
        pytest.skip("iproute2 not installed")


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=timeout)


@dataclass
class SwanConn:
    """An AWS-like strongSwan connection (IKEv1, PSK)."""

    proposals: str = "aes128-sha1-modp1024"
    esp_proposals: str = "aes128-sha1-modp1024"
    psk: str = "interop-test-psk-0123456789"
    encap: bool = True
    dpd_delay: str = "10s"
    ike_rekey_time: str = "28800s"
    rekey_time: str = "3600s"
    life_time: str = ""
    extra_child: str = ""


class IkeLab:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.tag = tag
        self.ns_sw = f"ikeit-sw-{tag}"
        self.ns_us = f"ikeit-us-{tag}"
        self.veth_sw = f"ikeit{tag}a"
        self.veth_us = f"ikeit{tag}b"
        self.dir = Path(tempfile.mkdtemp(prefix=f"ikeit-{tag}-"))
        self.vici = f"unix://{self.dir}/charon.vici"
        self.charon: subprocess.Popen | None = None
        self.runner: subprocess.Popen | None = None
        self.runner_lines: list[dict] = []
        self._created_ns: list[str] = []

    # ---------------------------------------------------------------- topology
    def setup(self) -> None:
        for ns in (self.ns_sw, self.ns_us):
            sh("ip", "netns", "add", ns)
            self._created_ns.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", self.veth_sw, "type", "veth", "peer", "name", self.veth_us)
        sh("ip", "link", "set", self.veth_sw, "netns", self.ns_sw)
        sh("ip", "link", "set", self.veth_us, "netns", self.ns_us)
        sh("ip", "-n", self.ns_sw, "addr", "add", f"{SW_ADDR}/24", "dev", self.veth_sw)
        sh("ip", "-n", self.ns_us, "addr", "add", f"{US_ADDR}/24", "dev", self.veth_us)
        sh("ip", "-n", self.ns_sw, "link", "set", self.veth_sw, "up")
        sh("ip", "-n", self.ns_us, "link", "set", self.veth_us, "up")

    def close(self) -> None:
        for proc in (self.runner, self.charon):
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=10)
                except Exception:  # noqa: BLE001
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except Exception:  # noqa: BLE001
                        pass
        for ns in self._created_ns:
            sh("ip", "netns", "del", ns, check=False)
        # veths vanish with their namespaces; remove a stray root-namespace end just in case
        for v in (self.veth_sw, self.veth_us):
            sh("ip", "link", "del", v, check=False)
        if os.environ.get("IKEIT_KEEP") is None:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---------------------------------------------------------------- strongSwan
    def start_charon(self, conn: SwanConn, *, log_levels: str = "ike = 2\n        cfg = 2\n        knl = 1\n        net = 1") -> None:
        conf = self.dir / "strongswan.conf"
        conf.write_text(
            f"""charon {{
    load = {PLUGINS}
    install_routes = no
    install_virtual_ip = no
    retransmit_timeout = 2.0
    retransmit_tries = 3
    filelog {{
        ikeit {{
            path = {self.dir}/charon.log
            time_format = %T
            default = 1
            {log_levels}
            flush_line = yes
        }}
    }}
    plugins {{
        vici {{
            socket = {self.vici}
        }}
        kernel-libipsec {{
            load = yes
        }}
    }}
}}
"""
        )
        self.write_swanctl(conn)
        cmd = (
            "mount -t tmpfs tmpfs /run && "
            f"exec env STRONGSWAN_CONF={conf} {CHARON}"
        )
        self.charon = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_sw, "unshare", "-m", "--propagation", "private", "sh", "-c", cmd],
            stdout=open(self.dir / "charon.stdout", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.charon.poll() is not None:
                raise RuntimeError("charon exited: " + (self.dir / "charon.stdout").read_text()[-2000:])
            if (self.dir / "charon.vici").exists():
                r = sh("swanctl", "--stats", "--uri", self.vici, check=False)
                if r.returncode == 0:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("charon did not come up")
        r = sh("swanctl", "--load-all", "--noprompt", "--uri", self.vici, "--file", str(self.dir / "swanctl.conf"), check=False)
        if r.returncode != 0:
            raise RuntimeError("swanctl --load-all failed: " + r.stdout + r.stderr)

    def write_swanctl(self, conn: SwanConn) -> None:
        life = f"life_time = {conn.life_time}" if conn.life_time else ""
        (self.dir / "swanctl.conf").write_text(
            f"""connections {{
    aws {{
        version = 1
        local_addrs = {SW_ADDR}
        remote_addrs = {US_ADDR}
        proposals = {conn.proposals}
        encap = {"yes" if conn.encap else "no"}
        dpd_delay = {conn.dpd_delay}
        dpd_timeout = 30s
        rekey_time = {conn.ike_rekey_time}
        local {{
            auth = psk
            id = {SW_ADDR}
        }}
        remote {{
            auth = psk
            id = {US_ADDR}
        }}
        children {{
            vpn {{
                local_ts = 0.0.0.0/0
                remote_ts = 0.0.0.0/0
                esp_proposals = {conn.esp_proposals}
                rekey_time = {conn.rekey_time}
                {life}
                dpd_action = clear
                start_action = none
                {conn.extra_child}
            }}
        }}
    }}
}}
secrets {{
    ike-aws {{
        id-1 = {SW_ADDR}
        id-2 = {US_ADDR}
        secret = "{conn.psk}"
    }}
}}
"""
        )

    def swanctl(self, *args: str, timeout: float = 30) -> str:
        r = sh("swanctl", *args, "--uri", self.vici, check=False, timeout=timeout)
        return r.stdout + r.stderr

    def list_sas(self) -> str:
        return self.swanctl("--list-sas")

    def charon_log(self) -> str:
        p = self.dir / "charon.log"
        return p.read_text(errors="replace") if p.exists() else ""

    # ---------------------------------------------------------------- our side
    def start_runner(self, config: dict, *, start: bool = True) -> None:
        cfg = self.dir / "runner.json"
        cfg.write_text(json.dumps({"peer": config, "start": start}))
        self.runner = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_us, PYTHON, str(RUNNER), str(cfg)],
            stdout=subprocess.PIPE,
            stderr=open(self.dir / "runner.stderr", "w"),
            text=True,
            start_new_session=True,
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        os.set_blocking(self.runner.stdout.fileno(), False)

    def runner_events(self) -> list[dict]:
        if self.runner is not None and self.runner.stdout is not None:
            while True:
                try:
                    line = self.runner.stdout.readline()
                except (BlockingIOError, TypeError):
                    break
                if not line:
                    break
                try:
                    self.runner_lines.append(json.loads(line))
                except ValueError:
                    pass
        return self.runner_lines

    def runner_stderr(self) -> str:
        p = self.dir / "runner.stderr"
        return p.read_text(errors="replace")[-6000:] if p.exists() else ""

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            if self.runner is not None and self.runner.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError(
            f"timed out waiting for {what}\n--- swanctl --list-sas\n{self.list_sas()}\n"
            f"--- runner events\n{self.runner_events()}\n--- runner stderr\n{self.runner_stderr()}\n"
            f"--- charon log (tail)\n{self.charon_log()[-6000:]}"
        )


def parse_sas(text: str) -> dict:
    """Minimal parser for `swanctl --list-sas` text: IKE SA state/algorithms, CHILD SA states."""
    ike = re.search(r"^\S+: #\d+, (\w+), IKEv(\d)", text, re.M)
    ike_algs = re.search(r"^\s+(AES_\S+(?:/\S+)+)\s*$", text, re.M)
    children = re.findall(r"^\s+(\S+): #\d+, reqid \d+, (\w+), (\S+), (.*)$", text, re.M)
    child_ins = re.findall(r"in\s+([0-9a-f]{8})", text)
    return {
        "ike_state": ike.group(1) if ike else None,
        "ike_version": ike.group(2) if ike else None,
        "ike_algorithms": ike_algs.group(1) if ike_algs else None,
        "children": [{"name": c[0], "state": c[1], "mode": c[2], "algorithms": c[3]} for c in children],
        "child_spis_in": child_ins,
    }
