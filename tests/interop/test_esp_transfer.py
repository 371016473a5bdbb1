"""Bulk TCP through cgwd's userspace ESP and strongSwan's libipsec, content checked end to end.

cgwd runs in the lab from the imported AWS XML (as test_cgwd_lab.py does).  A small Python
sender streams 100 MiB of seeded pseudo-random bytes from the on-prem host 10.200.0.10 to the
VPC host 10.100.0.10, then back the other way; both ends hash what they sent / received with
SHA-256 and the digests and byte counts must match.  The tunnel counters must show the bytes
went through cgwd's ESP, with no authentication failures.  Direct and behind the NAT router.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cgwd.lab.cli import cgwctl_status, cgwd_ready, import_config, start_cgwd
from cgwd.lab.netns import wait_for

pytestmark = pytest.mark.interop

SIZE = 100 * 1024 * 1024
PORT = 7777

# One small program for both ends: "recv HOST PORT" or "send HOST PORT BYTES SEED SRC"
# (the sender binds SRC: the VPC host's address lives on lo, the transit link's is not routed).
PEER = r'''
import hashlib, json, random, socket, sys, time
TIMEOUT = 300
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = hashlib.sha256()
n = 0
if mode == "recv":
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(1)
    print("listening", flush=True)
    ls.settimeout(TIMEOUT)
    c, _ = ls.accept()
    c.settimeout(TIMEOUT)
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    c.close()
else:
    size, seed, src = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    rnd = random.Random(seed)
    deadline = time.monotonic() + 60
    while True:
        try:
            c = socket.create_connection((host, port), timeout=5, source_address=(src, 0))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    c.settimeout(TIMEOUT)
    t0 = time.monotonic()
    while n < size:
        chunk = rnd.randbytes(min(1 << 20, size - n))
        h.update(chunk)
        c.sendall(chunk)
        n += len(chunk)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)  # wait for the receiver to close: everything arrived
    c.close()
print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)
'''


def _bring_up(lab):
    proc = start_cgwd(lab, import_config(lab))
    wait_for(lambda: proc.poll() is not None or cgwd_ready(lab), 90, interval=0.5,
             what="cgwd tunnels + BGP + VPC route")
    assert proc.poll() is None, open(os.path.join(lab.workdir, "cgwd.log")).read()[-3000:]
    return proc


def _transfer(lab, script, src_ns, src_addr, dst_ns, dst_addr, seed) -> tuple[dict, dict]:
    recv = subprocess.Popen(dst_ns.cmd([sys.executable, script, "recv", dst_addr, str(PORT)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lab.procs.append(recv)  # killed by the lab's teardown whatever happens
    assert recv.stdout.readline().strip() == "listening", recv.stderr.read()
    send = src_ns.run([sys.executable, script, "send", dst_addr, str(PORT), str(SIZE), str(seed), src_addr],
                      check=False, timeout=600)
    assert send.returncode == 0, send.stderr[-2000:]
    out, err = recv.communicate(timeout=60)
    assert recv.returncode == 0, err[-2000:]
    return json.loads(send.stdout.strip().splitlines()[-1]), json.loads(out.strip().splitlines()[-1])


def _esp_totals(lab) -> dict:
    st = cgwctl_status(lab, as_json=True)
    tot = {"bytes_in": 0, "bytes_out": 0, "auth_failures": 0}
    for t in st["tunnels"]:
        tot["bytes_in"] += t["ipsec"]["bytes_in"]
        tot["bytes_out"] += t["ipsec"]["bytes_out"]
        tot["auth_failures"] += sum(sa["auth_failures"] for sa in t["ipsec"]["sas"])
    return tot


@pytest.mark.parametrize("nat", [False, True], ids=["direct", "behind-nat"])
def test_bulk_tcp_both_ways_is_intact(lab_factory, nat):
    lab = lab_factory(nat=nat)
    proc = _bring_up(lab)
    lab.wait_ping(30)
    assert lab.ping(10)
    script = os.path.join(lab.workdir, "xfer_peer.py")
    with open(script, "w") as f:
        f.write(PEER)
    before = _esp_totals(lab)

    # on-prem -> VPC
    sent, got = _transfer(lab, script, lab.onprem, lab.spec.onprem_host, lab.vpc, lab.spec.vpc_host,
                          seed=1)
    assert sent["bytes"] == got["bytes"] == SIZE
    assert sent["sha256"] == got["sha256"]
    mid = _esp_totals(lab)
    assert mid["bytes_out"] - before["bytes_out"] >= SIZE, (before, mid)

    # VPC -> on-prem (different content)
    sent2, got2 = _transfer(lab, script, lab.vpc, lab.spec.vpc_host, lab.onprem, lab.spec.onprem_host,
                            seed=2)
    assert sent2["bytes"] == got2["bytes"] == SIZE
    assert sent2["sha256"] == got2["sha256"] != sent["sha256"]
    after = _esp_totals(lab)
    assert after["bytes_in"] - mid["bytes_in"] >= SIZE, (mid, after)
    assert after["auth_failures"] == 0

    assert lab.ping(10)
    assert proc.poll() is None
    log = open(os.path.join(lab.workdir, "cgwd.log")).read()
    assert "Traceback" not in log
